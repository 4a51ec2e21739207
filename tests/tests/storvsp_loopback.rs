//! storvsp end to end over the loopback ring: the storvsc driver (Linux and
//! UEFI profiles) against the storvsp device serving disks backed by image
//! files, plus hostile packets written straight into the ring.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_lite::future::block_on;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_block::{BlockDevice, BlockError, RawFile};
use vmbdev_device::bus::{ChannelError, VmbusDevice};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{
    Controller, LunAddress as HostLun, StorvspConfig, StorvspDevice, WORST_COMPLETION_RING_LEN,
};
use vmbdev_guest::storvsc::{
    Completions, DriverConfig, DriverError, GuestProfile, LunAddress, Storvsc,
};
use vmbdev_loopback::storvsp::{StorvspVm, StorvspVmConfig};
use vmbdev_ring::{Endpoint, GpaRange, OutgoingPacket, PacketKind};

const LUN0: LunAddress = LunAddress {
    path: 0,
    target: 0,
    lun: 0,
};

/// The host's name for the LUN the guest addresses as `address`.
fn host(address: LunAddress) -> HostLun {
    HostLun {
        path: address.path,
        target: address.target,
        lun: address.lun,
    }
}

/// A raw image of `len` random bytes.
fn random_image(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut bytes = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill(&mut bytes[..]);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn disk(path: &Path, sector: u32) -> Arc<ScsiDisk> {
    let device: Arc<dyn BlockDevice> =
        Arc::new(RawFile::open_with_sector_size(path, sector).unwrap());
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
    let (vm, driver) = StorvspVm::start_with_storvsc(device, vm_config, &driver).unwrap();
    Setup { vm, driver }
}

fn linux(cpus: u16) -> DriverConfig {
    DriverConfig {
        profile: GuestProfile::Linux,
        cpus,
        buffer_offset: 0,
        ..DriverConfig::default()
    }
}

/// Reads at many places, including the last LBA, unaligned runs and runs
/// longer than one SRB; each compared with the image bytes.
fn check_reads(driver: &Storvsc, bytes: &[u8], sector: u32) {
    let disk = driver.disk(0).unwrap();
    let blocks = bytes.len() as u64 / u64::from(sector);
    assert_eq!(disk.capacity(), (blocks, sector));
    let s = u64::from(sector);
    let per = u64::from(disk.max_blocks_per_request());
    let cases = [
        (0, 1),
        (1, 7),
        (blocks - 1, 1),
        (blocks - 3, 3),
        (per - 1, 2),
        (3, per + 5),
        (blocks / 2 + 1, 33),
    ];
    for (lba, count) in cases {
        let data = block_on(disk.read(lba, count)).unwrap();
        let want = &bytes[(lba * s) as usize..((lba + count) * s) as usize];
        assert!(data == want, "read of {count} at {lba} differs");
    }
    let whole = block_on(disk.read(0, blocks)).unwrap();
    assert!(whole == bytes, "whole-disk read differs");
    // Past the end: refused locally, and by the host when forced.
    assert!(matches!(
        block_on(disk.read(blocks, 1)),
        Err(DriverError::OutOfRange { .. })
    ));
    let cdb = vmbdev_guest::storvsc::cdb::read16(blocks, 1);
    let (c, _) = block_on(driver.execute(LUN0, &cdb, sector)).unwrap();
    assert_eq!(c.scsi_status, 2);
    assert_eq!(c.sense_key_asc(), Some((0x05, 0x21)));
}

#[test]
fn linux_reads_equal_the_image_512_and_4096_over_sub_channels() {
    for (sector, cpus, offset) in [(512u32, 3u16, 0u32), (4096, 2, 0x206)] {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = random_image(dir.path(), "disk.raw", 5 << 20, u64::from(sector));
        let controller = Arc::new(Controller::new());
        controller.insert(host(LUN0), disk(&path, sector));
        let setup = connect(
            controller,
            multi_channel(3),
            StorvspVmConfig::default(),
            DriverConfig {
                buffer_offset: offset,
                ..linux(cpus)
            },
        );
        let driver = &setup.driver;
        assert_eq!(driver.version(), 0x0602);
        assert_eq!(driver.channel_count(), usize::from(cpus));
        assert_eq!(setup.vm.offered_sub_channels(), cpus - 1);
        check_reads(driver, &bytes, sector);
        // 64 reads in flight at once, spread over the channels.
        let disk = driver.disk(0).unwrap();
        let blocks = bytes.len() as u64 / u64::from(sector);
        let requests: Vec<(u64, u32)> = (0..64u64)
            .map(|i| ((i * 7919) % (blocks - 4), 1 + (i % 4) as u32))
            .collect();
        let results = block_on(disk.read_many(&requests, 64)).unwrap();
        let s = sector as usize;
        for ((lba, count), data) in requests.iter().zip(&results) {
            let at = *lba as usize * s;
            assert!(data[..] == bytes[at..at + *count as usize * s]);
        }
        assert_eq!(setup.vm.device().stats().violations(), 0);
    }
}

/// Device channels and driver completion threads that poll their rings
/// before sleeping: the same bytes over sub-channels, and the VM closes
/// (a spin is bounded, so a stop still reaches every channel).
#[test]
fn spinning_channels_and_completion_threads_read_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 5 << 20, 11);
    let controller = Arc::new(Controller::new());
    controller.insert(host(LUN0), disk(&path, 512));
    let device = Arc::new(
        StorvspDevice::new(multi_channel(3), controller)
            .unwrap()
            .with_spin(5_000),
    );
    let (vm, driver) = StorvspVm::start_with_storvsc(
        device,
        StorvspVmConfig::default(),
        &DriverConfig {
            completions: Completions::SpinningThread(5_000),
            ..linux(2)
        },
    )
    .unwrap();
    assert_eq!(driver.channel_count(), 2);
    check_reads(&driver, &bytes, 512);
    assert_eq!(vm.device().stats().violations(), 0);
    drop(driver);
    drop(vm);
}

