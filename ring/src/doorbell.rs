//! Doorbells: how one side of a channel wakes the other. A transport
//! implements [`Doorbell`]; the loopback uses an in-process
//! [`EventDoorbell`], a VMM or an out-of-process transport an
//! [`EventfdDoorbell`].
//!
//! Waiting goes through [`wait`]: it arms the doorbell (before the final
//! re-check of the ring) and returns a future that completes on the next
//! signal. [`EventDoorbell`] arms without allocating (a generation counter
//! and a few waker slots), and its `signal` takes no lock and allocates
//! nothing unless more waits than it has slots are armed at once; other doorbells fall back to their boxed
//! [`listen`](Doorbell::listen) future.

use crate::counted_event::CountedEvent;
use async_io::Async;
use atomic_waker::AtomicWaker;
use event_listener::Event;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

/// A future that completes when the doorbell rings (or spuriously).
pub type DoorbellWait = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An armed wait on a doorbell: what [`Doorbell::arm`] hands out and
/// [`Doorbell::poll_armed`] polls.
pub struct Armed(ArmedState);

enum ArmedState {
    /// Waiting for the generation to move past `seen`, woken through
    /// waker slot `slot`.
    Slot { slot: u32, seen: u64 },
    /// A boxed listener (doorbells without slots, or all slots taken).
    Boxed(DoorbellWait),
    /// Completed or released.
    Done,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            ArmedState::Slot { .. } => "slot",
            ArmedState::Boxed(_) => "boxed",
            ArmedState::Done => "done",
        };
        f.debug_tuple("Armed").field(&state).finish()
    }
}

/// One direction of signalling. A wait must be armed *before* the final
/// re-check of the ring, and a `signal` after arming must complete the
/// wait, so no wake-up is lost between check and sleep.
pub trait Doorbell: Send + Sync {
    /// Rings the doorbell.
    fn signal(&self);
    /// Registers interest; the future completes on the next signal.
    fn listen(&self) -> DoorbellWait;
    /// The eventfd behind the doorbell, if it is one: a transport that
    /// hands the doorbell to another process passes this fd instead of
    /// relaying signals.
    fn eventfd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Arms a wait for the next signal. The default boxes
    /// [`listen`](Self::listen); a doorbell overriding it must override
    /// [`poll_armed`](Self::poll_armed) and [`disarm`](Self::disarm) too.
    fn arm(&self) -> Armed {
        Armed(ArmedState::Boxed(self.listen()))
    }

    /// Polls an armed wait.
    fn poll_armed(&self, armed: &mut Armed, cx: &mut Context<'_>) -> Poll<()> {
        match &mut armed.0 {
            ArmedState::Boxed(wait) => {
                let ready = wait.as_mut().poll(cx);
                if ready.is_ready() {
                    armed.0 = ArmedState::Done;
                }
                ready
            }
            ArmedState::Slot { .. } | ArmedState::Done => Poll::Ready(()),
        }
    }

    /// Releases what an armed wait holds (called when it is dropped).
    fn disarm(&self, armed: &mut Armed) {
        armed.0 = ArmedState::Done;
    }
}

/// A wait armed on `doorbell` now; the future completes on the next
/// signal (or spuriously).
pub fn wait(doorbell: &dyn Doorbell) -> Wait<'_> {
    Wait {
        armed: doorbell.arm(),
        doorbell,
    }
}

/// The future [`wait`] returns.
pub struct Wait<'a> {
    doorbell: &'a dyn Doorbell,
    armed: Armed,
}

impl std::fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait").field("armed", &self.armed).finish()
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.doorbell.poll_armed(&mut this.armed, cx)
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.doorbell.disarm(&mut self.armed);
    }
}

/// Waiters an [`EventDoorbell`] wakes without any allocation; more at once
/// fall back to a boxed listener. The reader and the writer of one endpoint
/// share a doorbell, so two is the common need.
const WAKER_SLOTS: usize = 4;

/// An in-process doorbell, counting its signals (tests compare the count
/// against a model). Signalling bumps a generation counter and wakes the
/// armed waker slots: no lock, no allocation.
#[derive(Debug, Default)]
pub struct EventDoorbell {
    /// Bumped once per signal, so it is also the signal count.
    generation: AtomicU64,
    /// Bit `i` set: slot `i` belongs to an armed wait.
    claimed: AtomicU32,
    slots: [AtomicWaker; WAKER_SLOTS],
    /// Wakes the overflow waiters (and [`listen`](Doorbell::listen)); a
    /// signal with none of them costs no lock.
    event: CountedEvent,
}

impl EventDoorbell {
    /// A new doorbell.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of signals so far.
    pub fn signal_count(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn claim_slot(&self) -> Option<u32> {
        let mut claimed = self.claimed.load(Ordering::Relaxed);
        loop {
            let free = (!claimed).trailing_zeros();
            if free as usize >= WAKER_SLOTS {
                return None;
            }
            match self.claimed.compare_exchange_weak(
                claimed,
                claimed | (1 << free),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(free),
                Err(now) => claimed = now,
            }
        }
    }
}

impl Doorbell for EventDoorbell {
    fn signal(&self) {
        // The generation store is ordered before the slot loads, as the
        // waiter orders its waker registration before its generation
        // re-check: one of the two sees the other.
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut claimed = self.claimed.load(Ordering::SeqCst);
        while claimed != 0 {
            let slot = claimed.trailing_zeros();
            self.slots[slot as usize].wake();
            claimed &= claimed - 1;
        }
        // One doorbell serves both the reader and the writer of an
        // endpoint (as one VMBus interrupt does), so wake every listener.
        self.event.notify(usize::MAX);
    }

    fn listen(&self) -> DoorbellWait {
        Box::pin(self.event.listen())
    }

