//! Channel plumbing: the driver's channels, each a ring writer used from
//! the caller's task and a reader of the host→guest ring that wakes the
//! waiting request by transaction id — a completion thread of its own (the
//! guest's interrupt handler), or, with [`Completions::Polled`], whichever
//! waiting request holds the reader at the time, handing it to the next
//! waiting one when it lets go; guest data buffers from
//! the [`PageAllocator`]; and SRBs sent over the next channel in turn.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use async_lock::Mutex as AsyncMutex;
use vmbdev_protocol::vstor::{self, DataDirection, NtStatus, Operation, SrbStatus};
use vmbdev_ring::{
    BorrowedKind, Endpoint, GpaRange, GuestMemory, OutgoingPacket, PageAllocator, RingError,
    RingReader, RingWriter, gpa::pages_spanned,
};

use super::slots::{Claim, Reply, Waiters};
use super::{Completions, DriverError, HostEvents};
use crate::storvsc::{GuestProfile, LunAddress, SrbCompletion, write_srb_packet};
use vmbdev_ring::StopSignal;

struct GuestChannel {
    writer: AsyncMutex<RingWriter>,
    waiters: Arc<Waiters>,
    /// The host→guest ring, read by the waiting requests themselves
    /// ([`Completions::Polled`]); `None` when a thread reads it. Only ever
    /// taken with `try_lock`: a request that finds it taken waits in the
    /// slot table (see [`ReaderWait`]), since a wait in the mutex's own
    /// queue would allocate a listener.
    reader: Option<Mutex<RingReader>>,
}

/// The state every handle of a connected driver shares: its channels, the
/// guest memory and pages its buffers come from, and the negotiated shape
/// of its SRBs.
pub(super) struct Inner {
    channels: Vec<GuestChannel>,
    pub(super) memory: GuestMemory,
    pages: PageAllocator,
    page_cache: PageCache,
    next_channel: AtomicUsize,
    pub(super) srb_size: usize,
    pub(super) profile: GuestProfile,
    buffer_offset: u32,
    completions: Completions,
    pub(super) max_transfer: u32,
    stop: Arc<StopSignal>,
    threads: Mutex<Vec<JoinHandle<Result<(), RingError>>>>,
    pub(super) events: Arc<HostEvents>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.stop();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
        lock_cache(&self.page_cache).release_all(&self.pages);
    }
}

/// Guest pages kept for reuse between requests: the page allocator
/// allocates on the heap and walks its free set page by page, which for a
/// 1 MiB buffer costs a good part of what the device's read of it does.
#[derive(Default)]
struct CachedPages {
    /// Single pages (most requests of a running guest are one page).
    singles: Vec<u64>,
    /// Whole multi-page buffers, found again by their byte count (a
    /// workload repeats its sizes); oldest first.
    runs: VecDeque<GpaRange>,
}

type PageCache = Mutex<CachedPages>;

/// Single pages [`CachedPages`] keeps at most.
const CACHED_PAGES: usize = 256;
/// Multi-page buffers [`CachedPages`] keeps at most (more than a queue
/// depth of them in flight is rare).
const CACHED_RUNS: usize = 64;

fn lock_cache(cache: &PageCache) -> std::sync::MutexGuard<'_, CachedPages> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

impl CachedPages {
    /// Hands every cached page back to `pages`.
    fn release_all(&mut self, pages: &PageAllocator) {
        pages.free(&self.singles);
        self.singles.clear();
        for run in self.runs.drain(..) {
            pages.free(run.gpns());
        }
    }
}

/// A guest data buffer: guest pages handed back on drop. It borrows the
/// driver's allocator and cache rather than holding clones of them, which
/// would cost two reference-count updates each per request.
pub(super) struct Buffer<'a> {
    /// Always `Some` until dropped.
    range: Option<GpaRange>,
    pages: &'a PageAllocator,
    cache: &'a Mutex<CachedPages>,
}