/// The driver reading its own completions, with every device channel on
/// the driver's thread (no completion or channel threads): the same bytes
/// over sub-channels, small reads run inline and large ones (past the
/// inline limit) through the device's I/O pool.
#[test]
fn one_thread_layout_reads_equal_the_image_over_sub_channels() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 5 << 20, 7);
    let controller = Arc::new(Controller::new());
    controller.insert(host(LUN0), disk(&path, 512));
    let executor = Arc::new(vmbdev_ring::executor::Executor::new());
    let setup = connect(
        controller,
        multi_channel(3),
        StorvspVmConfig {
            executor: Some(executor.clone()),
            ..StorvspVmConfig::default()
        },
        DriverConfig {
            completions: Completions::Polled,
            ..linux(3)
        },
    );
    let driver = &setup.driver;
    assert_eq!(driver.channel_count(), 3);
    let disk = driver.disk(0).unwrap();
    let blocks = bytes.len() as u64 / 512;
    for (lba, count) in [(0, 1), (blocks - 1, 1), (3, 2048), (17, blocks - 17)] {
        let data = block_on(executor.run(disk.read(lba, count))).unwrap();
        let want = &bytes[lba as usize * 512..(lba + count) as usize * 512];
        assert!(data == want, "read of {count} at {lba} differs");
    }
    let requests: Vec<(u64, u32)> = (0..200u64)
        .map(|i| ((i * 7919) % (blocks - 8), 1 + (i % 8) as u32))
        .collect();
    let results = block_on(executor.run(disk.read_many(&requests, 64))).unwrap();
    for ((lba, count), data) in requests.iter().zip(&results) {
        let at = *lba as usize * 512;
        assert!(data[..] == bytes[at..at + *count as usize * 512]);
    }
    assert_eq!(setup.vm.device().stats().violations(), 0);
    drop(setup.driver);
    for (index, result) in setup.vm.close_all() {
        assert!(result.is_ok(), "channel {index}: {result:?}");
    }
}

