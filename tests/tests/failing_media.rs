//! Failing media under the devices: I/O errors, short reads, latency
//! spikes and an image file cut short while it is served. storvsp must
//! answer MEDIUM ERROR (sense key 3, ASC 0x11) for the failed read and
//! nothing else, vmbfs an error status, and every other request on the
//! bus (other ranges, other LUNs, other files, later requests) must go on
//! with the right bytes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::block_on;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress as HostLun, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_guest::storvsc::{DriverConfig, DriverError, GuestProfile, Storvsc};
use vmbdev_loopback::storvsp::{StorvspVm, StorvspVmConfig};
use vmbdev_loopback::vm::{LoopbackVm, VmConfig};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};
use vmbdev_tests::faults::{Fault, FaultyDevice};
use vmbdev_tests::images::fat_image;

const SECTOR: u64 = 512;
const DISK: usize = 4 << 20;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

fn raw(dir: &Path, name: &str, bytes: &[u8]) -> Arc<dyn BlockDevice> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    Arc::new(RawFile::open_with_sector_size(&path, SECTOR as u32).unwrap())
}

fn lun(lun: u8) -> HostLun {
    HostLun {
        path: 0,
        target: 0,
        lun,
    }
}

/// storvsp over `disks` (LUN i = disks[i]) with a Linux storvsc on two
/// channels.
fn storvsp(disks: Vec<Arc<dyn BlockDevice>>) -> (StorvspVm, Storvsc) {
    let controller = Arc::new(Controller::new());
    for (i, disk) in disks.into_iter().enumerate() {
        controller.insert(lun(i as u8), Arc::new(ScsiDisk::new(disk)));
    }
    let config = StorvspConfig {
        max_sub_channels: 1,
        multi_channel: true,
        ..StorvspConfig::default()
    };
    let device = Arc::new(StorvspDevice::new(config, controller).unwrap());
    let driver = DriverConfig {
        profile: GuestProfile::Linux,
        cpus: 2,
        buffer_offset: 0,
        ..DriverConfig::default()
    };
    StorvspVm::start_with_storvsc(device, StorvspVmConfig::default(), &driver).unwrap()
}

fn assert_medium_error(result: Result<Vec<u8>, DriverError>, what: &str) {
    match result {
        Err(DriverError::Srb { sense, .. }) => {
            assert_eq!(sense, Some((0x03, 0x11)), "{what}: sense");
        }
        other => panic!(
            "{what}: wanted MEDIUM ERROR, got {:?}",
            other.map(|d| d.len())
        ),
    }
}

fn slice(bytes: &[u8], lba: u64, count: u64) -> &[u8] {
    &bytes[(lba * SECTOR) as usize..((lba + count) * SECTOR) as usize]
}

#[test]
fn storvsp_answers_medium_error_for_eio_and_short_reads_and_serves_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_bytes = random(DISK, 1);
    let good_bytes = random(DISK, 2);
    let faulty = Arc::new(FaultyDevice::new(
        raw(tmp.path(), "bad.raw", &bad_bytes),
        vec![
            (100 * SECTOR..101 * SECTOR, Fault::Eio),
            (2000 * SECTOR..2008 * SECTOR, Fault::Short),
        ],
    ));
    let healthy = raw(tmp.path(), "good.raw", &good_bytes);
    let (_vm, driver) = storvsp(vec![faulty.clone(), healthy]);
    let (bad, good) = (driver.disk(0).unwrap(), driver.disk(1).unwrap());

    assert_medium_error(block_on(bad.read(96, 8)), "EIO in the middle of a read");
    assert_medium_error(block_on(bad.read(100, 1)), "EIO on the sector itself");
    assert_medium_error(block_on(bad.read(2004, 1)), "short read");
    assert_eq!(faulty.hits(), 3);
    // Next to the faults, on the same LUN, and on the other LUN: the
    // right bytes.
    for (lba, count) in [(0, 100), (101, 64), (1990, 10), (2008, 200)] {
        let data = block_on(bad.read(lba, count)).unwrap();
        assert!(data == slice(&bad_bytes, lba, count), "LUN 0 at {lba}");
    }
    let whole = block_on(good.read(0, DISK as u64 / SECTOR)).unwrap();
    assert!(whole == good_bytes, "the healthy LUN reads back whole");
}

