//! The scribbler soak: one guest memory behind the real control plane
//! holding four channels. A storvsp device (primary and two sub-channels)
//! and a vmbfs device are driven by well-behaved guests that compare every
//! byte they read with the disk and the files; a second storvsp and a
//! second vmbfs device are driven by hostile guests that issue requests
//! while a scribbler thread rewrites random bytes of their ring control
//! pages (indices, interrupt mask, pending-send size), their ring data
//! (descriptors, GPA range lists, SRBs, vmbfs paths) and the data buffers
//! their requests point at; the hostile guests reopen their channels
//! whenever the host gives up on one.
//!
//! For the whole run the host must not panic (a panic hook watches every
//! thread but the hostile guests' own, and every device task result is
//! checked), must not touch the backing memory outside the guest's
//! regions (guard runs of the memfd between and around them keep a marker
//! pattern), must stay within a generous memory bound (heap bytes in use,
//! counted by the global allocator, and VmRSS), and the good channels must
//! keep returning exactly the right bytes.
//!
//! The guest layout keeps the hostile guests' stray page numbers away from
//! the good guests' pages: the good pages (every ring, the good buffers)
//! sit at guest page 0x0101_0101_0000 and the hostile buffers at
//! 0x0202_0202_0000, with holes everywhere else, so a GPA range the
//! scribbler bends (a few bytes of a page number replaced, a page count
//! read from the payload) names a hole, a hostile page or the SynIC pages
//! at 0 and 1, never a page a good guest uses.
//!
//! Profiles: `VMBDEV_SOAK_SECS` (default 3) seconds of scribbling,
//! `VMBDEV_SOAK_SEED` (default below) for the random choices; both are
//! printed with the figures (run with `--nocapture` to see them).

use std::alloc::System;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use vmbdev_block::{BlockDevice, MemoryDisk};
use vmbdev_device::bus::{ChannelError, Guid};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::storvsc::{
    DriverConfig, GuestProfile, InitDriver, InitStep, SrbParams, Storvsc, srb_packet,
};
use vmbdev_guest::vmbfs::{BusFailure, VmbfsBus, VmbfsChannel, VmbfsClient};
use vmbdev_loopback::bus::{BusVm, BusVmConfig, BusVmbfs, BusVmbfsChannel, BusVmbfsClient};
use vmbdev_ring::{
    Endpoint, GpaRange, GuestMemory, MemoryRegion, OutgoingPacket, PAGE_SIZE, PageAllocator,
    StopSignal,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DEFAULT_SEED: u64 = 0x5C81_BB1E_50A4_2026;
const PAGE: u64 = PAGE_SIZE as u64;

/// Guest pages 0..LOW_PAGES: the SynIC pages and nothing the drivers use.
const LOW_PAGES: u64 = 16;
/// The good region: every ring and the good guests' buffers.
const GOOD_BASE: u64 = 0x0101_0101_0000;
const GOOD_PAGES: u64 = 12288;
/// The hostile region: the hostile guests' data buffers.
const HOSTILE_BASE: u64 = 0x0202_0202_0000;
/// Pages of the hostile region given to each hostile guest.
const HOSTILE_POOL: u64 = 128;
/// Backing pages before, between and after the guest's regions.
const GUARD_PAGES: u64 = 8;
/// Data pages of each ring half.
const RING_PAGES: u32 = 8;

/// Heap bytes in use (allocated minus freed) the run may add.
const HEAP_GROWTH_BOUND: u64 = 128 << 20;
/// Resident bytes the run may add (guest pages touched for the first time
/// count here too: 48 MiB at most).
const RSS_GROWTH_BOUND: u64 = 384 << 20;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

// ---- the guest memory and its guard runs ----

/// The backing memfd mapped whole (to fill and check the guard runs) and
/// the guest's view of it: three regions with guard runs of the backing
/// around each that no guest address reaches.
struct Layout {
    backing: GuestMemory,
    guest: GuestMemory,
    /// Backing byte ranges outside every guest region.
    guards: Vec<std::ops::Range<u64>>,
}

impl Layout {
    fn new() -> Self {
        let g = GUARD_PAGES;
        let regions = [
            (0, LOW_PAGES),
            (GOOD_BASE, GOOD_PAGES),
            (HOSTILE_BASE, 2 * HOSTILE_POOL),
        ];
        let total = g + regions.iter().map(|(_, pages)| pages + g).sum::<u64>();
        let backing = GuestMemory::new(total * PAGE).unwrap();
        let mut guest_regions = Vec::new();
        let mut guards = Vec::new();
        guards.push(0..g * PAGE);
        let mut offset = g;
        for (gpn, pages) in regions {
            guest_regions.push(MemoryRegion::new(gpn * PAGE, pages * PAGE, offset * PAGE));
            offset += pages;
            guards.push(offset * PAGE..(offset + g) * PAGE);
            offset += g;
        }
        let fd = backing.fd().unwrap().try_clone_to_owned().unwrap();
        let guest = GuestMemory::from_memfd(fd, &guest_regions).unwrap();
        // The guard runs are where the guest's bytes are not: each
        // region's last byte lands just before the run after it.
        for (region, guard) in guest_regions.iter().zip(&guards[1..]) {
            guest.write(region.gpa + region.len - 1, &[0x5A]).unwrap();
            let mut byte = [0u8];
            backing.read(guard.start - 1, &mut byte).unwrap();
            assert_eq!(
                byte,
                [0x5A],
                "region at {:#x} is not where the layout says",
                region.gpa
            );
            guest.write(region.gpa + region.len - 1, &[0]).unwrap();
        }
        let layout = Self {
            backing,
            guest,
            guards,
        };
        for (i, guard) in layout.guards.iter().enumerate() {
            let pattern = Self::pattern(i, guard.end - guard.start);
            layout.backing.write(guard.start, &pattern).unwrap();
        }
        layout
    }

    /// The marker of guard run `index`: seeded bytes, so neither zeros nor
    /// a copy of another run would pass for it.
    fn pattern(index: usize, len: u64) -> Vec<u8> {
        random_bytes(len as usize, 0x6A4D_0000 + index as u64)
    }

    /// Guard runs whose bytes changed, with the first changed offset.
    fn damaged_guards(&self) -> Vec<(usize, u64)> {
        let mut damaged = Vec::new();
        for (i, guard) in self.guards.iter().enumerate() {
            let want = Self::pattern(i, guard.end - guard.start);
            let mut got = vec![0u8; want.len()];
            self.backing.read(guard.start, &mut got).unwrap();
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                damaged.push((i, guard.start + at as u64));
            }
        }
        damaged
    }
}