#[test]
fn linux_scan_probes_like_linux() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 1 << 20, 7);
    let controller = Arc::new(Controller::new());
    let second = LunAddress {
        path: 2,
        target: 1,
        lun: 0,
    };
    controller.insert(host(LUN0), disk(&path, 512));
    controller.insert(host(second), disk(&path, 4096));
    let setup = connect(
        controller,
        StorvspConfig::default(),
        StorvspVmConfig::default(),
        linux(4),
    );
    let driver = &setup.driver;
    // No multi-channel offered: no sub-channels asked for.
    assert_eq!(driver.channel_count(), 1);
    let found: Vec<_> = driver.disks().iter().map(|d| d.address).collect();
    assert_eq!(found, [LUN0, second]);
    for info in driver.disks() {
        assert_eq!(info.write_protect, Some(true));
        assert!(info.inquiry.present());
        assert!(
            info.vpd_pages.windows(2).all(|w| w[0] < w[1]),
            "{:?}",
            info.vpd_pages
        );
        assert_eq!(info.vpd_pages.first(), Some(&0));
    }
    assert_eq!(driver.disks()[1].block_size, 4096);
    assert_eq!(driver.disks()[1].blocks, bytes.len() as u64 / 4096);
    let log = driver.probe_log();
    // Every path 0-7 x target 0-1 got an INQUIRY at LUN 0; absent ones
    // answer qualifier 3 / type 0x1F.
    for path in 0..8u8 {
        for target in 0..2u8 {
            let address = LunAddress {
                path,
                target,
                lun: 0,
            };
            let inquiry = log
                .iter()
                .find(|r| r.address == address && r.cdb[0] == 0x12)
                .unwrap_or_else(|| panic!("no INQUIRY to {address:?}"));
            let present = address == LUN0 || address == second;
            assert_eq!(inquiry.data[0] == 0x7F, !present, "{address:?}");
            assert!(log.iter().any(|r| r.address == address && r.cdb[0] == 0xA0));
        }
    }
    // Unsupported VPD pages come back with no bytes, still GOOD.
    let (c, data) = block_on(driver.execute(
        LUN0,
        &vmbdev_guest::storvsc::cdb::inquiry(Some(0xC7), 255),
        255,
    ))
    .unwrap();
    assert_eq!((c.srb_status & 0x3F, c.scsi_status), (1, 0));
    assert!(data.len() <= 4, "{data:?}");
    // MODE SENSE(6) page 0x3F and 0x08 were both asked.
    for page in [0x3F, 0x08] {
        assert!(log.iter().any(|r| r.cdb[0] == 0x1A && r.cdb[2] == page));
    }
}

#[test]
fn uefi_profile_finds_disks_with_report_luns_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 2 << 20, 9);
    let controller = Arc::new(Controller::new());
    let target2 = LunAddress {
        path: 0,
        target: 2,
        lun: 0,
    };
    controller.insert(host(target2), disk(&path, 512));
    let setup = connect(
        controller,
        multi_channel(2),
        StorvspVmConfig::default(),
        DriverConfig {
            profile: GuestProfile::Uefi,
            cpus: 4,
            buffer_offset: 0,
            ..DriverConfig::default()
        },
    );
    let driver = &setup.driver;
    assert_eq!(driver.version(), 0x0600);
    assert_eq!(driver.channel_count(), 1);
    let reports: Vec<_> = driver
        .probe_log()
        .iter()
        .filter(|r| r.cdb[0] == 0xA0)
        .collect();
    assert_eq!(reports.len(), 3);
    for (target, report) in reports.iter().enumerate() {
        assert_eq!(report.address.target, target as u8);
        assert_eq!(&report.cdb[6..10], &[0, 0, 0, 0]);
        assert_eq!(report.completion.scsi_status, 0);
    }
    assert_eq!(driver.disks().len(), 1);
    assert_eq!(driver.disks()[0].address, target2);
    let disk = driver.disk(0).unwrap();
    let data = block_on(disk.read(100, 300)).unwrap();
    assert!(data == bytes[100 * 512..400 * 512]);
}

#[test]
fn writes_are_refused_and_the_image_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 1 << 20, 11);
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let controller = Arc::new(Controller::new());
    controller.insert(host(LUN0), disk(&path, 512));
    let setup = connect(
        controller,
        StorvspConfig::default(),
        StorvspVmConfig::default(),
        linux(1),
    );
    let disk = setup.driver.disk(0).unwrap();
    let c = block_on(disk.try_write(0, &[0xAA; 4096])).unwrap();
    assert_eq!(c.scsi_status, 2);
    assert_eq!(c.srb_status, 0x84);
    assert_eq!(c.sense_key_asc(), Some((0x07, 0x27)));
    assert_eq!(c.transferred, 0);
    drop(setup);
    assert!(std::fs::read(&path).unwrap() == bytes);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn hot_add_and_remove_send_enumerate_bus() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_image(dir.path(), "disk.raw", 1 << 20, 12);
    let controller = Arc::new(Controller::new());
    controller.insert(host(LUN0), disk(&path, 512));
    let mut setup = connect(
        controller,
        StorvspConfig::default(),
        StorvspVmConfig::default(),
        linux(1),
    );
    assert_eq!(setup.driver.disks().len(), 1);
    let added = LunAddress {
        path: 0,
        target: 1,
        lun: 0,
    };
    assert!(setup.vm.device().hot_add(host(added), disk(&path, 512)));
    block_on(setup.driver.events().wait_enumerate_bus(1));
    block_on(setup.driver.rescan()).unwrap();
    assert_eq!(setup.driver.disks().len(), 2);
    assert!(setup.vm.device().hot_remove(host(added)));
    block_on(setup.driver.events().wait_enumerate_bus(2));
    block_on(setup.driver.rescan()).unwrap();
    assert_eq!(setup.driver.disks().len(), 1);
    assert_eq!(setup.driver.events().unexpected(), 0);
}

