//! A one-slot mailbox between any number of producers and one consumer
//! task: a value left in it replaces one not yet taken (for messages where
//! the latest is all that matters, such as "the bus changed"), and the
//! consumer's poll of an empty box costs an atomic load and a waker
//! registration, no lock: request loops poll it on every sleep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

/// A one-slot mailbox with one consumer.
#[derive(Debug)]
pub struct Mailbox<T> {
    slot: Mutex<Option<T>>,
    /// Whether `slot` holds a value; changed only under its lock.
    full: AtomicBool,
    /// The consumer's waker.
    waker: AtomicWaker,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(None),
            full: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

impl<T> Mailbox<T> {
    /// An empty mailbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self) -> MutexGuard<'_, Option<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `value` (replacing a value not yet taken) and wakes the
    /// consumer.
    pub fn put(&self, value: T) {
        {
            let mut slot = self.slot();
            *slot = Some(value);
            self.full.store(true, Ordering::SeqCst);
        }
        self.waker.wake();
    }

    /// Takes the value, if there is one.
    pub fn try_take(&self) -> Option<T> {
        if !self.full.load(Ordering::SeqCst) {
            return None;
        }
        let mut slot = self.slot();
        self.full.store(false, Ordering::SeqCst);
        slot.take()
    }

    /// Takes the value, or registers the consumer's waker for the next
    /// [`put`](Self::put).
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.try_take() {
            return Poll::Ready(value);
        }
        // Registered before the re-check: a `put` after the check finds
        // this waker, one before it is seen by the check.
        self.waker.register(cx.waker());
        match self.try_take() {
            Some(value) => Poll::Ready(value),
            None => Poll::Pending,
        }
    }
}

/// The consumer's side of a [`Mailbox`], for a task that polls it on
/// every sleep: polled again with the waker it registered last, and
/// nothing arrived, it skips the registration (two atomic
/// read-modify-writes). Sound because only a [`put`](Mailbox::put) takes
/// the registered waker, and it fills the box first, so a poll that finds
/// the box empty knows its registration still stands, provided every take
/// goes through this consumer.
#[derive(Debug)]
pub struct MailboxConsumer<'a, T> {
    mailbox: &'a Mailbox<T>,
    /// A clone of the waker registered last, while it still stands.
    parked: Option<Waker>,
}

impl<T> Mailbox<T> {
    /// The consumer handle; all takes must go through it while it is used.
    pub fn consumer(&self) -> MailboxConsumer<'_, T> {
        MailboxConsumer {
            mailbox: self,
            parked: None,
        }
    }
}

impl<T> MailboxConsumer<'_, T> {
    /// Takes the value, or makes sure the task's waker is registered for
    /// the next [`put`](Mailbox::put).
    pub fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.mailbox.try_take() {
            self.parked = None;
            return Poll::Ready(value);
        }
        if let Some(parked) = &self.parked {
            if parked.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let taken = self.mailbox.poll_take(cx);
        self.parked = match taken {
            Poll::Pending => Some(cx.waker().clone()),
            Poll::Ready(_) => None,
        };
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_put_wakes_the_waiting_consumer_and_the_latest_value_wins() {
        let mailbox = Mailbox::new();
        let count = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(mailbox.poll_take(&mut cx), Poll::Pending);
        mailbox.put(1);
        mailbox.put(2);
        assert!(
            count.0.load(Ordering::SeqCst) >= 1,
            "the consumer was woken"
        );
        assert_eq!(mailbox.poll_take(&mut cx), Poll::Ready(2));
        assert_eq!(mailbox.try_take(), None);
        // Woken again after a value was taken: a later put still wakes.
        assert_eq!(mailbox.poll_take(&mut cx), Poll::Pending);
        let before = count.0.load(Ordering::SeqCst);
        mailbox.put(3);
        assert_eq!(count.0.load(Ordering::SeqCst), before + 1);
        assert_eq!(mailbox.try_take(), Some(3));
    }

    #[test]
    fn a_consumer_polled_again_is_still_woken_by_the_next_put() {
        let mailbox = Mailbox::new();
        let count = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut consumer = mailbox.consumer();
        for round in 0..3u32 {
            // Several polls with the same waker: registered once.
            for _ in 0..3 {
                assert_eq!(consumer.poll_take(&mut cx), Poll::Pending);
            }
            let before = count.0.load(Ordering::SeqCst);
            mailbox.put(round);
            assert_eq!(count.0.load(Ordering::SeqCst), before + 1, "round {round}");
            assert_eq!(consumer.poll_take(&mut cx), Poll::Ready(round));
        }
        // A different waker is registered, not skipped.
        let other = Arc::new(Counter(AtomicUsize::new(0)));
        let other_waker = Waker::from(other.clone());
        assert_eq!(consumer.poll_take(&mut cx), Poll::Pending);
        let mut other_cx = Context::from_waker(&other_waker);
        assert_eq!(consumer.poll_take(&mut other_cx), Poll::Pending);
        mailbox.put(9);
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        assert_eq!(consumer.poll_take(&mut other_cx), Poll::Ready(9));
    }

    #[test]
    fn values_put_from_other_threads_all_reach_a_sleeping_consumer() {
        let mailbox = Arc::new(Mailbox::new());
        let producer = {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                for i in 1..=1000u32 {
                    mailbox.put(i);
                    while mailbox.full.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut last = 0;
        futures_lite::future::block_on(std::future::poll_fn(|cx| {
            while let Poll::Ready(v) = mailbox.poll_take(cx) {
                assert!(v > last, "values arrive in order, none twice");
                last = v;
                if v == 1000 {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        }));
        producer.join().unwrap();
    }
}