// ---- panics and memory ----

/// Panics seen by the hook: thread name and message.
type PanicLog = Arc<Mutex<Vec<(String, String)>>>;

fn watch_panics() -> PanicLog {
    let log: PanicLog = Arc::default();
    let seen = log.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        lock(&seen).push((thread, info.to_string()));
        previous(info);
    }));
    log
}

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn heap_in_use() -> u64 {
    let stats = GLOBAL.stats();
    (stats.bytes_allocated as u64).saturating_sub(stats.bytes_deallocated as u64)
}

/// Peaks of heap bytes in use and of VmRSS, sampled while the run goes.
#[derive(Default)]
struct MemoryPeaks {
    heap: AtomicU64,
    rss: AtomicU64,
}

impl MemoryPeaks {
    fn sample(&self) {
        self.heap.fetch_max(heap_in_use(), Ordering::Relaxed);
        self.rss.fetch_max(vm_rss_bytes(), Ordering::Relaxed);
    }
}

// ---- counters ----

#[derive(Default)]
struct Figures {
    scribbles: AtomicU64,
    scribbled_bytes: AtomicU64,
    hostile_packets: AtomicU64,
    hostile_replies: AtomicU64,
    hostile_sessions: AtomicU64,
    hostile_vmbfs_requests: AtomicU64,
    hostile_vmbfs_timeouts: AtomicU64,
    hostile_guest_panics: AtomicU64,
    good_storvsp_requests: AtomicU64,
    good_storvsp_bytes: AtomicU64,
    good_vmbfs_requests: AtomicU64,
    good_vmbfs_bytes: AtomicU64,
    /// How the hostile storvsp channel's device tasks ended, by kind.
    task_endings: Mutex<HashMap<String, u64>>,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn ending_kind(result: &Result<(), ChannelError>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(error) => {
            let text = format!("{error:?}");
            text.split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("?")
                .to_string()
        }
    }
}

// ---- the scribbler ----

/// The ring a hostile guest holds open right now; the scribbler touches it
/// only under this lock, and the guest clears it (under the lock) before
/// the ring is released, so freed pages are never scribbled.
type RingTarget = Arc<Mutex<Option<Vec<u64>>>>;

/// Scribbles between two pauses of the scribbler.
const SCRIBBLES_PER_BURST: usize = 4;

