//! No request lost across a device-process kill: the storvsc driver keeps
//! 64 reads in flight over the primary and two sub-channels of a storvsp
//! device served by a child process while, at random points (fixed seed),
//! the VMM suspends every channel, saves the device, kills the process
//! with SIGKILL, starts a new one, restores the saved bytes into it and
//! resumes the rings. Every read must come back, with the image's bytes,
//! and the driver must see no completion it did not wait for (none twice).
//!
//! Each round starts with the image out of the page cache, so that reads
//! wait for the disk on the device's I/O pool (cached ones are answered
//! inline, too fast for a kill to find them).
//!
//! The test counts itself which reads were asked for and not yet answered
//! when each save is taken, and decodes the saved state for the requests
//! the device held: some saves must find both, or the kills did not land
//! under load and the restore path was not exercised (the suite runs a
//! few rounds more while no saved state has held a request yet).
//!
//! `VMBDEV_NRL_REMOTE_ROUNDS` (default 6) and `VMBDEV_NRL_REMOTE_SEED`
//! (decimal or `0x` hex) set the profile.

mod common;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{HANG_GUARD, SECTOR, ServerProcess, connect_storvsc, write_image};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_guest::storvsc::Disk;
use vmbdev_remote::vmm::EventfdVm;

const DEFAULT_SEED: u64 = 0x4E52_4C52_2026;
/// 16 MiB.
const SECTORS: usize = 32 * 1024;
const IN_FLIGHT: usize = 64;
const REQUESTS_PER_ROUND: usize = 96;
/// Rounds of the suite profile: with one or two kills each, 6 to 12 device
/// processes are killed under load in a few seconds.
const SUITE_ROUNDS: u64 = 6;
/// Rounds run past the profile while no saved state has held a request
/// yet (whether a pool job is in flight at a stop is a matter of timing); a
/// save that drains or drops what the device holds never gets there.
const EXTRA_ROUNDS: u64 = 30;
/// Guest pages: 64 reads of up to 512 KiB each fit twice over.
const MEMORY_PAGES: u64 = 16 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    let Ok(value) = std::env::var(name) else {
        return default;
    };
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{name}={value}: {e}"))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads of 1 to 64 blocks (answered inline by the channel task) and,
/// about one in three, of 300 to 512 KiB (run on the device's I/O pool,
/// so the device holds them when a channel stops).
fn requests(rng: &mut SmallRng) -> Vec<(u64, u32)> {
    (0..REQUESTS_PER_ROUND)
        .map(|_| {
            let count = if rng.random_bool(0.35) {
                rng.random_range(600..=1024u32)
            } else {
                rng.random_range(1..=64u32)
            };
            (
                rng.random_range(0..SECTORS as u64 - u64::from(count)),
                count,
            )
        })
        .collect()
}

/// What the test knows of the reads of a round, kept by the reader and
/// looked at by the VMM side at every save and on a hang.
#[derive(Default)]
struct Progress {
    /// Device processes started so far (a read started under one and
    /// answered under a later one crossed a kill).
    generation: AtomicU64,
    asked: AtomicU64,
    answered: AtomicU64,
    crossed: AtomicU64,
    /// Reads asked and not answered: request index and the generation it
    /// was asked under.
    outstanding: Mutex<Vec<(usize, u64)>>,
}

impl Progress {
    fn ask(&self, index: usize) -> u64 {
        let generation = self.generation.load(Ordering::SeqCst);
        lock(&self.outstanding).push((index, generation));
        self.asked.fetch_add(1, Ordering::SeqCst);
        generation
    }