    fn arm(&self) -> Armed {
        match self.claim_slot() {
            Some(slot) => Armed(ArmedState::Slot {
                slot,
                seen: self.generation.load(Ordering::SeqCst),
            }),
            None => Armed(ArmedState::Boxed(self.listen())),
        }
    }

    fn poll_armed(&self, armed: &mut Armed, cx: &mut Context<'_>) -> Poll<()> {
        let ArmedState::Slot { slot, seen } = armed.0 else {
            return match &mut armed.0 {
                ArmedState::Boxed(wait) => wait.as_mut().poll(cx),
                _ => Poll::Ready(()),
            };
        };
        if self.generation.load(Ordering::SeqCst) != seen {
            return Poll::Ready(());
        }
        self.slots[slot as usize].register(cx.waker());
        if self.generation.load(Ordering::SeqCst) != seen {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn disarm(&self, armed: &mut Armed) {
        if let ArmedState::Slot { slot, .. } = armed.0 {
            // The registered waker stays in the slot: a signal took it if
            // one came, and otherwise the next wait on the slot (most
            // often by the same task) registers over it without cloning.
            // A released slot is never woken, and a stale waker woken
            // after the slot is claimed again only polls its task once
            // spuriously.
            self.claimed.fetch_and(!(1 << slot), Ordering::AcqRel);
        }
        armed.0 = ArmedState::Done;
    }
}

/// A doorbell over an eventfd, for a VMM that routes the guest's
/// `HvSignalEvent` to an eventfd (listen on it) and injects the guest's
/// interrupt through an irqfd (signal it), or for a peer in another process
/// holding the same eventfd.
///
/// `signal` adds 1 to the eventfd counter; signals not yet consumed
/// coalesce. A [`listen`](Doorbell::listen) future completes once the
/// counter is non-zero (including a signal from before the call: a
/// spurious wake-up, which the trait allows), resetting it to 0 with a
/// read. Several listeners may wait at once (the reader and the writer of
/// an endpoint share one doorbell): whichever consumes the counter wakes
/// the others through an in-process event, so none misses the signal.
///
/// The eventfd is switched to non-blocking mode, which is shared with every
/// duplicate of it.
#[derive(Clone)]
pub struct EventfdDoorbell {
    inner: Arc<EventfdInner>,
}

struct EventfdInner {
    fd: Async<OwnedFd>,
    /// Wakes the other listeners of this process when one consumes the
    /// counter.
    event: Event,
    signals: AtomicU64,
}

impl std::fmt::Debug for EventfdDoorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventfdDoorbell")
            .field("fd", self.inner.fd.get_ref())
            .field("signals", &self.signal_count())
            .finish()
    }
}

impl EventfdDoorbell {
    /// A doorbell over a new eventfd (close-on-exec, non-blocking).
    pub fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Self::from_fd(fd)
    }

    /// A doorbell over an existing eventfd, e.g. one a VMM registered as an
    /// ioeventfd or irqfd, or one received from another process.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(EventfdInner {
                fd: Async::new(fd)?,
                event: Event::new(),
                signals: AtomicU64::new(0),
            }),
        })
    }

    /// A duplicate of the eventfd (close-on-exec), for handing to a VMM or
    /// another process.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.inner.fd.get_ref().try_clone()
    }

    /// Number of signals sent through this doorbell (not counting signals
    /// written to the eventfd elsewhere).
    pub fn signal_count(&self) -> u64 {
        self.inner.signals.load(Ordering::Relaxed)
    }
}

impl AsFd for EventfdDoorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.get_ref().as_fd()
    }
}

impl EventfdInner {
    /// Reads the counter, resetting it; `true` if it was non-zero.
    fn consume(&self) -> bool {
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(self.fd.get_ref(), &mut buf) {
                Ok(n) => return n == 8,
                Err(rustix::io::Errno::INTR) => {}
                // `AGAIN`: nothing pending. Any other error is reported as
                // nothing pending; the caller then waits for readiness.
                Err(_) => return false,
            }
        }
    }
}

impl Doorbell for EventfdDoorbell {
    fn signal(&self) {
        self.inner.signals.fetch_add(1, Ordering::Relaxed);
        loop {
            match rustix::io::write(self.inner.fd.get_ref(), &1u64.to_ne_bytes()) {
                Err(rustix::io::Errno::INTR) => {}
                // `AGAIN` means the counter is at its maximum: the peer has
                // a signal pending already.
                Err(e) if e != rustix::io::Errno::AGAIN => {
                    tracing::warn!("eventfd doorbell signal failed: {e}");
                    return;
                }
                _ => return,
            }
        }
    }

    fn eventfd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.inner.fd.get_ref().as_fd())
    }

    fn listen(&self) -> DoorbellWait {
        // Registered now, so a consumption by another listener after this
        // call wakes this one.
        let woken = self.inner.event.listen();
        let inner = self.inner.clone();
        Box::pin(async move {
            let from_fd = async {
                loop {
                    if inner.consume() {
                        inner.event.notify(usize::MAX);
                        return;
                    }
                    if let Err(e) = inner.fd.readable().await {
                        tracing::warn!("eventfd doorbell wait failed: {e}");
                        return;
                    }
                }
            };
            futures_lite::future::or(woken, from_fd).await
        })
    }
}

/// Runs `future` to completion on the current thread, waiting for eventfd
/// readiness on this thread itself when the future is pending.
///
/// A thread that serves one channel (a device task, a guest's completion
/// reader) should use this rather than a generic `block_on`: with a generic
/// one, every [`EventfdDoorbell`] wake-up crosses from the reactor thread
/// to the waiting thread, two thread hand-offs per doorbell; here the
/// waiting thread polls the eventfd itself whenever no other thread of the
/// process is already doing so.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    async_io::block_on(future)
}