#[test]
fn a_latency_spike_delays_one_read_but_loses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = random(DISK, 3);
    let slow = Arc::new(FaultyDevice::new(
        raw(tmp.path(), "slow.raw", &bytes),
        vec![(
            64 * SECTOR..65 * SECTOR,
            Fault::Delay(Duration::from_millis(300)),
        )],
    ));
    let (_vm, driver) = storvsp(vec![slow.clone()]);
    let disk = driver.disk(0).unwrap();
    // Sixteen in flight, one of them stalled: every one completes with
    // its own bytes.
    let requests: Vec<(u64, u32)> = (0..64).map(|i| (i * 8, 8)).collect();
    let chunks = block_on(disk.read_many(&requests, 16)).unwrap();
    assert_eq!(slow.hits(), 1);
    for (&(lba, count), chunk) in requests.iter().zip(&chunks) {
        assert!(
            chunk.as_slice() == slice(&bytes, lba, u64::from(count)),
            "read at {lba}"
        );
    }
}

#[test]
fn an_image_cut_short_while_served_gives_medium_errors_past_the_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = random(DISK, 4);
    let path = tmp.path().join("shrinking.raw");
    std::fs::write(&path, &bytes).unwrap();
    let device: Arc<dyn BlockDevice> =
        Arc::new(RawFile::open_with_sector_size(&path, SECTOR as u32).unwrap());
    let (_vm, driver) = storvsp(vec![device]);
    let disk = driver.disk(0).unwrap();
    let blocks = DISK as u64 / SECTOR;
    assert!(block_on(disk.read(0, blocks)).unwrap() == bytes);

    // Another process truncates the image under the device.
    let cut = DISK as u64 / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let cut_lba = cut / SECTOR;
    assert_medium_error(block_on(disk.read(cut_lba, 8)), "wholly past the cut");
    assert_medium_error(block_on(disk.read(cut_lba - 4, 8)), "across the cut");
    let before = block_on(disk.read(0, cut_lba)).unwrap();
    assert!(before == bytes[..cut as usize], "before the cut");
}

/// Byte offset of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("file data in the image") as u64
}

#[test]
fn vmbfs_answers_an_error_for_a_file_on_failing_media_and_serves_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let doomed = random(200_000, 5);
    let fine = random(50_000, 6);
    std::fs::write(src.join("doomed.bin"), &doomed).unwrap();
    std::fs::write(src.join("fine.bin"), &fine).unwrap();
    let image = fat_image(tmp.path(), &src, 16, 16);
    let image_bytes = std::fs::read(&image).unwrap();
    // EIO on one sector in the middle of doomed.bin, as mkfs.vfat and
    // mcopy laid it out.
    let bad = find(&image_bytes, &doomed[100_352..100_352 + 512]);
    let faulty = Arc::new(FaultyDevice::new(
        Arc::new(RawFile::open_with_sector_size(&image, SECTOR as u32).unwrap()),
        vec![(bad..bad + SECTOR, Fault::Eio)],
    ));
    let tree = vmbdev_fs::open_tree(faulty.clone(), None).unwrap();
    let device = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree,
        rdma_enabled: true,
    }));
    for use_rdma in [false, true] {
        let vm = LoopbackVm::new(&VmConfig::default()).unwrap();
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm, device.clone()), use_rdma);
        block_on(async {
            client.open_volume().await.unwrap();
            let hits = faulty.hits();
            assert!(
                client.read_all("doomed.bin").await.is_err(),
                "rdma {use_rdma}: a read over the bad sector fails"
            );
            assert!(faulty.hits() > hits, "the bad sector was read");
            // The part before the bad sector, the other file, and the
            // same file again: all answered, all right.
            let head = client.read("doomed.bin", 0, 65536).await.unwrap();
            assert!(head == doomed[..65536], "rdma {use_rdma}: head");
            let other = client.read_all("fine.bin").await.unwrap();
            assert!(other == fine, "rdma {use_rdma}: other file");
            assert!(client.read_all("doomed.bin").await.is_err());
            client.close().await.unwrap();
        });
    }
}