/// Rewrites random bytes of a hostile guest's ring and buffer pages.
struct Scribbler {
    memory: GuestMemory,
    ring: RingTarget,
    pool: std::ops::Range<u64>,
    rng: SmallRng,
    figures: Arc<Figures>,
}

impl Scribbler {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            {
                let target = self.ring.clone();
                let ring = lock(&target);
                for _ in 0..SCRIBBLES_PER_BURST {
                    self.scribble(ring.as_deref());
                }
            }
            // Paced so requests get through between the bursts: a ring
            // broken at once every time would test the reopen path only.
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn scribble(&mut self, ring: Option<&[u64]>) {
        let pick = self.rng.random_range(0..100);
        let (gpa, len) = match ring {
            Some(ring) if pick < 10 => return self.plausible_index(ring),
            Some(ring) if pick < 25 => self.control_field(ring),
            Some(ring) if pick < 70 => self.ring_data(ring),
            _ => self.pool_bytes(),
        };
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes[..len]);
        if self.memory.write(gpa, &bytes[..len]).is_ok() {
            self.count(len);
        }
    }

    fn count(&self, bytes: usize) {
        add(&self.figures.scribbles, 1);
        add(&self.figures.scribbled_bytes, bytes as u64);
    }

    fn control_page(&mut self, ring: &[u64]) -> u64 {
        let half = self.rng.random_range(0..2u64);
        ring[(half * (1 + u64::from(RING_PAGES))) as usize] * PAGE
    }

    /// A control-page field of either half: write or read index, interrupt
    /// mask, pending-send size, feature bits, or any of the first 64 bytes.
    fn control_field(&mut self, ring: &[u64]) -> (u64, usize) {
        let control = self.control_page(ring);
        let field = [0u64, 4, 8, 12, 16, self.rng.random_range(0..60)][self.rng.random_range(0..6)];
        (control + field, 4)
    }

    /// A write or read index moved to a plausible place (8-aligned, inside
    /// the ring), so the host reads stale or half-written packets as well
    /// as rejecting absurd indices.
    fn plausible_index(&mut self, ring: &[u64]) {
        let control = self.control_page(ring);
        let field = 4 * self.rng.random_range(0..2u64);
        let index = self.rng.random_range(0..u64::from(RING_PAGES) * PAGE / 8) * 8;
        if self
            .memory
            .store_u32(control + field, index as u32, Ordering::Release)
            .is_ok()
        {
            self.count(4);
        }
    }

    /// Bytes of either half's data, most often just behind the guest's
    /// write index: the packets the guest just sent (descriptor, ranges,
    /// SRB or vmbfs message), which the host may not have read yet.
    fn ring_data(&mut self, ring: &[u64]) -> (u64, usize) {
        let data_len = u64::from(RING_PAGES) * PAGE;
        let half = if self.rng.random_bool(0.75) { 0 } else { 1 };
        let first = (half * (1 + u64::from(RING_PAGES)) + 1) as usize;
        let offset = if half == 0 && self.rng.random_bool(0.6) {
            let write = self.memory.load_u32(ring[0] * PAGE, Ordering::Acquire);
            let write = u64::from(write.unwrap_or(0)) % data_len;
            (write + data_len - self.rng.random_range(1..=256)) % data_len
        } else {
            self.rng.random_range(0..data_len)
        };
        let page = ring[first + (offset / PAGE) as usize];
        let len = self
            .rng
            .random_range(1..=8)
            .min((PAGE - offset % PAGE) as usize);
        (page * PAGE + offset % PAGE, len)
    }

    /// Bytes of the guest's data buffers.
    fn pool_bytes(&mut self) -> (u64, usize) {
        let page = self.rng.random_range(self.pool.clone());
        let offset = self.rng.random_range(0..PAGE - 16);
        (page * PAGE + offset, self.rng.random_range(1..=16))
    }
}

// ---- the hostile storvsp guest ----

struct HostileStorvsp {
    vm: BusVm,
    relid: u32,
    ring: RingTarget,
    pool: std::ops::Range<u64>,
    rng: SmallRng,
    figures: Arc<Figures>,
    next_tid: u64,
}

/// Packets one session sends before the guest closes and reopens anyway.
const PACKETS_PER_SESSION: u64 = 4000;