impl Buffer<'_> {
    /// The guest pages of the buffer.
    pub(super) fn range(&self) -> &GpaRange {
        self.range
            .as_ref()
            .expect("a buffer's range is taken only on drop")
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        let Some(range) = self.range.take() else {
            return;
        };
        let mut cache = lock_cache(self.cache);
        if let [page] = range.gpns() {
            if cache.singles.len() < CACHED_PAGES {
                cache.singles.push(*page);
                return;
            }
        } else {
            if cache.runs.len() == CACHED_RUNS {
                if let Some(oldest) = cache.runs.pop_front() {
                    self.pages.free(oldest.gpns());
                }
            }
            cache.runs.push_back(range);
            return;
        }
        drop(cache);
        self.pages.free(range.gpns());
    }
}

impl Inner {
    /// A driver with no channel yet, sending `profile`'s init packets.
    pub(super) fn new(
        memory: GuestMemory,
        pages: PageAllocator,
        profile: GuestProfile,
        buffer_offset: u32,
        completions: Completions,
    ) -> Self {
        Self {
            channels: Vec::new(),
            memory,
            pages,
            page_cache: Mutex::new(CachedPages {
                singles: Vec::with_capacity(CACHED_PAGES),
                runs: VecDeque::with_capacity(CACHED_RUNS),
            }),
            next_channel: AtomicUsize::new(0),
            srb_size: profile.packet_size(),
            profile,
            buffer_offset,
            completions,
            max_transfer: 0,
            stop: Arc::new(StopSignal::new()),
            threads: Mutex::new(Vec::new()),
            events: Arc::new(HostEvents::default()),
        }
    }

    /// Number of open channels.
    pub(super) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Adds `endpoint` as the next channel and, unless requests read their
    /// own completions, starts its completion thread.
    pub(super) fn add_channel(&mut self, endpoint: Endpoint) -> Result<(), DriverError> {
        let index = self.channels.len();
        let (mut reader, writer) = endpoint.split();
        let waiters = Arc::new(Waiters::default());
        if let Completions::SpinningThread(iterations) = self.completions {
            reader.set_spin(iterations);
        }
        if self.completions == Completions::Polled {
            self.channels.push(GuestChannel {
                writer: AsyncMutex::new(writer),
                waiters,
                reader: Some(Mutex::new(reader)),
            });
            return Ok(());
        }
        let thread = completion_thread(
            index,
            reader,
            waiters.clone(),
            self.events.clone(),
            self.stop.clone(),
        )
        .map_err(|e| DriverError::SubChannels(format!("cannot start channel thread: {e}")))?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
        self.channels.push(GuestChannel {
            writer: AsyncMutex::new(writer),
            waiters,
            reader: None,
        });
        Ok(())
    }

