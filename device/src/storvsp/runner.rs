//! The async task serving one storvsp channel over a ring [`Endpoint`](vmbdev_ring::Endpoint).
//!
//! One poll loop per channel, on the channel's task:
//!
//! 1. count the completions the outgoing ring can still hold (free space
//!    over [`WORST_COMPLETION_RING_LEN`], minus completions already owed);
//! 2. read at most that many requests (and at most [`READ_BATCH`]) in one
//!    batch, with one read-index publication;
//! 3. run each through the state machine and the SRB inline, writing its
//!    completion into the space counted in step 1;
//! 4. publish the completions once (one signal, if the guest asked for
//!    one), then go round again, or sleep on the doorbell when the ring is
//!    empty (or full) with the interrupt-mask and pending-send-size
//!    handshakes of the ring. A productive pass is followed by a yield and
//!    one more pass before any sleep ([`REPOLL_BACKOFF_PASSES`]).
//!
//! A guest that stops reading completions therefore stops the device from
//! taking requests: host memory stays bounded by the queue depth, and the
//! device resumes when the guest frees ring space. A READ runs inline only
//! if it needs no wait for the disk: its file bytes are read with
//! `preadv2(RWF_NOWAIT)` straight into the guest's pages, and if the page
//! cache does not hold them all (`EAGAIN`) the SRB runs again on the I/O
//! spawner, so a slow disk cannot hold up the channel; its completion
//! comes back to this loop and is written into space reserved for it when
//! it was taken. A page-cached read costs about its copy, less than a
//! hand-off to a pool thread and back, whatever its size.
//!
//! Nothing is allocated per request in the steady state: packets are read
//! borrowed from the reader's buffer, the state machine takes `&[u8]` and
//! returns fixed-size completions, waits arm the doorbell without boxing,
//! and the pending table is a slab sized to the queue depth.
//!
//! Save and restore: a request answered inline is read, run and written
//! with no await in between, so it is never observable half-done. Every
//! other request read but not answered (a job on the pool, a completion
//! waiting for ring space) is in the channel's pending table, so a channel
//! stopped by [`StopSignal`] can be saved and re-issued after a restore.
//! The task stops only between batches, after the pool jobs it started
//! have finished (they write guest memory).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_lite::future::poll_fn;
use vmbdev_protocol::vstor::{self, NtStatus};
use vmbdev_ring::{
    BorrowedKind, BorrowedPacket, GpaRange, GuestMemory, Mailbox, OutgoingPacket, RingError,
    RingReader, RingWriter,
};

use super::{Attempted, Completion, Notification, Outcome, Request, SrbJob, StorvspChannel};

mod jobs;
mod shared;

use jobs::JobPool;
use shared::PendingKey;
pub use shared::{PendingRequest, PendingTable, StorvspStats};
pub use vmbdev_ring::StopSignal;

/// Default number of requests one channel takes before completing any.
pub const DEFAULT_QUEUE_DEPTH: usize = 64;

/// Ring bytes of the largest completion the host ever sends (a 0x40-byte
/// payload).
pub const WORST_COMPLETION_RING_LEN: usize = vmbdev_ring::in_band_ring_len(vstor::PACKET_SIZE_WIN8);

/// Most packets the loop takes from the ring in one batch.
pub const READ_BATCH: usize = 32;

/// Productive batches in a row after which the loop yields to the executor,
/// so tasks sharing its thread (a guest in the same process) get to run.
const BATCHES_BEFORE_YIELD: u32 = 8;

/// After a productive pass the loop yields to the executor and looks at
/// the ring once more before it sleeps on the doorbell (stop, notices and
/// pool completions are still watched meanwhile), in the manner of halt
/// polling: one pass costs less than the interrupt-mask handshake and the
/// signal a sleep makes both sides pay, when it finds the guest's next
/// requests. A repoll that finds fewer requests than the pass before it
/// (the guest had not answered all its completions within one yield, a
/// driver whose next request is several task hops away) turns repolling
/// off for this many productive passes, after which it is tried again:
/// sleeping lets such a guest gather a whole batch, and a failed repoll
/// costs one short pass in this many.
///
/// Measured with 4 KiB reads on one thread, side by side: a raw guest at
/// depth 1 (the ioperf shape) went from about 0.82 to 0.68 µs per request
/// with one repoll (a second did not help); storvsc, whose repolls fail,
/// costs what it did without repolling.
const REPOLL_BACKOFF_PASSES: u32 = 64;