impl HostileStorvsp {
    fn run(mut self, stop: &AtomicBool) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut endpoint, ended)) = self.vm.open(self.relid) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            add(&self.figures.hostile_sessions, 1);
            *lock(&self.ring) = self.vm.ring_pages(self.relid);
            self.session(&mut endpoint, &ended, stop);
            *lock(&self.ring) = None;
            drop(endpoint);
            self.vm
                .close(self.relid)
                .map_err(|e| format!("closing the hostile storvsp channel: {e}"))?;
            block_on(ended.wait());
            let result = self.vm.take_task_result(self.relid).unwrap_or(Ok(()));
            if matches!(result, Err(ChannelError::Panicked { .. })) {
                return Err(format!("hostile storvsp: device task panicked: {result:?}"));
            }
            *lock(&self.figures.task_endings)
                .entry(ending_kind(&result))
                .or_default() += 1;
        }
        Ok(())
    }

    fn tid(&mut self) -> u64 {
        self.next_tid += 1;
        self.next_tid
    }

    fn session(&mut self, endpoint: &mut Endpoint, ended: &StopSignal, stop: &AtomicBool) {
        self.init(endpoint, ended);
        for sent in 0..PACKETS_PER_SESSION {
            if ended.is_stopped() || stop.load(Ordering::Relaxed) {
                return;
            }
            if !self.send_one(endpoint) || !self.drain(endpoint) {
                return;
            }
            if sent % 16 == 0 {
                std::thread::yield_now();
            }
        }
    }

    /// The init handshake as far as the host lets it go.
    fn init(&mut self, endpoint: &mut Endpoint, ended: &StopSignal) {
        let mut init = InitDriver::new(GuestProfile::Linux);
        while let Some(request) = init.request() {
            let tid = self.tid();
            if !matches!(
                endpoint.try_write(&OutgoingPacket::request(tid, &request)),
                Ok(true)
            ) {
                return;
            }
            add(&self.figures.hostile_packets, 1);
            let Some(reply) = wait_reply(endpoint, ended) else {
                return;
            };
            add(&self.figures.hostile_replies, 1);
            if init.on_completion(&reply).is_err() || init.step() == InitStep::Done {
                return;
            }
        }
    }

    /// Sends one request; `false` once the ring refuses the guest.
    fn send_one(&mut self, endpoint: &mut Endpoint) -> bool {
        let tid = self.tid();
        let pick = self.rng.random_range(0..100);
        let written = if pick < 70 {
            let (srb, range) = self.read_srb();
            let ranges = [range];
            endpoint.try_write(&OutgoingPacket::gpa_direct(tid, &ranges, &srb))
        } else if pick < 85 {
            let opcode = [0x00u8, 0x12, 0x25, 0xA0, 0x1A, 0x9E][self.rng.random_range(0..6)];
            let params = SrbParams {
                path: 0,
                target: 0,
                lun: self.rng.random_range(0..2),
                cdb: vec![opcode, 0, 0, 0, 0, 0],
                data_in: 1,
                data_transfer_length: 0,
            };
            endpoint.try_write(&OutgoingPacket::request(tid, &srb_packet(&params, 0x40)))
        } else {
            let mut garbage = vec![0u8; 8 * self.rng.random_range(1..=8)];
            self.rng.fill(&mut garbage[..]);
            if self.rng.random_bool(0.5) {
                garbage[..4].copy_from_slice(&self.rng.random_range(0..16u32).to_le_bytes());
            }
            endpoint.try_write(&OutgoingPacket::request(tid, &garbage))
        };
        match written {
            Ok(true) => {
                add(&self.figures.hostile_packets, 1);
                true
            }
            // Full: the host is behind (or was told the ring is full).
            Ok(false) => true,
            Err(_) => false,
        }
    }

    /// A READ SRB with a buffer of random hostile pages.
    fn read_srb(&mut self) -> (Vec<u8>, GpaRange) {
        let blocks = self.rng.random_range(1..=32u32);
        let lba = if self.rng.random_bool(0.9) {
            self.rng.random_range(0..2048u32)
        } else {
            u32::MAX - self.rng.random_range(0..64)
        };
        let len = blocks * 512;
        let offset = self.rng.random_range(0..2048u32) & !1;
        let pages = vmbdev_ring::gpa::pages_spanned(offset, len);
        let gpns = (0..pages)
            .map(|_| self.rng.random_range(self.pool.clone()))
            .collect();
        let range = GpaRange::new(len, offset, gpns).expect("a valid range");
        let mut cdb = vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        let params = SrbParams {
            path: 0,
            target: 0,
            lun: 0,
            cdb,
            data_in: 1,
            data_transfer_length: len,
        };
        (srb_packet(&params, 0x40), range)
    }

    /// Takes whatever the host sent; `false` once the ring is unreadable.
    fn drain(&mut self, endpoint: &mut Endpoint) -> bool {
        loop {
            match endpoint.try_read() {
                Ok(Some(_)) => add(&self.figures.hostile_replies, 1),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The next completion, polled for a short while.
fn wait_reply(endpoint: &mut Endpoint, ended: &StopSignal) -> Option<Vec<u8>> {
    for _ in 0..2000 {
        match endpoint.try_read() {
            Ok(Some(packet)) => return Some(packet.payload),
            Ok(None) if !ended.is_stopped() => std::thread::sleep(Duration::from_micros(50)),
            _ => return None,
        }
    }
    None
}

// ---- the hostile vmbfs guest ----

/// The vmbfs client's bus for the hostile guest: channels through the
/// control plane, RDMA buffers from the hostile pool, and the open ring
/// published to the scribbler.
struct HostileVmbfsBus {
    inner: BusVmbfs,
    vm: BusVm,
    relid: u32,
    pages: PageAllocator,
    ring: RingTarget,
}

struct HostileVmbfsChannel {
    inner: Option<BusVmbfsChannel>,
    ring: RingTarget,
}

impl Drop for HostileVmbfsChannel {
    fn drop(&mut self) {
        // Before the inner channel (dropped after this) frees the ring.
        *lock(&self.ring) = None;
    }
}

impl VmbfsBus for HostileVmbfsBus {
    type Channel = HostileVmbfsChannel;

    fn open_channel(&mut self) -> Result<HostileVmbfsChannel, BusFailure> {
        let inner = self.inner.open_channel()?;
        *lock(&self.ring) = self.vm.ring_pages(self.relid);
        Ok(HostileVmbfsChannel {
            inner: Some(inner),
            ring: self.ring.clone(),
        })
    }

    fn memory(&self) -> &GuestMemory {
        self.inner.memory()
    }

    fn pages(&self) -> &PageAllocator {
        &self.pages
    }
}

impl HostileVmbfsChannel {
    fn inner(&mut self) -> &mut BusVmbfsChannel {
        self.inner
            .as_mut()
            .expect("the channel is open until closed")
    }
}

impl VmbfsChannel for HostileVmbfsChannel {
    fn endpoint(&mut self) -> &mut Endpoint {
        self.inner().endpoint()
    }

    fn host_stopped(&self) -> Arc<StopSignal> {
        self.inner
            .as_ref()
            .map_or_else(|| Arc::new(StopSignal::raised()), |c| c.host_stopped())
    }

    async fn wait_host_end(&mut self) -> Result<(), BusFailure> {
        self.inner().wait_host_end().await
    }

    async fn suspend_host(&mut self) -> Result<(), BusFailure> {
        self.inner().suspend_host().await
    }

    async fn close(mut self) -> Result<(), BusFailure> {
        *lock(&self.ring) = None;
        match self.inner.take() {
            Some(inner) => inner.close().await,
            None => Ok(()),
        }
    }
}

/// Paths the hostile vmbfs guest asks for: real ones and nonsense.
const HOSTILE_PATHS: [&str; 6] = [
    "big.bin",
    "dir/small.txt",
    "dir",
    "no/such/file",
    "dir/../big.bin",
    "\u{7f}\u{1}weird",
];

fn hostile_vmbfs(
    bus: HostileVmbfsBus,
    mut rng: SmallRng,
    figures: &Figures,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut client = VmbfsClient::new(bus, true);
    while !stop.load(Ordering::Relaxed) {
        let session = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let work = hostile_vmbfs_session(&mut client, &mut rng, figures);
            block_on(futures_lite::future::or(work, async {
                async_io::Timer::after(Duration::from_millis(100)).await;
                add(&figures.hostile_vmbfs_timeouts, 1);
            }));
        }));
        if session.is_err() {
            add(&figures.hostile_guest_panics, 1);
        }
    }
    let closed = block_on(futures_lite::future::or(
        async { client.close().await.map_err(|e| e.to_string()) },
        async {
            async_io::Timer::after(Duration::from_secs(5)).await;
            Err("closing the hostile vmbfs channel hung".to_string())
        },
    ));
    // The host may well have given up on the channel: only a hang fails.
    match closed {
        Err(e) if e.contains("hung") => Err(e),
        _ => Ok(()),
    }
}