    /// A data buffer of `len` bytes starting at the configured page
    /// offset.
    pub(super) fn buffer(&self, len: u32) -> Result<Buffer<'_>, DriverError> {
        let count = pages_spanned(self.buffer_offset, len);
        if count == 1 {
            return self.one_page_buffer(len);
        }
        if let Some(range) = self.cached_run(len) {
            return Ok(self.owned(range));
        }
        let gpns = match self.pages.alloc(count) {
            Ok(gpns) => gpns,
            Err(_) => {
                // Pages may sit in the cache: give them back and try again.
                lock_cache(&self.page_cache).release_all(&self.pages);
                self.pages.alloc(count)?
            }
        };
        match GpaRange::new(len, self.buffer_offset, gpns.clone()) {
            Ok(range) => Ok(self.owned(range)),
            Err(e) => {
                self.pages.free(&gpns);
                Err(e.into())
            }
        }
    }

    /// A cached multi-page buffer of exactly `len` bytes, newest first.
    fn cached_run(&self, len: u32) -> Option<GpaRange> {
        let mut cache = lock_cache(&self.page_cache);
        let at = cache
            .runs
            .iter()
            .rposition(|r| r.byte_count() == len && r.byte_offset() == self.buffer_offset)?;
        cache.runs.remove(at)
    }

    /// A one-page buffer, from the cache when it has a page.
    fn one_page_buffer(&self, len: u32) -> Result<Buffer<'_>, DriverError> {
        let cached = lock_cache(&self.page_cache).singles.pop();
        let page = match cached {
            Some(page) => page,
            None => self.pages.alloc(1)?[0],
        };
        match GpaRange::from_pages(len, self.buffer_offset, &[page]) {
            Ok(range) => Ok(self.owned(range)),
            Err(e) => {
                self.pages.free(&[page]);
                Err(e.into())
            }
        }
    }

    fn owned(&self, range: GpaRange) -> Buffer<'_> {
        Buffer {
            range: Some(range),
            pages: &self.pages,
            cache: &self.page_cache,
        }
    }

    /// Sends `payload` on channel `index` and waits for its completion.
    pub(super) async fn request(
        &self,
        index: usize,
        payload: &[u8],
        range: Option<&GpaRange>,
    ) -> Result<Reply, DriverError> {
        let channel = &self.channels[index % self.channels.len()];
        let claim = channel.waiters.claim().await;
        let tid = claim.tid();
        // The packet borrows the caller's range: no copy of its page list
        // (a heap one for a large buffer) per request.
        let packet = match range {
            Some(range) => OutgoingPacket::gpa_direct(tid, std::slice::from_ref(range), payload),
            None => OutgoingPacket::request(tid, payload),
        };
        let written = channel.writer.lock().await.write(&packet).await;
        if let Err(source) = written {
            return Err(DriverError::Ring {
                channel: index,
                source,
            });
        }
        let reply = match &channel.reader {
            None => claim.reply().await,
            Some(reader) => {
                futures_lite::future::or(
                    claim.reply(),
                    read_completions(index, reader, &claim, &channel.waiters, &self.events),
                )
                .await
            }
        };
        reply.ok_or(DriverError::ChannelClosed(index))
    }

    fn pick_channel(&self) -> usize {
        // One channel needs no turn-taking (and no atomic add per request).
        if self.channels.len() <= 1 {
            return 0;
        }
        self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len()
    }

    /// Runs one SRB; returns its completion and the buffer.
    pub(super) async fn srb(
        &self,
        address: LunAddress,
        cdb: &[u8],
        direction: DataDirection,
        buffer: Option<&Buffer<'_>>,
    ) -> Result<SrbCompletion, DriverError> {
        let length = buffer.map(|b| b.range().byte_count()).unwrap_or(0);
        // The firmware marks even zero-length commands as data-in.
        let data_in = if self.profile == GuestProfile::Uefi && buffer.is_none() {
            DataDirection::READ
        } else {
            direction
        };
        // On the stack: an SRB packet is at most 0x40 bytes.
        let mut packet = [0u8; vstor::PACKET_SIZE_WIN8];
        let payload = &mut packet[..self.srb_size.min(vstor::PACKET_SIZE_WIN8)];
        write_srb_packet(address, cdb, data_in.0, length, payload);
        let payload = &*payload;
        let reply = self
            .request(self.pick_channel(), payload, buffer.map(Buffer::range))
            .await?;
        let mut completion = SrbCompletion::parse(reply.bytes())?;
        if self.profile == GuestProfile::Linux {
            if let Some(&opcode) = cdb.first() {
                completion.linux_fixup(opcode);
            }
        }
        Ok(completion)
    }

    /// Runs a data-in SRB with a buffer of `len` bytes; returns the
    /// completion and the bytes moved.
    pub(super) async fn srb_in(
        &self,
        address: LunAddress,
        cdb: &[u8],
        len: u32,
    ) -> Result<(SrbCompletion, Vec<u8>), DriverError> {
        let buffer = if len == 0 {
            None
        } else {
            Some(self.buffer(len)?)
        };
        let completion = self
            .srb(address, cdb, DataDirection::READ, buffer.as_ref())
            .await?;
        let moved = completion.transferred.min(len) as usize;
        let mut data = vec![0u8; moved];
        if let (Some(buffer), true) = (&buffer, moved > 0) {
            buffer.range().read_at(&self.memory, 0, &mut data)?;
        }
        Ok((completion, data))
    }
}

/// Whether an SRB succeeded at every level: packet, SRB and SCSI status.
pub(super) fn good(completion: &SrbCompletion) -> bool {
    completion.status == NtStatus::SUCCESS.0
        && completion.srb_status & vstor::SRB_STATUS_MASK == SrbStatus::SUCCESS.0
        && completion.scsi_status == 0
}

