//! [`CountedEvent`]: an `event_listener` event whose `notify` is one atomic
//! load while nobody listens. `event_listener` takes its list lock on
//! every notify, listeners or not, which on a request path that notifies
//! "just in case" (a slot freed, a doorbell rung) costs two locked
//! instructions per request for nothing.

use event_listener::{Event, EventListener};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// An event that counts its live listeners and skips notifying while
/// there are none.
#[derive(Debug, Default)]
pub struct CountedEvent {
    event: Event,
    /// Listeners alive (shared with them, so a listener may outlive a
    /// borrow of the event).
    listeners: Arc<AtomicUsize>,
}

impl CountedEvent {
    /// A new event with no listener.
    pub fn new() -> Self {
        Self::default()
    }

    /// A listener, registered now: a `notify` that starts after this call
    /// returns wakes it. As with `event_listener`, the caller re-checks its
    /// condition after listening and before waiting.
    pub fn listen(&self) -> CountedListener {
        // Counted before it registers: a notify that reads 0 started
        // before the registration finished, so it may be missed, which the
        // contract above allows; one that reads the count takes the
        // event's lock, ordered after or before the registration's.
        self.listeners.fetch_add(1, Ordering::SeqCst);
        CountedListener {
            listener: self.event.listen(),
            listeners: self.listeners.clone(),
        }
    }

    /// Wakes up to `n` listeners; an atomic load when none is alive.
    pub fn notify(&self, n: usize) {
        if self.listeners.load(Ordering::SeqCst) != 0 {
            self.event.notify(n);
        }
    }
}

/// A listener of a [`CountedEvent`]: completes when notified; uncounted
/// when dropped.
#[derive(Debug)]
pub struct CountedListener {
    listener: EventListener,
    listeners: Arc<AtomicUsize>,
}

impl Future for CountedListener {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.listener).poll(cx)
    }
}

impl Drop for CountedListener {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, Ordering::SeqCst);
    }
}