async fn hostile_vmbfs_session(
    client: &mut VmbfsClient<HostileVmbfsBus>,
    rng: &mut SmallRng,
    figures: &Figures,
) {
    if client.open_volume().await.is_err() {
        return;
    }
    for _ in 0..16 {
        let path = HOSTILE_PATHS[rng.random_range(0..HOSTILE_PATHS.len())];
        add(&figures.hostile_vmbfs_requests, 1);
        let _ = match rng.random_range(0..3) {
            0 => client.file_info(path).await.map(drop),
            1 => client.read_all(path).await.map(drop),
            _ => {
                let offset = rng.random_range(0..300_000);
                let len = rng.random_range(1..100_000);
                client.read(path, offset, len).await.map(drop)
            }
        };
    }
}

// ---- the good guests ----

const GOOD_DISK: usize = 8 << 20;

fn good_storvsp(
    driver: Storvsc,
    bytes: Arc<Vec<u8>>,
    mut rng: SmallRng,
    figures: Arc<Figures>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let disk = driver.disk(0).ok_or("the good disk was not found")?;
    let blocks = (bytes.len() / 512) as u64;
    while !stop.load(Ordering::Relaxed) {
        let requests: Vec<(u64, u32)> = (0..16)
            .map(|_| {
                let count = rng.random_range(1..=64u32);
                (rng.random_range(0..blocks - u64::from(count)), count)
            })
            .collect();
        let chunks = block_on(disk.read_many(&requests, 16))
            .map_err(|e| format!("good storvsp read failed: {e}"))?;
        for (&(lba, count), chunk) in requests.iter().zip(&chunks) {
            let at = lba as usize * 512;
            if chunk[..] != bytes[at..at + count as usize * 512] {
                return Err(format!(
                    "good storvsp: wrong bytes for {count} blocks at {lba}"
                ));
            }
            add(&figures.good_storvsp_bytes, chunk.len() as u64);
        }
        add(&figures.good_storvsp_requests, requests.len() as u64);
    }
    Ok(())
}

