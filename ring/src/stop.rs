//! A one-way stop flag that async tasks can wait on: a driver raises it to
//! stop its completion threads, a bus raises it when the host stops
//! serving a channel, a device when its channel is closed. It lives with
//! the ring so the host and guest sides share one type.

use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// A one-way stop flag that async tasks can wait on.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
    event: Event,
}

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal already raised.
    pub fn raised() -> Self {
        let signal = Self::new();
        signal.stop();
        signal
    }

    /// Raises the signal and wakes every waiter.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    /// Whether the signal was raised.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Completes once the signal is raised.
    pub async fn wait(&self) {
        loop {
            if self.is_stopped() {
                return;
            }
            let listener = self.event.listen();
            if self.is_stopped() {
                return;
            }
            listener.await;
        }
    }

    /// Runs `fut` unless the signal is raised first (then `None`).
    pub async fn race<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(fut.await) }, async {
            self.wait().await;
            None
        })
        .await
    }
}