/// The error of an SRB that did not succeed.
pub(super) fn srb_error(address: LunAddress, cdb: &[u8], c: &SrbCompletion) -> DriverError {
    DriverError::Srb {
        address,
        opcode: cdb.first().copied().unwrap_or(0),
        status: c.status,
        srb_status: c.srb_status,
        scsi_status: c.scsi_status,
        sense: c.sense_key_asc(),
    }
}

/// Reads the host→guest ring of one channel and wakes waiters.
fn completion_thread(
    index: usize,
    mut reader: RingReader,
    waiters: Arc<Waiters>,
    events: Arc<HostEvents>,
    stop: Arc<StopSignal>,
) -> std::io::Result<JoinHandle<Result<(), RingError>>> {
    std::thread::Builder::new()
        .name(format!("storvsc-{index}"))
        .spawn(move || {
            let result = vmbdev_ring::block_on(futures_lite::future::or(
                async {
                    loop {
                        reader
                            .read_batch_borrowed(64, |packet| {
                                deliver(
                                    &waiters,
                                    &events,
                                    packet.kind,
                                    packet.transaction_id,
                                    packet.payload,
                                )
                            })
                            .await?;
                    }
                },
                async {
                    stop.wait().await;
                    Ok(())
                },
            ));
            if let Err(error) = &result {
                tracing::warn!(channel = index, %error, "storvsc channel failed");
            }
            // Wake every waiter with an error.
            waiters.close();
            result
        })
}

/// Reads channel `index`'s host→guest ring for as long as this request
/// waits, handing every completion to its waiter: the work of a completion
/// thread, done by the waiting request itself so a reply needs no thread
/// hand-off. Whoever holds `reader` reads for all; the others wait for
/// their reply or for their turn at the reader, whichever comes first.
/// Must be polled after `claim.reply()` in the same poll (as
/// `future::or` does): the wake-up for a turn goes through the waker that
/// registered. Ends (`None`) only when the ring fails, after waking every
/// waiter.
async fn read_completions<T>(
    index: usize,
    reader: &Mutex<RingReader>,
    claim: &Claim<'_>,
    waiters: &Waiters,
    events: &HostEvents,
) -> Option<T> {
    let mut turn = ReaderWait {
        reader,
        claim,
        waiters,
        waiting: false,
    }
    .await;
    loop {
        let read = turn
            .guard
            .read_batch_borrowed(64, |packet| {
                deliver(
                    waiters,
                    events,
                    packet.kind,
                    packet.transaction_id,
                    packet.payload,
                )
            })
            .await;
        if let Err(error) = read {
            tracing::warn!(channel = index, %error, "storvsc channel failed");
            waiters.close();
            return None;
        }
    }
}

/// A request waiting for its turn at a channel's reader: takes it if it is
/// free, else records the wait in the slot table and sleeps until the
/// holder lets go and wakes it. Dropped while waiting (the reply came, or
/// the request was given up), it passes a wake-up on if the reader is
/// free, so a wake meant for it is not lost to the others.
struct ReaderWait<'a> {
    reader: &'a Mutex<RingReader>,
    claim: &'a Claim<'a>,
    waiters: &'a Waiters,
    /// The wait is recorded in the slot table.
    waiting: bool,
}

impl<'a> Future for ReaderWait<'a> {
    type Output = ReaderTurn<'a>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<ReaderTurn<'a>> {
        if let Some(turn) = self.try_take() {
            return Poll::Ready(turn);
        }
        if !self.waiting {
            self.claim.want_reader();
            self.waiting = true;
            // Tried once more after recording the wait: a holder that let
            // go in between may not have seen it.
            if let Some(turn) = self.try_take() {
                return Poll::Ready(turn);
            }
        }
        Poll::Pending
    }
}

impl<'a> ReaderWait<'a> {
    fn try_take(&mut self) -> Option<ReaderTurn<'a>> {
        let guard = try_lock_reader(self.reader)?;
        if std::mem::take(&mut self.waiting) {
            self.claim.stop_wanting_reader();
        }
        Some(ReaderTurn {
            guard,
            _hand_off: HandOff(self.waiters),
        })
    }
}