    fn answer(&self, index: usize, asked_under: u64) {
        lock(&self.outstanding).retain(|&(i, _)| i != index);
        self.answered.fetch_add(1, Ordering::SeqCst);
        if self.generation.load(Ordering::SeqCst) > asked_under {
            self.crossed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn outstanding(&self) -> u64 {
        self.asked.load(Ordering::SeqCst) - self.answered.load(Ordering::SeqCst)
    }
}

/// Reads every request with [`IN_FLIGHT`] of them asked at a time (one
/// task per slot, each taking the next request when its read returns) and
/// returns the results in request order.
fn read_all(
    disk: &Disk,
    requests: &[(u64, u32)],
    progress: &Progress,
) -> Vec<Result<Vec<u8>, String>> {
    let next = Cell::new(0usize);
    let results = RefCell::new(vec![Err("never read".to_string()); requests.len()]);
    let executor = async_executor::LocalExecutor::new();
    let slots: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            executor.spawn(async {
                while let Some(&(lba, count)) = requests.get(next.get()) {
                    let index = next.replace(next.get() + 1);
                    let asked_under = progress.ask(index);
                    let result = disk.read(lba, u64::from(count)).await;
                    progress.answer(index, asked_under);
                    results.borrow_mut()[index] = result.map_err(|e| e.to_string());
                }
            })
        })
        .collect();
    futures_lite::future::block_on(executor.run(async {
        for slot in slots {
            slot.await;
        }
    }));
    drop(executor);
    results.into_inner()
}

/// The VMM side and the device process serving it.
struct Rig {
    image_path: PathBuf,
    server: ServerProcess,
    vm: Arc<EventfdVm>,
    kills: u64,
    /// Kills with reads outstanding at the save, and those reads summed.
    kills_under_load: u64,
    outstanding_at_saves: u64,
    /// Requests the saved states held (taken from a ring, not answered).
    held_at_saves: u64,
    most_held: u64,
}

impl Rig {
    /// Suspends every channel, saves the device, kills its process, and
    /// resumes the rings with a new process restored from the saved bytes.
    fn kill_and_restore(&mut self, round: u64, progress: &Progress) {
        for (index, result) in self.vm.suspend() {
            result.unwrap_or_else(|e| panic!("round {round}: channel {index} did not stop: {e}"));
        }
        let saved = self.vm.device().save().unwrap();
        // The old process writes nothing any more: what is outstanding now
        // is in the rings or in the saved state.
        let outstanding = progress.outstanding();
        let state = vmbdev_device::storvsp::saved::decode(&saved)
            .unwrap_or_else(|e| panic!("round {round}: the saved state does not decode: {e}"));
        let held: u64 = state.pending.iter().map(|(_, p)| p.len() as u64).sum();
        self.outstanding_at_saves += outstanding;
        self.kills_under_load += u64::from(outstanding > 0);
        self.held_at_saves += held;
        self.most_held = self.most_held.max(held);

        self.server.kill();
        self.kills += 1;
        self.server = ServerProcess::spawn("storvsp", &self.image_path);
        let restored: Arc<dyn VmbusDevice> = Arc::new(self.server.connect());
        restored
            .restore(&saved)
            .unwrap_or_else(|e| panic!("round {round}: restore into a new process: {e}"));
        progress.generation.fetch_add(1, Ordering::SeqCst);
        self.vm
            .resume(restored)
            .unwrap_or_else(|e| panic!("round {round}: resume: {e}"));
    }
}

/// Waits for the reader, panicking after [`HANG_GUARD`] with the reads
/// still outstanding: a request in a ring or in the saved state that the
/// new process never answers.
fn join_reads<T>(
    reader: JoinHandle<T>,
    round: u64,
    requests: &[(u64, u32)],
    progress: &Progress,
) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            let pending: Vec<String> = lock(&progress.outstanding)
                .iter()
                .map(|&(i, generation)| {
                    let (lba, count) = requests[i];
                    format!("#{i} ({count} blocks at {lba}, asked under process {generation})")
                })
                .collect();
            panic!(
                "round {round}: {} of {} reads never returned (a request was lost across a \
                 kill; now at process {}): {}",
                pending.len(),
                requests.len(),
                progress.generation.load(Ordering::SeqCst),
                pending.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    reader.join().unwrap()
}

