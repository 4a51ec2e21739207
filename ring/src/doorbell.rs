//! Doorbells: how one side of a channel wakes the other. A transport
//! implements [`Doorbell`]; the loopback uses an in-process
//! `event-listener` [`EventDoorbell`], an out-of-process transport an
//! eventfd.

use event_listener::Event;
use std::future::Future;
use std::pin::Pin;
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
