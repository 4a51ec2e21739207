//! Doorbells: how one side of a channel wakes the other. A transport
//! implements [`Doorbell`]; the loopback uses an in-process
//! `event-listener` [`EventDoorbell`], a VMM or an out-of-process transport
//! an [`EventfdDoorbell`].

use async_io::Async;
use event_listener::Event;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A future that completes when the doorbell rings (or spuriously).
pub type DoorbellWait = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One direction of signalling. `listen` must be called *before* the final
/// re-check of the ring, and a `signal` after that call must complete the
/// returned future, so no wake-up is lost between check and sleep.
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
}

/// An in-process doorbell over an `event_listener::Event`, counting its
/// signals (tests compare the count against a model).
#[derive(Debug, Default)]
pub struct EventDoorbell {
    event: Event,
    signals: AtomicU64,
}

impl EventDoorbell {
    /// A new doorbell.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of signals so far.
    pub fn signal_count(&self) -> u64 {
        self.signals.load(Ordering::Relaxed)
    }
}

impl Doorbell for EventDoorbell {
    fn signal(&self) {
        self.signals.fetch_add(1, Ordering::Relaxed);
        // One doorbell serves both the reader and the writer of an
        // endpoint (as one VMBus interrupt does), so wake every listener.
        self.event.notify(usize::MAX);
    }

    fn listen(&self) -> DoorbellWait {
        Box::pin(self.event.listen())
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