impl Drop for ReaderWait<'_> {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        self.claim.stop_wanting_reader();
        // Nobody holds the reader: a hand-off may have woken this request,
        // which no longer needs it, so another waiting one is woken. If
        // somebody holds it, that holder hands it on when it lets go.
        if let Some(free) = try_lock_reader(self.reader) {
            drop(free);
            self.waiters.wake_next_reader();
        }
    }
}

/// The reader if nobody holds it. A plain mutex, since the reader is only
/// ever tried, never queued for (its waits go through the slot table): an
/// async mutex would notify its event on every release, which takes a lock
/// per request. A holder that panicked leaves the reader usable.
fn try_lock_reader(reader: &Mutex<RingReader>) -> Option<std::sync::MutexGuard<'_, RingReader>> {
    match reader.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The reader, held by one waiting request; on drop (its reply came, or
/// the request was given up) the next waiting request is woken to take
/// over.
struct ReaderTurn<'a> {
    guard: std::sync::MutexGuard<'a, RingReader>,
    /// Declared after `guard`, so it runs once the reader is free.
    _hand_off: HandOff<'a>,
}

/// Wakes the next request waiting for the reader when dropped.
struct HandOff<'a>(&'a Waiters);

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        self.0.wake_next_reader();
    }
}

/// Hands one host→guest packet to its waiter, or counts it as an event.
fn deliver(
    waiters: &Waiters,
    events: &HostEvents,
    kind: BorrowedKind<'_>,
    tid: u64,
    payload: &[u8],
) {
    match kind {
        BorrowedKind::Completion => {
            if !waiters.deliver(tid, payload) {
                events.count_unexpected();
            }
        }
        BorrowedKind::InBand
            if payload.get(..4) == Some(&Operation::ENUMERATE_BUS.0.to_le_bytes()) =>
        {
            events.count_enumerate_bus();
        }
        _ => events.count_unexpected(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::{Wake, Waker};
    use vmbdev_ring::{LoopbackConfig, loopback};

    /// A waker of one request that records whether it was woken, so the
    /// test polls only the requests somebody woke: a request left asleep
    /// with nobody to wake it stays asleep, as on a real executor.
    #[derive(Default)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A small linear congruential generator: each seed is one fixed
    /// schedule of replies and dropped requests.
    struct Schedule(u64);

    impl Schedule {
        fn below(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % bound.max(1) as u64) as usize
        }
    }

    type RequestFuture<'a> = Pin<Box<dyn Future<Output = Result<Reply, DriverError>> + 'a>>;

    struct Waiting<'a> {
        number: u64,
        future: RequestFuture<'a>,
        woken: Arc<Woken>,
    }

    /// The host's answer to the request carrying `payload`.
    fn answer(payload: [u8; 8]) -> [u8; 8] {
        payload.map(|b| b ^ 0xa5)
    }

    const REQUESTS: u64 = 48;

    /// Runs `REQUESTS` requests on one polled channel from this thread; the
    /// host answers them a few at a time in a shuffled order while some
    /// requests are dropped mid-wait (the oldest one, most often the
    /// reader's holder, or any) and the woken requests are polled in a
    /// shuffled order. Returns how many were answered.
    fn run_schedule(seed: u64) -> u64 {
        let channel = loopback(&LoopbackConfig::default()).unwrap();
        let mut inner = Inner::new(
            channel.memory.clone(),
            channel.pages.clone(),
            GuestProfile::Linux,
            0,
            Completions::Polled,
        );
        inner.add_channel(channel.guest).unwrap();
        let (mut host_reader, mut host_writer) = channel.host.split();
        let inner = &inner;
        let mut waiting: Vec<Waiting<'_>> = (0..REQUESTS)
            .map(|number| {
                let woken = Arc::new(Woken::default());
                woken.0.store(true, Ordering::SeqCst);
                let future: RequestFuture<'_> =
                    Box::pin(async move { inner.request(0, &number.to_le_bytes(), None).await });
                Waiting {
                    number,
                    future,
                    woken,
                }
            })
            .collect();
        let mut schedule = Schedule(seed);
        let mut unanswered: Vec<(u64, [u8; 8])> = Vec::new();
        let (mut answered, mut dropped) = (0, 0);
        for round in 0..10_000 {
            // Woken requests are polled in a shuffled order, as an
            // executor's run queue may order them.
            let mut order: Vec<usize> = (0..waiting.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, schedule.below(i + 1));
            }
            let mut finished = vec![false; waiting.len()];
            for i in order {
                let request = &mut waiting[i];
                if !request.woken.0.swap(false, Ordering::SeqCst) {
                    continue;
                }
                let waker = Waker::from(request.woken.clone());
                if let Poll::Ready(reply) = request
                    .future
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                {
                    let reply = reply.unwrap();
                    assert_eq!(
                        reply.bytes(),
                        answer(request.number.to_le_bytes()),
                        "seed {seed}: request {} got another's reply",
                        request.number
                    );
                    finished[i] = true;
                    answered += 1;
                }
            }
            let mut finished = finished.into_iter();
            waiting.retain(|_| !finished.next().unwrap_or(false));
            if waiting.is_empty() {
                assert_eq!(answered + dropped, REQUESTS);
                return answered;
            }
            host_reader
                .try_read_batch(64, |view| {
                    let mut payload = [0u8; 8];
                    payload.copy_from_slice(&view.payload[..8]);
                    unanswered.push((view.transaction_id, payload));
                })
                .unwrap();
            if schedule.below(3) == 0 && dropped < REQUESTS / 3 && waiting.len() > 1 {
                let victim = if dropped % 2 == 0 {
                    0
                } else {
                    schedule.below(waiting.len())
                };
                waiting.remove(victim);
                dropped += 1;
            }
            for _ in 0..schedule.below(unanswered.len() + 1) {
                let (tid, payload) = unanswered.swap_remove(schedule.below(unanswered.len()));
                let reply = answer(payload);
                assert!(
                    host_writer
                        .try_write(&OutgoingPacket::completion(tid, &reply))
                        .unwrap()
                );
            }
            let awake = waiting.iter().any(|r| r.woken.0.load(Ordering::SeqCst));
            assert!(
                awake || !unanswered.is_empty(),
                "seed {seed}, round {round}: {} requests asleep, every reply sent, none woken",
                waiting.len()
            );
        }
        panic!("seed {seed}: {} requests still waiting", waiting.len());
    }

    #[test]
    fn every_request_left_gets_its_reply_while_waiting_requests_take_turns_at_the_reader() {
        for seed in 1..=24 {
            let answered = run_schedule(seed);
            assert!(
                answered >= REQUESTS - REQUESTS / 3,
                "seed {seed}: {answered} answered"
            );
        }
    }

    #[test]
    fn multi_page_buffers_come_back_from_the_cache_and_the_cache_yields_to_a_big_one() {
        let channel = loopback(&LoopbackConfig {
            buffer_pages: 8,
            ..LoopbackConfig::default()
        })
        .unwrap();
        let pages = channel.pages.clone();
        let inner = Inner::new(
            channel.memory.clone(),
            pages.clone(),
            GuestProfile::Linux,
            0,
            Completions::Polled,
        );
        let all = pages.free_pages();
        let two = inner.buffer(8192).unwrap();
        let first: Vec<u64> = two.range().gpns().to_vec();
        drop(two);
        // Kept, not handed back to the allocator.
        assert_eq!(pages.free_pages(), all - 2);
        let again = inner.buffer(8192).unwrap();
        assert_eq!(again.range().gpns(), &first[..], "the cached run");
        assert_eq!(again.range().byte_count(), 8192);
        drop(again);
        // Another size is not served from the cache.
        let three = inner.buffer(3 * 4096).unwrap();
        assert_eq!(three.range().gpns().len(), 3);
        assert!(three.range().gpns().iter().all(|p| !first.contains(p)));
        drop(three);
        assert_eq!(pages.free_pages(), all - 5);
        // Every page at once: the cache gives its pages back first.
        let whole = inner.buffer(all as u32 * 4096).unwrap();
        assert_eq!(whole.range().gpns().len() as u64, all);
        drop(whole);
        drop(inner);
        assert_eq!(
            pages.free_pages(),
            all,
            "every page back once the driver is gone"
        );
    }
}
