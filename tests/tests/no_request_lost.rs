//! No request lost across save and restore: the storvsc driver keeps 64
//! reads in flight over the primary and two sub-channels while, at random
//! points (fixed seed), every channel is stopped, the device saved, the
//! state restored into a fresh device (or back into the same one) and the
//! rings served again. Every read must complete exactly once with the
//! disk's bytes: the reads return (none lost), the devices together
//! write exactly one completion per read (none twice) and the driver
//! sees no completion it did not wait for.
//!
//! The vmbfs test does the same with a guest that queues many READ_FILE
//! requests on the pipe and saves and restores the device between the
//! replies it reads: every reply comes once, in order, with the file's
//! bytes, and the reply after them answers the request after them.
//!
//! `VMBDEV_NRL_ROUNDS` (default 60) and `VMBDEV_NRL_SEED` set the profile.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_block::{BlockDevice, MemoryDisk};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::storvsc::{DriverConfig, GuestProfile};
use vmbdev_guest::vmbfs::{
    child_path, get_file_info_request, parse_file_info_response, parse_read_response,
    parse_version_response, read_request, root_path, version_request,
};
use vmbdev_loopback::storvsp::{StorvspVm, StorvspVmConfig};
use vmbdev_loopback::vm::{GuestChannel, LoopbackVm, RingShape, VmConfig};
use vmbdev_ring::PipeMessage;
use vmbdev_ring::pipe::MAX_MESSAGE_LEN;
use vmbdev_tests::faults::{Fault, FaultyDevice};

const DEFAULT_SEED: u64 = 0x4E52_4C00_2026;
const DISK: usize = 16 << 20;
const IN_FLIGHT: usize = 64;
const REQUESTS_PER_ROUND: usize = 96;
/// Rounds of the suite profile: with a third of the reads on the pool,
/// a stop that lost a pool job's completion failed within this many rounds
/// for every seed tried.
const SUITE_ROUNDS: u64 = 60;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn config() -> StorvspConfig {
    StorvspConfig {
        max_sub_channels: 2,
        multi_channel: true,
        ..StorvspConfig::default()
    }
}

/// A disk of random bytes whose every read takes a little while, so many
/// requests are taken and unanswered (or still in the rings) whenever
/// the channels stop.
fn slow_disk(bytes: Vec<u8>) -> Arc<Controller> {
    let disk: Arc<dyn BlockDevice> = Arc::new(MemoryDisk::new(bytes));
    let slow: Arc<dyn BlockDevice> = Arc::new(FaultyDevice::new(
        disk,
        vec![(0..u64::MAX, Fault::Delay(Duration::from_micros(150)))],
    ));
    let controller = Arc::new(Controller::new());
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(slow)),
    );
    controller
}

/// Reads of 1 to 64 blocks (answered inline by the channel task) and,
/// one in three, of 300 to 512 KiB (run on the device's I/O pool).
fn requests(rng: &mut SmallRng, blocks: u64) -> Vec<(u64, u32)> {
    (0..REQUESTS_PER_ROUND)
        .map(|_| {
            let count = if rng.random_bool(0.35) {
                rng.random_range(600..=1024u32)
            } else {
                rng.random_range(1..=64u32)
            };
            (rng.random_range(0..blocks - u64::from(count)), count)
        })
        .collect()
}

/// What one interruption does after every channel stopped.
#[derive(Debug, Clone, Copy)]
enum Interruption {
    /// Saved, restored into a fresh device, that device attached.
    RestoreFresh,
    /// Saved and restored into the same device, which is attached again.
    RestoreInPlace,
}

struct Rig {
    vm: StorvspVm,
    controller: Arc<Controller>,
    /// Every device instance that served the rings (their completion
    /// counts add up to what the guest was sent).
    devices: Vec<Arc<StorvspDevice>>,
    saves: u64,
    pending_at_save: u64,
}

impl Rig {
    /// What the devices hold when reads hang: completions written this
    /// round and the requests still pending once every channel stopped.
    fn diagnose(&self, completions_before: u64) -> String {
        let written = self.completions() - completions_before;
        let closed = self.vm.close_all();
        let saved = VmbusDevice::save(self.vm.device().as_ref()).unwrap();
        let state = vmbdev_device::storvsp::saved::decode(&saved).unwrap();
        format!("{written} completions written this round; channels {closed:?}; saved {state:?}")
    }

    fn completions(&self) -> u64 {
        self.devices.iter().map(|d| d.stats().completions()).sum()
    }

