//! storvsp end to end over the loopback ring: the storvsc driver (Linux and
//! UEFI profiles) against the storvsp device serving disks backed by image
//! files, plus hostile packets written straight into the ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::future::block_on;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_backing::{BlockDevice, RawFile};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{
    Controller, LunAddress, StorvspConfig, StorvspDevice, WORST_COMPLETION_RING_LEN,
};
use vmbdev_guest::storvsc::loopback::{StorvspVm, StorvspVmConfig};
use vmbdev_guest::storvsc::{DriverConfig, GuestProfile, Storvsc};

const LUN0: LunAddress = LunAddress {
    path: 0,
    target: 0,
    lun: 0,
};

/// A raw image of `len` random bytes.
fn random_image(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut bytes = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill(&mut bytes[..]);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn disk(path: &Path, sector: u32) -> Arc<ScsiDisk> {
    let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open_with_sector_size(path, sector).unwrap());
    Arc::new(ScsiDisk::new(device))
}

fn multi_channel(max_sub_channels: u16) -> StorvspConfig {
    StorvspConfig {
        max_sub_channels,
        multi_channel: max_sub_channels > 0,
        ..StorvspConfig::default()
    }
}

struct Setup {
    vm: StorvspVm,
    driver: Storvsc,
}

fn connect(
    controller: Arc<Controller>,
    config: StorvspConfig,
    vm_config: StorvspVmConfig,
    driver: DriverConfig,
) -> Setup {
    let device = Arc::new(StorvspDevice::new(config, controller).unwrap());
    let (vm, primary) = StorvspVm::start(device, vm_config).unwrap();
    let opener = vm.opener();
    let driver = block_on(Storvsc::connect(
        primary,
        vm.memory(),
        vm.pages(),
        opener.as_ref(),
        &driver,
    ))
    .unwrap();
    Setup { vm, driver }
}

#[test]
fn linux_reads_equal_the_image_over_sub_channels() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 3 << 20, 1);
    let controller = Arc::new(Controller::new());
    controller.insert(LUN0, disk(&path, 512));
    let setup = connect(
        controller,
        multi_channel(3),
        StorvspVmConfig::default(),
        DriverConfig {
            profile: GuestProfile::Linux,
            cpus: 3,
            buffer_offset: 0,
        },
    );
    let driver = &setup.driver;
    assert_eq!(driver.version(), 0x0602);
    assert_eq!(driver.channel_count(), 3);
    assert_eq!(driver.disks().len(), 1);
    let disk = driver.disk(0).unwrap();
    assert_eq!(disk.capacity(), ((3 << 20) / 512, 512));
    let data = block_on(disk.read(0, 8)).unwrap();
    assert_eq!(data, bytes[..4096]);
    let last = (3 << 20) / 512 - 1;
    let data = block_on(disk.read(last, 1)).unwrap();
    assert_eq!(data, bytes[bytes.len() - 512..]);
    let whole = block_on(disk.read(0, last + 1)).unwrap();
    assert!(whole == bytes, "whole-disk read differs");
    let stats = setup.vm.device().stats().clone();
    assert_eq!(stats.violations(), 0);
    drop(setup);
    let _ = WORST_COMPLETION_RING_LEN;
}