/// A disk whose reads wait while the gate is closed.
struct GatedDisk {
    bytes: Vec<u8>,
    closed: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl GatedDisk {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

impl BlockDevice for GatedDisk {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        self.bytes.len() as u64 / 512
    }
    fn disk_id(&self) -> [u8; 16] {
        [7; 16]
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let mut closed = self.closed.lock().unwrap();
        if *closed {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
        }
        let at = vmbdev_block::check_request(self, lba, buf.len())? as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn save_restore_reissues_requests_in_flight() {
    let mut bytes = vec![0u8; 1 << 20];
    SmallRng::seed_from_u64(13).fill(&mut bytes[..]);
    let gated = Arc::new(GatedDisk {
        bytes: bytes.clone(),
        closed: Mutex::new(false),
        opened: Condvar::new(),
        waiting: AtomicUsize::new(0),
    });
    let controller = Arc::new(Controller::new());
    let device: Arc<dyn BlockDevice> = gated.clone();
    controller.insert(host(LUN0), Arc::new(ScsiDisk::new(device)));
    let setup = connect(
        controller.clone(),
        multi_channel(2),
        StorvspVmConfig::default(),
        linux(3),
    );
    assert_eq!(setup.driver.channel_count(), 3);
    let disk = setup.driver.disk(0).unwrap();
    let taken_before = setup.vm.device().stats().requests();
    gated.set_closed(true);
    // Opens the gate even if an assertion fails, so no thread stays stuck.
    struct OpenOnDrop(Arc<GatedDisk>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.set_closed(false);
        }
    }
    let _guard = OpenOnDrop(gated.clone());
    // 260 KiB each: above the inline limit, so they run on the I/O pool and
    // are still in flight when the channels close.
    let requests: Vec<(u64, u32)> = (0..9).map(|i| (i * 50 + 3, 520)).collect();
    let reader = {
        let disk = disk.clone();
        let requests = requests.clone();
        std::thread::spawn(move || block_on(disk.read_many(&requests, 9)))
    };
    // All of them are taken from the rings; at least one reached the disk.
    wait_until("9 reads to be taken by the device", || {
        setup.vm.device().stats().requests() == taken_before + 9
            && gated.waiting.load(Ordering::SeqCst) >= 1
    });
    let old = setup.vm.device();
    for index in old.running_channels() {
        VmbusDevice::close(old.as_ref(), index).unwrap();
    }
    gated.set_closed(false);
    for (index, result) in setup.vm.close_all() {
        result.unwrap_or_else(|e| panic!("channel {index}: {e}"));
    }
    let saved = VmbusDevice::save(old.as_ref()).unwrap();
    let state = vmbdev_device::storvsp::saved::decode(&saved).unwrap();
    let pending: usize = state.pending.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(pending, 9, "{state:?}");
    assert_eq!(
        state.pending.len(),
        3,
        "requests were spread over 3 channels"
    );
    // The guest has seen no completion yet.
    assert!(!reader.is_finished());
    let new = Arc::new(StorvspDevice::new(multi_channel(2), controller).unwrap());
    VmbusDevice::restore(new.as_ref(), &saved).unwrap();
    setup.vm.reattach(new.clone()).unwrap();
    let results = reader.join().unwrap().unwrap();
    for ((lba, count), data) in requests.iter().zip(&results) {
        let at = *lba as usize * 512;
        assert!(data[..] == bytes[at..at + *count as usize * 512]);
    }
    assert_eq!(new.stats().completions(), 9);
    // The restored device keeps serving.
    assert!(block_on(disk.read(0, 8)).unwrap() == bytes[..4096]);
    // Corrupt saved state is refused, not trusted.
    let fresh = StorvspDevice::new(multi_channel(2), Arc::new(Controller::new())).unwrap();
    for cut in [0, 5, 13, saved.len() - 1] {
        assert!(
            VmbusDevice::restore(&fresh, &saved[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut lying = saved.clone();
    lying[19..23].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(VmbusDevice::restore(&fresh, &lying).is_err());
}

// ---- raw packets over the real ring ----

struct Raw {
    vm: StorvspVm,
    guest: Endpoint,
    next: u64,
}

fn raw(config: StorvspConfig, vm_config: StorvspVmConfig) -> (Raw, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = vec![0u8; 1 << 20];
    SmallRng::seed_from_u64(21).fill(&mut bytes[..]);
    let path = dir.path().join("d.raw");
    std::fs::write(&path, &bytes).unwrap();
    let controller = Arc::new(Controller::new());
    controller.insert(host(LUN0), disk(&path, 512));
    let device = Arc::new(StorvspDevice::new(config, controller).unwrap());
    let (vm, guest) = StorvspVm::start(device, vm_config).unwrap();
    (Raw { vm, guest, next: 1 }, bytes)
}

fn vstor(op: u32, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[..4].copy_from_slice(&op.to_le_bytes());
    p[4] = 1;
    p
}

impl Raw {
    fn send(&mut self, packet: OutgoingPacket<'_>) -> u64 {
        block_on(self.guest.write(&packet)).unwrap();
        packet.transaction_id
    }

    fn tid(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn request(&mut self, payload: &[u8]) -> Vec<u8> {
        let tid = self.tid();
        self.send(OutgoingPacket::request(tid, payload));
        self.completion(tid)
    }

    fn completion(&mut self, tid: u64) -> Vec<u8> {
        let packet = block_on(self.guest.read()).unwrap();
        assert_eq!(packet.kind, PacketKind::Completion);
        assert_eq!(packet.transaction_id, tid, "completion for another request");
        packet.payload
    }

    fn init(&mut self, size: usize) {
        assert_eq!(status(&self.request(&vstor(7, size))), 0);
        let mut v = vstor(9, size);
        v[12..14].copy_from_slice(&0x0602u16.to_le_bytes());
        assert_eq!(status(&self.request(&v)), 0);
        assert_eq!(status(&self.request(&vstor(10, size))), 0);
        assert_eq!(status(&self.request(&vstor(8, size))), 0);
    }
}

fn status(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

fn srb(cdb: &[u8], data_in: u8, length: u32) -> Vec<u8> {
    let mut p = vstor(3, 0x40);
    p[12..14].copy_from_slice(&0x34u16.to_le_bytes());
    p[20] = cdb.len() as u8;
    p[21] = 0x14;
    p[22] = data_in;
    p[24..28].copy_from_slice(&length.to_le_bytes());
    p[28..28 + cdb.len()].copy_from_slice(cdb);
    p
}

const READ10_LBA2_X8: [u8; 10] = [0x28, 0, 0, 0, 0, 2, 0, 0, 8, 0];

#[test]
fn completions_have_the_request_size_over_the_ring() {
    for size in [0x30usize, 0x34, 0x40] {
        let (mut raw, _) = raw(StorvspConfig::default(), StorvspVmConfig::default());
        // The ring carries lengths in 8-byte units: a 0x34-byte request
        // arrives as 0x38 bytes and is answered with 0x38.
        let arrives = size.next_multiple_of(8);
        let begin = raw.request(&vstor(7, size));
        assert_eq!(begin.len(), arrives, "BEGIN of {size:#x}");
        let mut v = vstor(9, size);
        v[12..14].copy_from_slice(&0x0600u16.to_le_bytes());
        assert_eq!(raw.request(&v).len(), arrives);
        assert_eq!(raw.request(&vstor(10, size)).len(), arrives);
        assert_eq!(raw.request(&vstor(8, size)).len(), arrives);
        let mut tur = srb(&[0; 6], 2, 0);
        tur.truncate(size);
        let reply = raw.request(&tur);
        assert_eq!(reply.len(), arrives);
        assert_eq!(reply[14], 1, "TEST UNIT READY in a {size:#x} packet");
    }
}

#[test]
fn hostile_packets_have_defined_outcomes() {
    let (mut raw, bytes) = raw(StorvspConfig::default(), StorvspVmConfig::default());
    raw.init(0x40);
    let device = raw.vm.device();
    let memory_pages = raw.vm.memory().page_count();
    let page = raw.vm.pages().alloc(2).unwrap();
    let good_range = GpaRange::new(4096, 0, vec![page[0]]).unwrap();

    // Wrong operations: a failure completion, the channel lives on.
    for op in [0u32, 1, 2, 11, 12, 14, 99, u32::MAX] {
        let reply = raw.request(&vstor(op, 0x40));
        assert_eq!(status(&reply), 0xC000_0010, "operation {op}");
    }
    // Out of order init: INVALID_DEVICE_STATE.
    assert_eq!(status(&raw.request(&vstor(7, 0x40))), 0xC000_0184);

    // Truncated below the header: counted, not answered.
    let violations = device.stats().violations();
    let tid = raw.tid();
    raw.send(OutgoingPacket::request(tid, &[3, 0, 0, 0, 1, 0, 0, 0]));
    assert_eq!(status(&raw.request(&vstor(99, 0x40))), 0xC000_0010);
    assert_eq!(device.stats().violations(), violations + 1);
    // A request without completion requested: counted, not answered.
    raw.send(OutgoingPacket::in_band(&srb(&[0; 6], 2, 0)));
    assert_eq!(status(&raw.request(&vstor(99, 0x40))), 0xC000_0010);
    assert_eq!(device.stats().violations(), violations + 2);

    // An SRB body too short to hold an SRB.
    let reply = raw.request(&srb(&READ10_LBA2_X8, 1, 4096)[..0x18]);
    assert_eq!(reply.len(), 0x18);
    assert_eq!(status(&reply), 0xC000_000D);

    let refused = |raw: &mut Raw, payload: &[u8], ranges: &[GpaRange], what: &str| {
        let tid = raw.tid();
        raw.send(OutgoingPacket::gpa_direct(tid, ranges, payload));
        let reply = raw.completion(tid);
        assert_eq!(status(&reply), 0xC000_000D, "{what}");
        assert_eq!(reply[14], 0x06, "{what}: SRB status");
        assert_eq!(&reply[24..28], &[0; 4], "{what}: bytes moved");
    };
    let read = srb(&READ10_LBA2_X8, 1, 4096);
    // GPA range outside guest memory.
    let outside = GpaRange::new(4096, 0, vec![memory_pages + 5]).unwrap();
    refused(&mut raw, &read, &[outside], "page outside memory");
    let huge = GpaRange::new(4096, 0, vec![u64::MAX >> 12]).unwrap();
    refused(
        &mut raw,
        &read,
        &[huge],
        "page at the top of the address space",
    );
    // Range shorter than data_transfer_length.
    let short = GpaRange::new(2048, 0, vec![page[0]]).unwrap();
    refused(&mut raw, &read, &[short], "short range");
    // More than one range.
    refused(
        &mut raw,
        &read,
        &[good_range.clone(), good_range.clone()],
        "two ranges",
    );
    // A data-in SRB with no buffer at all.
    let reply = raw.request(&read);
    assert_eq!(reply[14], 0x06, "no buffer");
    // Lying SRB fields: CDB length 17 and 0, transfer above the maximum,
    // unknown direction.
    let mut bad_cdb = read.clone();
    bad_cdb[20] = 17;
    refused(
        &mut raw,
        &bad_cdb,
        std::slice::from_ref(&good_range),
        "cdb length 17",
    );
    bad_cdb[20] = 0;
    refused(
        &mut raw,
        &bad_cdb,
        std::slice::from_ref(&good_range),
        "cdb length 0",
    );
    let mut too_big = read.clone();
    too_big[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    refused(
        &mut raw,
        &too_big,
        std::slice::from_ref(&good_range),
        "transfer length",
    );
    let mut direction = read.clone();
    direction[22] = 7;
    refused(
        &mut raw,
        &direction,
        std::slice::from_ref(&good_range),
        "direction 7",
    );
    // A lying SRB length field and sense length are ignored: the read
    // still lands, and sense is capped by the version.
    let mut lying = read.clone();
    lying[12..14].copy_from_slice(&0xFFFFu16.to_le_bytes());
    lying[21] = 0xFF;
    let tid = raw.tid();
    raw.send(OutgoingPacket::gpa_direct(
        tid,
        std::slice::from_ref(&good_range),
        &lying,
    ));
    let reply = raw.completion(tid);
    assert_eq!((status(&reply), reply[14]), (0, 1));
    let mut landed = vec![0u8; 4096];
    good_range
        .read_at(&raw.vm.memory(), 0, &mut landed)
        .unwrap();
    assert!(landed == bytes[1024..1024 + 4096]);
    // Buffer longer than the transfer: only data_transfer_length bytes move.
    let long = GpaRange::new(8192, 0, page.clone()).unwrap();
    raw.vm.memory().fill(page[1] << 12, 4096, 0x5A).unwrap();
    let tid = raw.tid();
    raw.send(OutgoingPacket::gpa_direct(tid, &[long], &read));
    let reply = raw.completion(tid);
    assert_eq!(reply[14], 1);
    let mut after = vec![0u8; 4096];
    raw.vm.memory().read(page[1] << 12, &mut after).unwrap();
    assert!(after.iter().all(|&b| b == 0x5A));
    // Nothing above killed the channel.
    assert!(raw.vm.finished_channels().is_empty());

    // A packet the ring itself rejects (bad type) stops the channel with
    // a ring error; the device does not panic.
    let mut bad = [0u8; 24];
    bad[0] = 0x55; // packet type
    bad[2] = 2; // data_offset8
    bad[4] = 2; // length8
    bad[6] = 1; // completion requested
    let half = raw.guest.writer.half().clone();
    let at = half.load_write_index().unwrap();
    half.write_at(at, &bad).unwrap();
    half.control()
        .set_write_index(half.advance(at, 24), Ordering::Release);
    raw.vm.signal_host(0);
    let mut ended = Vec::new();
    wait_until("the channel to stop", || {
        ended.extend(raw.vm.finished_channels());
        !ended.is_empty()
    });
    assert_eq!(ended.len(), 1);
    let (index, result) = ended.pop().unwrap();
    assert_eq!(index, 0);
    assert!(
        matches!(result, Err(ChannelError::Ring { channel: 0, .. })),
        "{result:?}"
    );
    assert_eq!(device.stats().violations(), violations + 3);
}

#[test]
fn a_guest_that_never_reads_completions_stops_the_device_until_it_does() {
    let (mut raw, _) = raw(
        StorvspConfig::default(),
        StorvspVmConfig {
            ring_pages: 1,
            ..StorvspVmConfig::default()
        },
    );
    raw.init(0x40);
    let device = raw.vm.device();
    let base = device.stats().completions();
    // One 4 KiB host->guest page holds this many 0x40-byte completions.
    let fits = (4096 - 8 - 1) / WORST_COMPLETION_RING_LEN as u64;
    let total = 300u64;
    let tur = srb(&[0; 6], 2, 0);
    let mut sent = 0u64;
    let mut tids = Vec::new();
    // Fill both rings without reading anything.
    loop {
        let tid = raw.tid();
        if !raw
            .guest
            .try_write(&OutgoingPacket::request(tid, &tur))
            .unwrap()
        {
            raw.next -= 1;
            break;
        }
        tids.push(tid);
        sent += 1;
        if sent == total {
            break;
        }
        if sent % 16 == 0 {
            // Let the host take what it can.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    wait_until("the outgoing ring to fill", || {
        device.stats().completions() == base + fits
    });
    std::thread::sleep(Duration::from_millis(100));
    // The host answered exactly what fits and took nothing more.
    assert_eq!(device.stats().completions(), base + fits);
    let requests = device.stats().requests();
    assert!(requests <= 4 + fits + 1, "host took {requests} requests");
    assert!(sent < total, "the guest->host ring should have filled");
    // Now read: everything gets answered exactly once (jobs may finish
    // out of order).
    let mut answered = 0u64;
    let mut seen = Vec::new();
    while answered < total {
        while sent < total {
            let tid = raw.tid();
            if !raw
                .guest
                .try_write(&OutgoingPacket::request(tid, &tur))
                .unwrap()
            {
                raw.next -= 1;
                break;
            }
            tids.push(tid);
            sent += 1;
        }
        let packet = block_on(raw.guest.read()).unwrap();
        assert_eq!(packet.kind, PacketKind::Completion);
        seen.push(packet.transaction_id);
        assert_eq!(packet.payload[14], 1);
        answered += 1;
    }
    seen.sort_unstable();
    tids.sort_unstable();
    assert_eq!(seen, tids);
    assert_eq!(device.stats().violations(), 0);
}

/// Serves the host end of `endpoint` with the storvsp state machine,
/// refusing the versions in `refuse`; records the size of every SRB packet.
fn fallback_host(
    mut endpoint: Endpoint,
    mut channel: vmbdev_device::storvsp::StorvspChannel,
    refuse: Vec<u16>,
    sizes: Arc<Mutex<Vec<usize>>>,
    stop: Arc<vmbdev_device::storvsp::StopSignal>,
) {
    use vmbdev_device::storvsp::{Outcome, Request};
    block_on(futures_lite::future::or(
        async {
            loop {
                let Ok(packet) = endpoint.read().await else {
                    return;
                };
                let payload = &packet.payload;
                let op = u32::from_le_bytes(payload[..4].try_into().unwrap());
                let asked = u16::from_le_bytes(payload[12..14].try_into().unwrap());
                let reply = if op == 9 && refuse.contains(&asked) {
                    let mut r = payload.clone();
                    r[..4].copy_from_slice(&1u32.to_le_bytes());
                    r[8..12].copy_from_slice(&0xC000_0059u32.to_le_bytes());
                    r
                } else {
                    if op == 3 {
                        sizes.lock().unwrap().push(payload.len());
                    }
                    let ranges = match &packet.kind {
                        PacketKind::GpaDirect(r) => r.clone(),
                        _ => Vec::new(),
                    };
                    let memory = channel.memory().clone();
                    match channel.handle(Request {
                        payload,
                        ranges: &ranges,
                        transaction_id: packet.transaction_id,
                    }) {
                        Outcome::Complete(c) => c.bytes.to_vec(),
                        Outcome::Execute(job) => job.run(&memory).bytes.to_vec(),
                        other => panic!("unexpected outcome {other:?}"),
                    }
                };
                let out = OutgoingPacket::completion(packet.transaction_id, &reply);
                endpoint.write(&out).await.unwrap();
            }
        },
        stop.wait(),
    ));
}

#[test]
fn linux_falls_back_through_refused_versions_over_the_ring() {
    use vmbdev_guest::storvsc::driver::NoSubChannels;
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = random_image(dir.path(), "disk.raw", 1 << 20, 31);
    for (refuse, version, srb_size) in [
        (vec![0x0602, 0x0600], 0x0501, 0x40),
        (vec![0x0602, 0x0600, 0x0501], 0x0402, 0x30),
        (vec![0x0602, 0x0600, 0x0501, 0x0402], 0x0200, 0x30),
    ] {
        let controller = Arc::new(Controller::new());
        controller.insert(host(LUN0), disk(&path, 512));
        let lb = vmbdev_ring::loopback(&vmbdev_ring::LoopbackConfig {
            buffer_pages: 1024,
            scatter_buffers: true,
            ..Default::default()
        })
        .unwrap();
        let channel = vmbdev_device::storvsp::StorvspChannel::new(
            multi_channel(2),
            controller,
            lb.memory.clone(),
        )
        .unwrap();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(vmbdev_device::storvsp::StopSignal::new());
        let host = {
            let (sizes, stop, refuse) = (sizes.clone(), stop.clone(), refuse.clone());
            let endpoint = lb.host;
            std::thread::spawn(move || fallback_host(endpoint, channel, refuse, sizes, stop))
        };
        let driver = block_on(Storvsc::connect(
            lb.guest,
            lb.memory.clone(),
            lb.pages.clone(),
            &NoSubChannels,
            &linux(1),
        ))
        .unwrap();
        assert_eq!(driver.version(), version);
        let disk = driver.disk(0).unwrap();
        assert!(block_on(disk.read(5, 40)).unwrap() == bytes[5 * 512..45 * 512]);
        let sizes = sizes.lock().unwrap().clone();
        assert!(!sizes.is_empty());
        assert!(
            sizes.iter().all(|&s| s == srb_size),
            "{version:#x}: {sizes:?}"
        );
        drop(driver);
        stop.stop();
        host.join().unwrap();
    }
}