#[derive(Debug, Default)]
struct RepollPolicy {
    /// The pass just made followed a repoll.
    repolling: bool,
    /// Requests the pass before the last one took.
    previous_taken: usize,
    /// Productive passes to go before repolling is tried again.
    backoff: u32,
}

impl RepollPolicy {
    /// After a pass that made `progress` and took `taken` requests: `true`
    /// to yield and pass again, `false` to sleep.
    fn after_pass(&mut self, progress: bool, taken: usize) -> bool {
        let was_repoll = std::mem::take(&mut self.repolling);
        let previous = std::mem::replace(&mut self.previous_taken, taken);
        if was_repoll && taken < previous.max(1) {
            self.backoff = REPOLL_BACKOFF_PASSES;
            return false;
        }
        if !progress {
            return false;
        }
        if self.backoff > 0 {
            self.backoff -= 1;
            return false;
        }
        self.repolling = true;
        true
    }
}

/// Why a channel task stopped serving its ring; the device turns it into
/// a [`ChannelError`](crate::bus::ChannelError) at the bus boundary.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The ring is broken (bad indices, malformed packet framing); the
    /// channel cannot continue.
    #[error("storvsp channel {channel}: ring failure: {source}")]
    Ring {
        /// Channel index (0 = primary).
        channel: u16,
        /// What the ring reported.
        source: RingError,
    },
}

/// CREATE_SUB_CHANNELS as the channel task says it: the bus's
/// [`SubChannelControl`](crate::bus::SubChannelControl) under the
/// request's name. Implemented for every `SubChannelControl` and never on
/// its own, so there is one sub-channel trait to implement.
pub trait SubChannelRequester {
    /// Creates the device state of sub-channels `1..=count` and offers them
    /// to the guest. `Err` makes CREATE_SUB_CHANNELS fail.
    fn create_sub_channels(&self, count: u16) -> Result<(), crate::bus::BusError>;
}

impl<T: crate::bus::SubChannelControl + ?Sized> SubChannelRequester for T {
    fn create_sub_channels(&self, count: u16) -> Result<(), crate::bus::BusError> {
        self.enable_sub_channels(count)
    }
}

/// Everything one channel task works with.
pub struct ChannelContext {
    /// Channel index (0 = primary).
    pub index: u16,
    /// The vstor state machine of the channel.
    pub state: Arc<Mutex<StorvspChannel>>,
    /// Requests read and not answered (persists across reopen).
    pub pending: Arc<PendingTable>,
    /// Device counters.
    pub stats: Arc<StorvspStats>,
    /// Raised to stop the task at its next quiescent point.
    pub stop: Arc<StopSignal>,
    /// Unsolicited packets to send (ENUMERATE_BUS on the primary; the
    /// latest is all that matters).
    pub notifications: Arc<Mailbox<Notification>>,
    /// Where CREATE_SUB_CHANNELS goes.
    pub sub_channels: Arc<dyn crate::bus::SubChannelControl>,
    /// Most requests taken before any is answered.
    pub queue_depth: usize,
    /// Where SRB jobs that would wait for the disk go: the VMM's spawner
    /// or the device's own pool.
    pub io: Arc<dyn crate::bus::IoSpawner>,
}

impl std::fmt::Debug for ChannelContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelContext")
            .field("index", &self.index)
            .field("queue_depth", &self.queue_depth)
            .finish_non_exhaustive()
    }
}