    fn interrupt(&mut self, how: Interruption) {
        for (index, result) in self.vm.close_all() {
            result.unwrap_or_else(|e| panic!("channel {index} did not stop cleanly: {e}"));
        }
        let old = self.vm.device();
        let saved = VmbusDevice::save(old.as_ref()).unwrap();
        let state = vmbdev_device::storvsp::saved::decode(&saved).unwrap();
        self.pending_at_save += state
            .pending
            .iter()
            .map(|(_, p)| p.len() as u64)
            .sum::<u64>();
        self.saves += 1;
        let next = match how {
            Interruption::RestoreFresh => {
                let fresh =
                    Arc::new(StorvspDevice::new(config(), self.controller.clone()).unwrap());
                self.devices.push(fresh.clone());
                fresh
            }
            Interruption::RestoreInPlace => old,
        };
        VmbusDevice::restore(next.as_ref(), &saved).unwrap();
        self.vm.reattach(next).unwrap();
    }
}

/// Waits for the reads, failing if they do not all come back within
/// 20 seconds (they take milliseconds): a request in a ring or taken at save time that no device
/// answers after the restore never completes.
fn join_reads<T>(reader: JoinHandle<T>, round: u64, diagnose: impl FnOnce() -> String) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            panic!(
                "round {round}: reads never completed (a request was lost): {}",
                diagnose()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    reader.join().unwrap()
}

#[test]
fn every_read_in_flight_completes_exactly_once_across_save_and_restore() {
    let rounds = env_u64("VMBDEV_NRL_ROUNDS", SUITE_ROUNDS);
    let seed = env_u64("VMBDEV_NRL_SEED", DEFAULT_SEED);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; DISK];
    rng.fill(&mut bytes[..]);
    let bytes = Arc::new(bytes);
    let controller = slow_disk(bytes.to_vec());
    let device = Arc::new(StorvspDevice::new(config(), controller.clone()).unwrap());
    let (vm, driver) = StorvspVm::start_with_storvsc(
        device.clone(),
        StorvspVmConfig {
            buffer_pages: 16384,
            ..StorvspVmConfig::default()
        },
        &DriverConfig {
            profile: GuestProfile::Linux,
            cpus: 3,
            ..DriverConfig::default()
        },
    )
    .unwrap();
    assert_eq!(driver.channel_count(), 3, "primary and two sub-channels");
    let disk = driver.disk(0).unwrap();
    let blocks = disk.capacity().0;
    let mut rig = Rig {
        vm,
        controller,
        devices: vec![device],
        saves: 0,
        pending_at_save: 0,
    };
    let (mut issued, mut interrupted_rounds) = (0u64, 0u64);
    for round in 0..rounds {
        let requests = requests(&mut rng, blocks);
        let completions_before = rig.completions();
        let unexpected_before = driver.events().unexpected();
        let reader = {
            let (disk, requests) = (disk.clone(), requests.clone());
            std::thread::spawn(move || block_on(disk.read_many(&requests, IN_FLIGHT)))
        };
        let saves_before = rig.saves;
        for _ in 0..rng.random_range(1..=3) {
            let delay = if rng.random_bool(0.25) {
                0
            } else {
                rng.random_range(0..2000)
            };
            std::thread::sleep(Duration::from_micros(delay));
            if reader.is_finished() {
                break;
            }
            let how = if rng.random_bool(0.5) {
                Interruption::RestoreFresh
            } else {
                Interruption::RestoreInPlace
            };
            rig.interrupt(how);
        }
        interrupted_rounds += u64::from(rig.saves > saves_before);
        let results = join_reads(reader, round, || rig.diagnose(completions_before))
            .unwrap_or_else(|e| panic!("round {round}: a read failed: {e}"));
        for (&(lba, count), data) in requests.iter().zip(&results) {
            let at = lba as usize * 512;
            assert!(
                data[..] == bytes[at..at + count as usize * 512],
                "round {round}: wrong bytes for {count} blocks at {lba}"
            );
        }
        assert_eq!(
            rig.completions() - completions_before,
            requests.len() as u64,
            "round {round}: completions written for {} reads",
            requests.len()
        );
        assert_eq!(
            driver.events().unexpected(),
            unexpected_before,
            "round {round}: the driver got completions nobody waited for"
        );
        issued += requests.len() as u64;
    }
    eprintln!(
        "no request lost: seed {seed:#x}, {rounds} rounds ({interrupted_rounds} interrupted), \
         {issued} reads, {} save/restores, {} requests pending at save, {} device instances",
        rig.saves,
        rig.pending_at_save,
        rig.devices.len()
    );
    assert!(rig.saves > 0, "no round was interrupted");
    for (index, result) in rig.vm.close_all() {
        result.unwrap_or_else(|e| panic!("channel {index}: {e}"));
    }
}

// ---- vmbfs ----

/// READ_FILE requests a vmbfs round queues before reading any reply.
const VMBFS_QUEUED: usize = 48;

