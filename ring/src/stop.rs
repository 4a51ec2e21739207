//! A one-way stop flag that async tasks can wait on: a driver raises it to
//! stop its completion threads, a bus raises it when the host stops
//! serving a channel, a device when its channel is closed. It lives with
//! the ring so the host and guest sides share one type.
//!
//! Request loops race every wait against the signal, so waiting must cost
//! no allocation: waiters park their wakers in a list whose capacity is
//! kept when they leave, so once as many waiters as ever wait at once have
//! waited, arming a wait allocates nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A one-way stop flag that async tasks can wait on.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The wakers of the pending [`StopWait`]s, each under its own id.
#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    parked: Vec<(u64, Waker)>,
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

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises the signal and wakes every waiter.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Waiters check the flag under this lock, so none parks after the
        // drain below without seeing it.
        let mut waiters = self.waiters();
        for (_, waker) in waiters.parked.drain(..) {
            waker.wake();
        }
    }

    /// Whether the signal was raised.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Completes once the signal is raised.
    pub fn wait(&self) -> StopWait<'_> {
        StopWait {
            signal: self,
            id: None,
            parked_waker: None,
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

/// The future [`StopSignal::wait`] returns.
#[derive(Debug)]
pub struct StopWait<'a> {
    signal: &'a StopSignal,
    /// The id of this wait's parked waker, while one is parked.
    id: Option<u64>,
    /// A clone of that waker: polled again with the same one and the flag
    /// still down, the wait is still parked as it was (only `stop` takes
    /// parked wakers, and it raises the flag first), so the poll needs
    /// no lock.
    parked_waker: Option<Waker>,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.signal.is_stopped() {
            return Poll::Ready(());
        }
        if let Some(waker) = &this.parked_waker {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let mut waiters = this.signal.waiters();
        if this.signal.is_stopped() {
            // `stop` drained the list (this wait's waker with it).
            this.id = None;
            return Poll::Ready(());
        }
        let parked = this
            .id
            .and_then(|id| waiters.parked.iter_mut().find(|(i, _)| *i == id));
        match parked {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => {
                let id = waiters.next_id;
                waiters.next_id += 1;
                waiters.parked.push((id, cx.waker().clone()));
                this.id = Some(id);
            }
        }
        this.parked_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut waiters = self.signal.waiters();
            if let Some(at) = waiters.parked.iter().position(|(i, _)| *i == id) {
                waiters.parked.swap_remove(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_completes_after_stop_from_another_thread() {
        let signal = Arc::new(StopSignal::new());
        let raiser = signal.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            raiser.stop();
        });
        futures_lite::future::block_on(signal.wait());
        assert!(signal.is_stopped());
        thread.join().unwrap();
    }

    /// A waker counting its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let count = Arc::new(Counter(0.into()));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn stop_wakes_the_waker_of_the_latest_poll() {
        let signal = StopSignal::new();
        let (first_count, first) = counter();
        let (second_count, second) = counter();
        let mut wait = std::pin::pin!(signal.wait());
        for waker in [&first, &first, &second, &second] {
            let mut cx = Context::from_waker(waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(signal.waiters().parked.len(), 1);
        signal.stop();
        assert_eq!(first_count.0.load(Ordering::SeqCst), 0, "a replaced waker");
        assert_eq!(second_count.0.load(Ordering::SeqCst), 1);
        let mut cx = Context::from_waker(&second);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_dropped_wait_leaves_no_waker_behind() {
        let signal = StopSignal::new();
        let raced = futures_lite::future::block_on(signal.race(async { 7 }));
        assert_eq!(raced, Some(7));
        {
            let mut wait = std::pin::pin!(signal.wait());
            let waker = Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert_eq!(signal.waiters().parked.len(), 1, "re-polling parks once");
        }
        assert!(signal.waiters().parked.is_empty());
        signal.stop();
        assert_eq!(
            futures_lite::future::block_on(signal.race(std::future::pending::<()>())),
            None
        );
    }
}