/// Serves one channel until `ctx.stop` is raised (then `Ok`) or the ring
/// breaks. Requests in `ctx.pending` (from before a close or restore) are
/// re-issued first. On return no job is still touching guest memory, and
/// every request taken but not answered is in `ctx.pending`.
pub async fn serve_channel(
    ctx: ChannelContext,
    reader: RingReader,
    writer: RingWriter,
) -> Result<(), RunError> {
    let depth = ctx.queue_depth.max(1);
    ctx.pending.reserve(depth);
    let reissue: VecDeque<PendingRequest> = ctx.pending.take_all().into();
    let mut channel = ChannelLoop {
        ctx: &ctx,
        reader,
        out: Outbox {
            ctx: &ctx,
            writer,
            ready: VecDeque::with_capacity(depth),
            jobs: JobPool::new(ctx.io.clone()),
            failure: None,
            ranges: Vec::with_capacity(1),
        },
        reissue,
        notice: None,
        depth,
        batch_was_full: false,
        batch_taken: 0,
    };
    let result = channel.run().await;
    channel.quiesce().await;
    if !channel.reissue.is_empty() {
        // Stopped before re-issuing everything: keep the rest, oldest first.
        let mut all: Vec<PendingRequest> = channel.reissue.drain(..).collect();
        all.extend(ctx.pending.take_all());
        ctx.pending.replace(all);
    }
    result
}

/// The channel's loop state apart from the reader, so a batch callback can
/// borrow it while the reader is busy.
struct Outbox<'a> {
    ctx: &'a ChannelContext,
    writer: RingWriter,
    /// Completions that did not fit the ring yet (each also pending).
    ready: VecDeque<(PendingKey, Completion)>,
    jobs: JobPool,
    /// Set when the outgoing ring broke; the loop ends with it.
    failure: Option<RingError>,
    /// The range list of the packet being handled, parsed into the same
    /// ranges each time so a long one (a 1 MiB buffer's 256 pages) costs
    /// no allocation once warm.
    ranges: Vec<GpaRange>,
}

struct ChannelLoop<'a> {
    ctx: &'a ChannelContext,
    reader: RingReader,
    out: Outbox<'a>,
    /// Requests from before a close or restore, not yet re-issued.
    reissue: VecDeque<PendingRequest>,
    /// ENUMERATE_BUS to send (idempotent: one queued is enough).
    notice: Option<Notification>,
    depth: usize,
    /// The last batch took as many requests as it could: more may wait.
    batch_was_full: bool,
    /// Requests the last pass took from the ring.
    batch_taken: usize,
}

/// What ended a sleep of the loop.
enum Wake {
    Stop,
    Notice(Notification),
    JobDone(Option<(PendingKey, Completion)>),
    Ring(Result<(), RingError>),
}