fn vmbfs_files(rng: &mut SmallRng) -> Vec<(String, Vec<u8>)> {
    (0..4)
        .map(|i| {
            let mut data = vec![0u8; rng.random_range(40_000..200_000)];
            rng.fill(&mut data[..]);
            (format!("file{i}.bin"), data)
        })
        .collect()
}

fn vmbfs_config(files: &[(String, Vec<u8>)]) -> VmbfsConfig {
    let mut tree = MemoryTree::builder();
    for (name, data) in files {
        tree.add_file(name, data.clone()).unwrap();
    }
    VmbfsConfig {
        tree: Arc::new(tree.build()),
        rdma_enabled: false,
    }
}

/// The next pipe message's bytes, failing if none comes within a minute
/// (a request the restored device never answers).
fn next_reply(channel: &mut GuestChannel, what: &str) -> Vec<u8> {
    let received = block_on(futures_lite::future::or(
        async { Some(channel.endpoint.recv_pipe(MAX_MESSAGE_LEN).await) },
        async {
            async_io::Timer::after(Duration::from_secs(60)).await;
            None
        },
    ));
    match received {
        Some(Ok(PipeMessage::Data(bytes))) => bytes,
        Some(other) => panic!("{what}: {other:?}"),
        None => panic!("{what}: no reply (the request was lost)"),
    }
}

#[test]
fn every_queued_vmbfs_request_is_answered_once_across_save_and_restore() {
    let rounds = env_u64("VMBDEV_NRL_ROUNDS", SUITE_ROUNDS);
    let seed = env_u64("VMBDEV_NRL_SEED", DEFAULT_SEED) ^ 0xF5;
    let mut rng = SmallRng::seed_from_u64(seed);
    let files = vmbfs_files(&mut rng);
    let config = vmbfs_config(&files);
    let mut device: Arc<dyn VmbusDevice> = Arc::new(VmbfsDevice::new(config.clone()));
    let vm = LoopbackVm::new(&VmConfig::default()).unwrap();
    let shape = RingShape::from_offer(device.as_ref());
    let mut channel = vm.open_channel(device.clone(), 0, shape).unwrap();
    block_on(channel.endpoint.send_data(&version_request())).unwrap();
    parse_version_response(&next_reply(&mut channel, "version")).unwrap();
    let paths: Vec<Vec<u16>> = files
        .iter()
        .map(|(n, _)| child_path(&root_path(), n))
        .collect();
    let (mut saves, mut answered) = (0u64, 0u64);
    for round in 0..rounds {
        let reads: Vec<(usize, u64, usize)> = (0..VMBFS_QUEUED)
            .map(|_| {
                let file = rng.random_range(0..files.len());
                let offset = rng.random_range(0..files[file].1.len() as u64);
                (file, offset, rng.random_range(1..=12_276))
            })
            .collect();
        let sentinel = rng.random_range(0..files.len());
        let stops: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..=VMBFS_QUEUED))
            .collect();
        block_on(async {
            for &(file, offset, len) in &reads {
                let (message, _) = read_request(&paths[file], offset, len).unwrap();
                channel.endpoint.send_data(&message).await.unwrap();
            }
            let info = get_file_info_request(&paths[sentinel]).unwrap();
            channel.endpoint.send_data(&info).await.unwrap();
        });
        for (i, &(file, offset, len)) in reads.iter().enumerate() {
            for _ in stops.iter().filter(|&&at| at == i) {
                block_on(channel.suspend_device()).unwrap();
                let saved = device.save().unwrap();
                let restored: Arc<dyn VmbusDevice> = Arc::new(VmbfsDevice::new(config.clone()));
                restored.restore(&saved).unwrap();
                channel.resume_device(restored.clone()).unwrap();
                device = restored;
                saves += 1;
            }
            let reply = next_reply(&mut channel, &format!("round {round}, read {i}"));
            let data = parse_read_response(&reply, len as u32)
                .unwrap_or_else(|e| panic!("round {round}, read {i}: {e}"));
            let bytes = &files[file].1;
            let end = (offset as usize + len).min(bytes.len());
            assert!(
                data == &bytes[offset as usize..end],
                "round {round}, read {i}: wrong bytes of {} at {offset}+{len}",
                files[file].0
            );
            answered += 1;
        }
        // A duplicate reply would stand here instead of the sentinel's.
        let reply = next_reply(&mut channel, &format!("round {round}, sentinel"));
        let info = parse_file_info_response(&reply)
            .unwrap_or_else(|e| panic!("round {round}: the reply after the reads: {e}"));
        assert_eq!(info.size, files[sentinel].1.len() as u64, "round {round}");
    }
    eprintln!(
        "no vmbfs request lost: seed {seed:#x}, {rounds} rounds, {answered} reads, {saves} \
         save/restores"
    );
    assert!(saves > 0);
    block_on(channel.close()).unwrap();
}