/// Drops the image's pages from the page cache. The device answers a
/// cached read inline, before a kill can find it; reads that must wait
/// for the disk go to its I/O pool, where the kills catch them in flight.
fn evict_from_page_cache(path: &std::path::Path) {
    let file = std::fs::File::open(path).unwrap();
    // Dirty pages stay cached until written back.
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

#[test]
fn every_read_in_flight_completes_once_across_device_process_kills() {
    let rounds = env_u64("VMBDEV_NRL_REMOTE_ROUNDS", SUITE_ROUNDS);
    let seed = env_u64("VMBDEV_NRL_REMOTE_SEED", DEFAULT_SEED);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("disk.raw");
    let image = write_image(&image_path, SECTORS);
    let mut server = ServerProcess::spawn("storvsp", &image_path);
    let remote: Arc<dyn VmbusDevice> = Arc::new(server.connect());
    let vm = Arc::new(EventfdVm::new(remote, MEMORY_PAGES, 16, 4, true).unwrap());
    let driver = connect_storvsc(&vm, vm.open_channel(0).unwrap(), 3);
    assert_eq!(driver.channel_count(), 3, "primary and two sub-channels");
    let disk = driver.disk(0).expect("a disk at LUN 0");
    assert_eq!(disk.capacity(), (SECTORS as u64, SECTOR as u32));
    let mut rig = Rig {
        image_path,
        server,
        vm,
        kills: 0,
        kills_under_load: 0,
        outstanding_at_saves: 0,
        held_at_saves: 0,
        most_held: 0,
    };
    let (mut reads, mut crossed, mut round) = (0u64, 0u64, 0u64);
    while round < rounds || (rig.held_at_saves == 0 && round < rounds + EXTRA_ROUNDS) {
        evict_from_page_cache(&rig.image_path);
        let requests = Arc::new(requests(&mut rng));
        let progress = Arc::new(Progress::default());
        let unexpected_before = driver.events().unexpected();
        let reader = {
            let (disk, requests, progress) = (disk.clone(), requests.clone(), progress.clone());
            std::thread::spawn(move || read_all(&disk, &requests, &progress))
        };
        for _ in 0..rng.random_range(1..=2) {
            let delay = if rng.random_bool(0.25) {
                0
            } else {
                rng.random_range(0..3000)
            };
            std::thread::sleep(Duration::from_micros(delay));
            if reader.is_finished() {
                break;
            }
            rig.kill_and_restore(round, &progress);
        }
        let results = join_reads(reader, round, &requests, &progress);
        for (i, (&(lba, count), result)) in requests.iter().zip(results).enumerate() {
            let data = result.unwrap_or_else(|e| panic!("round {round}: read #{i} failed: {e}"));
            let at = lba as usize * SECTOR;
            assert!(
                data[..] == image[at..at + count as usize * SECTOR],
                "round {round}: read #{i} ({count} blocks at {lba}) has bytes other than the \
                 image's"
            );
        }
        assert_eq!(
            driver.events().unexpected(),
            unexpected_before,
            "round {round}: the driver got completions nobody waited for (answered twice?)"
        );
        reads += requests.len() as u64;
        crossed += progress.crossed.load(Ordering::SeqCst);
        round += 1;
    }
    eprintln!(
        "no request lost (remote): seed {seed:#x}, {round} rounds, {reads} reads, {} kills \
         ({} with reads outstanding), {} reads outstanding and {} requests held by the device \
         at the saves (at most {} at one), {crossed} reads answered by a later process",
        rig.kills, rig.kills_under_load, rig.outstanding_at_saves, rig.held_at_saves, rig.most_held
    );
    assert!(
        rig.kills_under_load > 0,
        "no kill came while reads were outstanding"
    );
    assert!(
        rig.held_at_saves > 0,
        "no saved state held a request taken and not answered"
    );
    for (index, result) in rig.vm.suspend() {
        result.unwrap_or_else(|e| panic!("channel {index} at the end: {e}"));
    }
}