impl ChannelLoop<'_> {
    fn ring_error(&self, source: RingError) -> RunError {
        RunError::Ring {
            channel: self.ctx.index,
            source,
        }
    }

    async fn run(&mut self) -> Result<(), RunError> {
        let ctx = self.ctx;
        let mut stop = pin!(ctx.stop.wait());
        let done = self.out.jobs.done().clone();
        let mut job_done = pin!(done.recv());
        let mut notices = ctx.notifications.consumer();
        let mut productive = 0u32;
        let mut repoll = RepollPolicy::default();
        loop {
            if ctx.stop.is_stopped() {
                return self.publish_before_stop();
            }
            let progress = self.step()?;
            if progress {
                productive += 1;
                if productive >= BATCHES_BEFORE_YIELD {
                    productive = 0;
                    futures_lite::future::yield_now().await;
                }
                if self.batch_was_full || !self.reissue.is_empty() {
                    continue;
                }
                // The ring was drained: the sleep below looks at it once
                // more before it sleeps, which costs less than another pass.
            } else {
                productive = 0;
            }
            // A guest on this thread gets to send its next request during
            // the yield, one on another vCPU has had the time of a pass.
            let repoll = repoll.after_pass(progress, self.batch_taken);
            let (capacity, space_needed) = if repoll {
                (0, None)
            } else {
                let capacity = self.capacity()?;
                (capacity, self.space_to_wait_for(capacity))
            };
            let ring_size = self.out.writer.half().size() as usize;
            let wake = {
                let reader = &mut self.reader;
                let writer = &mut self.out.writer;
                let ring_wait = async {
                    if repoll {
                        futures_lite::future::yield_now().await;
                        Ok(())
                    } else if let Some(needed) = space_needed.filter(|&n| n + 8 < ring_size) {
                        writer.wait_write_ready(needed).await
                    } else if capacity > 0 {
                        reader.wait_readable().await
                    } else {
                        // Only a pool job finishing can make progress.
                        std::future::pending().await
                    }
                };
                let mut ring_wait = pin!(ring_wait);
                let jobs_running = self.out.jobs.running() > 0;
                poll_fn(|cx| {
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Stop);
                    }
                    if let Poll::Ready(notice) = notices.poll_take(cx) {
                        return Poll::Ready(Wake::Notice(notice));
                    }
                    // With no job running nothing can arrive (only this
                    // loop starts jobs), and polling the queue's listener
                    // takes its lock: skip it.
                    if jobs_running {
                        if let Poll::Ready(done) = job_done.as_mut().poll(cx) {
                            return Poll::Ready(Wake::JobDone(done.ok()));
                        }
                    }
                    ring_wait.as_mut().poll(cx).map(Wake::Ring)
                })
                .await
            };
            match wake {
                Wake::Stop => return self.publish_before_stop(),
                Wake::Notice(notice) => {
                    self.notice.get_or_insert(notice);
                }
                Wake::JobDone(Some((key, completion))) => {
                    self.out.jobs.finished();
                    self.out.send_or_hold(key, completion, true);
                    job_done.set(done.recv());
                }
                // The pool sender lives as long as the loop: never closed.
                Wake::JobDone(None) => {}
                Wake::Ring(result) => result.map_err(|e| self.ring_error(e))?,
            }
        }
    }

    /// Publishes what was written since the last step before the task
    /// stops: a pool job's completion written on its wake-up has already
    /// left the pending table, so unpublished it would be lost to the
    /// guest (the next writer starts at the published index).
    fn publish_before_stop(&mut self) -> Result<(), RunError> {
        let published = self.out.writer.publish();
        published.map_err(|e| self.ring_error(e))
    }

    /// Completions the outgoing ring can take beyond those already owed
    /// (held, or of jobs still running), capped by the queue depth.
    fn capacity(&mut self) -> Result<usize, RunError> {
        let free = self.out.writer.free().map_err(|e| self.ring_error(e))? as usize;
        let fit = free.saturating_sub(1) / WORST_COMPLETION_RING_LEN;
        let owed = self.out.owed();
        Ok(fit.min(self.depth).saturating_sub(owed))
    }

    /// Ring bytes to sleep for when the ring is too full to make progress,
    /// `None` if free space is not what is missing.
    fn space_to_wait_for(&self, capacity: usize) -> Option<usize> {
        let owed = self.out.owed();
        if !self.out.ready.is_empty() {
            // Held completions first.
            return Some(self.out.ready.len() * WORST_COMPLETION_RING_LEN);
        }
        if self.notice.is_some() {
            return Some((owed + 1) * WORST_COMPLETION_RING_LEN);
        }
        if capacity == 0 && owed < self.depth {
            return Some((owed + 1) * WORST_COMPLETION_RING_LEN);
        }
        None
    }

    /// One pass: write held completions and notices, re-issue or take what
    /// fits, publish. `true` if anything moved.
    fn step(&mut self) -> Result<bool, RunError> {
        self.batch_taken = 0;
        let mut progress = self.out.flush_ready();
        progress |= self.send_notice();
        let capacity = self.capacity()?;
        if capacity > 0 {
            progress |= if self.reissue.is_empty() {
                self.take_batch(capacity.min(READ_BATCH))?
            } else {
                self.reissue_some(capacity)
            };
        }
        let published = self.out.writer.publish();
        if let Some(source) = self.out.failure.take() {
            return Err(self.ring_error(source));
        }
        published.map_err(|e| self.ring_error(e))?;
        Ok(progress)
    }

    /// Reads up to `max` requests and answers them; `true` if any was read.
    fn take_batch(&mut self, max: usize) -> Result<bool, RunError> {
        let ctx = self.ctx;
        // A pass often finds the ring empty: look before taking the
        // state's lock.
        self.batch_was_full = false;
        match self.reader.available() {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(source) => {
                ctx.stats.violation(ctx.index, &source);
                return Err(self.ring_error(source));
            }
        }
        let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = &mut self.out;
        let read = self.reader.try_read_batch_borrowed(max, |packet| {
            ctx.stats.count_request();
            out.take_packet(&mut state, packet);
        });
        self.batch_was_full = matches!(read, Ok(count) if count == max);
        self.batch_taken = *read.as_ref().unwrap_or(&0);
        match read {
            Ok(count) => Ok(count > 0),
            Err(source) => {
                // Packets read before a framing error were still served.
                ctx.stats.violation(ctx.index, &source);
                Err(self.ring_error(source))
            }
        }
    }

    /// Re-issues up to `capacity` requests from before a close or restore.
    fn reissue_some(&mut self, capacity: usize) -> bool {
        let ctx = self.ctx;
        let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut moved = false;
        for _ in 0..capacity {
            let Some(request) = self.reissue.pop_front() else {
                break;
            };
            moved = true;
            match request {
                PendingRequest::Reply(completion) => {
                    let key = ctx.pending.insert(PendingRequest::Reply(completion));
                    self.out.send_or_hold(key, completion, false);
                }
                PendingRequest::Rerun {
                    payload,
                    ranges,
                    transaction_id,
                } => self
                    .out
                    .dispatch(&mut state, &payload, &ranges, transaction_id),
            }
        }
        moved
    }

    /// Writes the queued notification if it fits beside what is owed.
    fn send_notice(&mut self) -> bool {
        let Some(notice) = &self.notice else {
            return false;
        };
        let packet = OutgoingPacket::in_band(&notice.bytes);
        let owed = self.out.owed() * WORST_COMPLETION_RING_LEN;
        let fits = match (packet.ring_len(), self.out.writer.free()) {
            (Ok(len), Ok(free)) => (free as usize) > len as usize + owed,
            (Err(e), _) | (_, Err(e)) => {
                self.out.failure.get_or_insert(e);
                return false;
            }
        };
        if !fits {
            return false;
        }
        match self.out.writer.try_write_unpublished(&packet) {
            Ok(true) => {
                self.ctx.stats.count_notification();
                self.notice = None;
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.out.failure.get_or_insert(e);
                false
            }
        }
    }

    /// Waits for the pool jobs still running (they write guest memory);
    /// their requests stay pending, as do held completions.
    async fn quiesce(&mut self) {
        while self.out.jobs.running() > 0 {
            if self.out.jobs.done().recv().await.is_err() {
                break;
            }
            self.out.jobs.finished();
        }
        self.out.ready.clear();
    }
}