fn good_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("big.bin", random_bytes((1 << 20) + 17, 31)),
        ("dir/small.txt", random_bytes(4095, 32)),
        ("dir/chunks.bin", random_bytes(3 * 12276 + 5, 33)),
        ("empty", Vec::new()),
    ]
}

fn good_vmbfs(
    mut client: BusVmbfsClient,
    files: Vec<(&'static str, Vec<u8>)>,
    mut rng: SmallRng,
    figures: Arc<Figures>,
    stop: Arc<AtomicBool>,
) -> Result<BusVmbfsClient, String> {
    block_on(client.open_volume()).map_err(|e| format!("good vmbfs open: {e}"))?;
    while !stop.load(Ordering::Relaxed) {
        let (path, data) = &files[rng.random_range(0..files.len())];
        let offset = rng.random_range(0..=data.len());
        let len = rng.random_range(1..=65536);
        let got = block_on(client.read(path, offset as u64, len))
            .map_err(|e| format!("good vmbfs read of {path}: {e}"))?;
        let end = (offset + len).min(data.len());
        if got[..] != data[offset..end] {
            return Err(format!(
                "good vmbfs: wrong bytes of {path} at {offset}+{len}"
            ));
        }
        add(&figures.good_vmbfs_requests, 1);
        add(&figures.good_vmbfs_bytes, got.len() as u64);
    }
    Ok(client)
}

// ---- the run ----

fn storvsp_device(bytes: Vec<u8>, sub_channels: u16, instance: u128) -> Arc<StorvspDevice> {
    let controller = Arc::new(Controller::new());
    let disk: Arc<dyn BlockDevice> = Arc::new(MemoryDisk::new(bytes));
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(disk)),
    );
    let config = StorvspConfig {
        max_sub_channels: sub_channels,
        multi_channel: sub_channels > 0,
        ..StorvspConfig::default()
    };
    Arc::new(
        StorvspDevice::new(config, controller)
            .unwrap()
            .with_instance_id(Guid::from_u128(instance)),
    )
}