impl Outbox<'_> {
    /// Completions owed but not in the ring: held ones and running jobs'.
    fn owed(&self) -> usize {
        self.ready.len() + self.jobs.running()
    }

    /// Handles one packet from the ring.
    fn take_packet(&mut self, state: &mut StorvspChannel, packet: BorrowedPacket<'_>) {
        let ctx = self.ctx;
        let list = match packet.kind {
            BorrowedKind::InBand => None,
            BorrowedKind::GpaDirect(list) => Some(list),
            BorrowedKind::TransferPages { .. } => {
                ctx.stats
                    .violation(ctx.index, &"transfer-page packet on a storvsp channel");
                return;
            }
            BorrowedKind::Completion => {
                ctx.stats
                    .violation(ctx.index, &"completion packet from the guest");
                return;
            }
        };
        if !packet.completion_requested {
            ctx.stats
                .violation(ctx.index, &"request without completion requested");
            return;
        }
        let tid = packet.transaction_id;
        match list {
            None => self.dispatch(state, packet.payload, &[], tid),
            Some(list) => {
                // Out of `self` while `dispatch` borrows it, then back.
                let mut ranges = std::mem::take(&mut self.ranges);
                list.parse_into(&mut ranges);
                self.dispatch(state, packet.payload, &ranges, tid);
                self.ranges = ranges;
            }
        }
    }

    /// Runs one request through the state machine and answers it (inline,
    /// or later from the pool).
    fn dispatch(
        &mut self,
        state: &mut StorvspChannel,
        payload: &[u8],
        ranges: &[GpaRange],
        transaction_id: u64,
    ) {
        let ctx = self.ctx;
        let outcome = state.handle(Request {
            payload,
            ranges,
            transaction_id,
        });
        match outcome {
            Outcome::Complete(completion) => self.send(completion),
            Outcome::CreateSubChannels {
                mut completion,
                count,
            } => {
                if let Err(reason) = ctx.sub_channels.create_sub_channels(count) {
                    tracing::warn!(count, %reason, "sub-channels could not be offered");
                    set_status(&mut completion, NtStatus::INVALID_DEVICE_STATE);
                }
                self.send(completion);
            }
            Outcome::Execute(job) => match job.try_run(state.memory()) {
                Attempted::Done(completion) => self.send(completion),
                Attempted::WouldBlock(job) => {
                    let memory = state.memory().clone();
                    self.offload(job, memory, payload, ranges, transaction_id);
                }
            },
            Outcome::Violation(violation) => ctx.stats.violation(ctx.index, &violation),
        }
    }

    /// Sends a large job to the pool; the request is pending until its
    /// completion is written.
    fn offload(
        &mut self,
        job: SrbJob<'static>,
        memory: GuestMemory,
        payload: &[u8],
        ranges: &[GpaRange],
        transaction_id: u64,
    ) {
        let key = self.ctx.pending.insert(PendingRequest::Rerun {
            payload: payload.to_vec(),
            ranges: ranges.to_vec(),
            transaction_id,
        });
        self.jobs.spawn(key, job, memory);
    }

    /// Writes a completion of a request that is not in the pending table;
    /// if it does not fit (the guest moved its read index back), it is
    /// held, and pending, until it does.
    fn send(&mut self, completion: Completion) {
        if self.try_write(&completion) {
            return;
        }
        let key = self.ctx.pending.insert(PendingRequest::Reply(completion));
        self.ready.push_back((key, completion));
    }

    /// Writes the completion of pending request `key`, or holds it. A
    /// completion arriving after the stop is dropped: the request stays
    /// pending.
    fn send_or_hold(&mut self, key: PendingKey, completion: Completion, from_job: bool) {
        if from_job && self.ctx.stop.is_stopped() {
            return;
        }
        if self.ready.is_empty() && self.try_write(&completion) {
            self.ctx.pending.remove(key);
        } else {
            self.ready.push_back((key, completion));
        }
    }

    /// Writes held completions in order; `true` if any was written.
    fn flush_ready(&mut self) -> bool {
        let mut moved = false;
        while let Some((key, completion)) = self.ready.front().copied() {
            if !self.try_write(&completion) {
                break;
            }
            self.ctx.pending.remove(key);
            self.ready.pop_front();
            moved = true;
        }
        moved
    }

    /// Writes one completion unpublished; `false` if it did not fit or the
    /// ring broke (then `failure` is set).
    fn try_write(&mut self, completion: &Completion) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let packet = OutgoingPacket::completion(completion.transaction_id, &completion.bytes);
        match self.writer.try_write_unpublished(&packet) {
            Ok(true) => {
                self.ctx.stats.count_completion();
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.failure = Some(e);
                false
            }
        }
    }
}

fn set_status(completion: &mut Completion, status: NtStatus) {
    if let Some(field) = completion.bytes.as_mut_slice().get_mut(8..12) {
        field.copy_from_slice(&status.0.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repolling_goes_on_while_it_finds_whole_batches_and_backs_off_when_it_does_not() {
        let mut policy = RepollPolicy::default();
        // A guest that answers within the yield with as many requests as
        // before: always repolled.
        for _ in 0..1000 {
            assert!(policy.after_pass(true, 4));
        }
        // A repoll finding fewer (here none) sleeps and turns repolling off.
        assert!(!policy.after_pass(false, 0));
        for pass in 0..REPOLL_BACKOFF_PASSES {
            assert!(!policy.after_pass(true, 4), "pass {pass} of the back-off");
        }
        // Then it is tried again; a short repoll backs off at once.
        assert!(policy.after_pass(true, 4));
        assert!(!policy.after_pass(true, 3));
        assert!(!policy.after_pass(true, 4), "backing off again");

        // An empty pass after a sleep (a spurious wake) is no failed
        // repoll: the next productive pass repolls.
        let mut policy = RepollPolicy::default();
        assert!(!policy.after_pass(false, 0));
        assert!(!policy.after_pass(false, 0));
        assert!(policy.after_pass(true, 1));
        // More than before is success too.
        assert!(policy.after_pass(true, 2));
    }
}