fn vmbfs_device(files: &[(&'static str, Vec<u8>)], instance: Option<u128>) -> Arc<VmbfsDevice> {
    let mut tree = MemoryTree::builder();
    for (path, data) in files {
        tree.add_file(path, data.clone()).unwrap();
    }
    let config = VmbfsConfig {
        tree: Arc::new(tree.build()),
        rdma_enabled: true,
    };
    Arc::new(match instance {
        Some(id) => VmbfsDevice::with_instance(config, Guid::from_u128(id), "vmbfs-hostile"),
        None => VmbfsDevice::new(config),
    })
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap()
}

/// Waits for `thread`, failing if it is still running after a minute (a
/// stuck good guest means the host stopped answering it).
fn join_within<T>(what: &str, thread: JoinHandle<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "{what} is stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap_or_else(|_| panic!("{what} panicked"))
}

/// How `relid`'s device task ended, once it has published it (shortly
/// after its channel closed).
fn wait_task_result(vm: &BusVm, relid: u32) -> Result<(), ChannelError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(result) = vm.take_task_result(relid) {
            return result;
        }
        assert!(Instant::now() < deadline, "relid {relid} never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn hostile_channels_scribbling_leave_the_host_and_the_good_channels_intact() {
    let secs = env_u64("VMBDEV_SOAK_SECS", 3);
    let seed = env_u64("VMBDEV_SOAK_SEED", DEFAULT_SEED);
    eprintln!("scribbler soak: {secs} s, seed {seed:#x}");
    let panics = watch_panics();
    let layout = Layout::new();
    let vm = BusVm::with_memory(
        BusVmConfig {
            executor_threads: 2,
            ring_pages: Some(RING_PAGES),
            ..BusVmConfig::default()
        },
        layout.guest.clone(),
        GOOD_BASE..GOOD_BASE + GOOD_PAGES,
    )
    .unwrap();

    let disk_bytes = Arc::new(random_bytes(GOOD_DISK, seed ^ 1));
    let files = good_files();
    let good_storvsp_device = storvsp_device(disk_bytes.to_vec(), 2, 0x5C51_0001);
    let hostile_storvsp_device = storvsp_device(random_bytes(1 << 20, seed ^ 2), 0, 0x5C51_0002);
    let good_vmbfs_device = vmbfs_device(&files, None);
    let hostile_vmbfs_device = vmbfs_device(&files, Some(0x5C51_0003));
    let storvsp_relid = vm.add_device(good_storvsp_device.clone()).unwrap();
    let vmbfs_relid = vm.add_device(good_vmbfs_device.clone()).unwrap();
    let hostile_storvsp_relid = vm.add_device(hostile_storvsp_device.clone()).unwrap();
    let hostile_vmbfs_relid = vm.add_device(hostile_vmbfs_device.clone()).unwrap();
    vm.connect().unwrap();

    let (primary, _) = vm.open(storvsp_relid).unwrap();
    let opener = vm.storvsc_opener(storvsp_relid).unwrap();
    let driver = block_on(Storvsc::connect(
        primary,
        vm.memory().clone(),
        vm.pages().clone(),
        opener.as_ref(),
        &DriverConfig {
            cpus: 3,
            ..DriverConfig::default()
        },
    ))
    .unwrap();
    assert_eq!(driver.channel_count(), 3, "primary and two sub-channels");
    let good_relids = vm.open_relids();

    let figures = Arc::new(Figures::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(MemoryPeaks::default());
    let heap_before = heap_in_use();
    let rss_before = vm_rss_bytes();
    peaks.sample();
    let started = Instant::now();

    let mut scribblers = Vec::new();
    let mut hostile = Vec::new();
    for (k, relid) in [hostile_storvsp_relid, hostile_vmbfs_relid]
        .into_iter()
        .enumerate()
    {
        let ring: RingTarget = Arc::default();
        let pool =
            HOSTILE_BASE + k as u64 * HOSTILE_POOL..HOSTILE_BASE + (k as u64 + 1) * HOSTILE_POOL;
        let scribbler = Scribbler {
            memory: vm.memory().clone(),
            ring: ring.clone(),
            pool: pool.clone(),
            rng: SmallRng::seed_from_u64(seed ^ (0x100 + k as u64)),
            figures: figures.clone(),
        };
        let stop_scribbling = stop.clone();
        scribblers.push(spawn(&format!("hostile-scribbler-{k}"), move || {
            scribbler.run(&stop_scribbling)
        }));
        let (figures, stop, vm) = (figures.clone(), stop.clone(), vm.clone());
        let rng = SmallRng::seed_from_u64(seed ^ (0x200 + k as u64));
        hostile.push(if k == 0 {
            spawn("hostile-storvsp", move || {
                HostileStorvsp {
                    vm,
                    relid,
                    ring,
                    pool,
                    rng,
                    figures,
                    next_tid: 0,
                }
                .run(&stop)
            })
        } else {
            spawn("hostile-vmbfs", move || {
                let bus = HostileVmbfsBus {
                    inner: vm.vmbfs_bus(relid),
                    vm: vm.clone(),
                    relid,
                    pages: PageAllocator::new(pool, false),
                    ring,
                };
                hostile_vmbfs(bus, rng, &figures, &stop)
            })
        });
    }
    let storvsp_guest = {
        let (bytes, figures, stop) = (disk_bytes.clone(), figures.clone(), stop.clone());
        let rng = SmallRng::seed_from_u64(seed ^ 0x300);
        spawn("good-storvsp", move || {
            good_storvsp(driver, bytes, rng, figures, stop)
        })
    };
    let vmbfs_guest = {
        let client = BusVmbfsClient::new(vm.vmbfs_bus(vmbfs_relid), true);
        let (files, figures, stop) = (files.clone(), figures.clone(), stop.clone());
        let rng = SmallRng::seed_from_u64(seed ^ 0x301);
        spawn("good-vmbfs", move || {
            good_vmbfs(client, files, rng, figures, stop)
        })
    };

    while started.elapsed() < Duration::from_secs(secs)
        && !storvsp_guest.is_finished()
        && !vmbfs_guest.is_finished()
    {
        peaks.sample();
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for scribbler in scribblers {
        join_within("a scribbler", scribbler);
    }
    let hostile_results: Vec<_> = hostile
        .into_iter()
        .map(|h| join_within("a hostile guest", h))
        .collect();
    let storvsp_result = join_within("the good storvsp guest", storvsp_guest);
    let vmbfs_result = join_within("the good vmbfs guest", vmbfs_guest);
    peaks.sample();

    let f = &*figures;
    let heap_peak = get(&peaks.heap);
    let rss_peak = get(&peaks.rss);
    eprintln!(
        "scribbler soak: {:.1} s; {} scribbles, {} bytes scribbled; hostile: {} sessions, \
         {} storvsp packets sent, {} replies, {} vmbfs requests ({} sessions timed out), \
         {} guest panics; \
         hostile storvsp task endings {:?}",
        elapsed.as_secs_f64(),
        get(&f.scribbles),
        get(&f.scribbled_bytes),
        get(&f.hostile_sessions),
        get(&f.hostile_packets),
        get(&f.hostile_replies),
        get(&f.hostile_vmbfs_requests),
        get(&f.hostile_vmbfs_timeouts),
        get(&f.hostile_guest_panics),
        lock(&f.task_endings),
    );
    eprintln!(
        "scribbler soak: good storvsp {} requests, {} bytes; good vmbfs {} requests, {} bytes; \
         violations: hostile storvsp {}, hostile vmbfs {:?}; heap in use {} -> peak {} bytes, \
         VmRSS {} -> peak {} bytes",
        get(&f.good_storvsp_requests),
        get(&f.good_storvsp_bytes),
        get(&f.good_vmbfs_requests),
        get(&f.good_vmbfs_bytes),
        hostile_storvsp_device.stats().violations(),
        hostile_vmbfs_device.stats().protocol,
        heap_before,
        heap_peak,
        rss_before,
        rss_peak,
    );

    for result in hostile_results {
        result.unwrap();
    }
    storvsp_result.unwrap();
    let mut vmbfs_client = vmbfs_result.unwrap();
    block_on(vmbfs_client.close()).expect("the good vmbfs channel closes cleanly");
    drop(vmbfs_client);
    for relid in good_relids {
        vm.close(relid).unwrap();
        let ended = wait_task_result(&vm, relid);
        assert!(
            matches!(ended, Ok(())),
            "good storvsp channel {relid} ended {ended:?}"
        );
    }
    assert_eq!(good_storvsp_device.stats().violations(), 0);
    vm.unload().unwrap();

    let host_panics: Vec<_> = lock(&panics)
        .iter()
        .filter(|(thread, _)| !thread.starts_with("hostile-"))
        .cloned()
        .collect();
    assert!(host_panics.is_empty(), "host panics: {host_panics:?}");
    let damaged = layout.damaged_guards();
    assert!(
        damaged.is_empty(),
        "backing outside the guest was written: {damaged:?}"
    );
    assert!(get(&f.good_storvsp_requests) > 0 && get(&f.good_vmbfs_requests) > 0);
    assert!(get(&f.scribbles) > 0 && get(&f.hostile_packets) > 0);
    assert!(
        heap_peak.saturating_sub(heap_before) < HEAP_GROWTH_BOUND,
        "heap in use grew from {heap_before} to {heap_peak} bytes"
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < RSS_GROWTH_BOUND,
        "VmRSS grew from {rss_before} to {rss_peak} bytes"
    );
}
