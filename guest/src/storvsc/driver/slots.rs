//! Where each in-flight request of a channel waits for its completion: a
//! fixed table of reply slots, claimed per request and found again by the
//! transaction id, so a request costs no heap allocation and no map
//! lookup. The completion thread copies the reply into the slot and wakes
//! the request; a request dropped before its reply frees its slot, and a
//! late reply for it is then counted as unexpected, never delivered to the
//! slot's next user (the id carries a generation).
//!
//! When the requests read their own completions, the table also records
//! which of them wait for a turn at the channel's reader, one bit per
//! slot, so the request giving the reader up wakes the next one without
//! scanning the slots.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use vmbdev_ring::CountedEvent;

/// Requests in flight per channel before a new one waits for a slot.
pub(super) const SLOTS: usize = 256;
/// Longest completion payload kept: twice the largest VSTOR packet (a
/// reply moves by value through the request's future, so its size is paid
/// on every request); longer ones are cut to it.
pub(super) const MAX_REPLY: usize = 2 * vmbdev_protocol::vstor::PACKET_SIZE_WIN8;
/// Words of the bitmap of slots waiting for the reader.
const READER_WORDS: usize = SLOTS.div_ceil(64);

/// A completion payload, inline.
pub(super) struct Reply {
    len: usize,
    bytes: [u8; MAX_REPLY],
}

impl Reply {
    /// The payload.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Set in a slot's state once its reply is in `reply`.
const DONE: u64 = 1 << 63;

struct Slot {
    /// The transaction id this slot waits for (0 while free), with
    /// [`DONE`] once the reply is in. Claiming, freeing and waiting touch
    /// only this word; the lock is taken only to move a reply.
    state: AtomicU64,
    /// Written by the deliverer under the lock, which it holds from its
    /// check of `state` to setting `DONE`, so a slot freed and claimed
    /// again meanwhile never sees the old request's reply.
    reply: Mutex<Reply>,
    waker: AtomicWaker,
    /// Claims of this slot so far: the high bits of its next id. Only the
    /// claimer (which holds the slot alone) reads and writes it.
    claims: AtomicU64,
}

/// A channel's reply slots.
pub(super) struct Waiters {
    slots: Box<[Slot]>,
    free: Mutex<Vec<u16>>,
    freed: CountedEvent,
    closed: AtomicBool,
    /// Bit `i` set: the request in slot `i` waits for a turn at the reader.
    want_reader: [AtomicU64; READER_WORDS],
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("free", &lock(&self.free).len())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Waiters {
    fn default() -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU64::new(0),
                reply: Mutex::new(Reply {
                    len: 0,
                    bytes: [0; MAX_REPLY],
                }),
                waker: AtomicWaker::new(),
                claims: AtomicU64::new(0),
            })
            .collect();
        Self {
            slots,
            // Popped from the end: slot 0 first.
            free: Mutex::new((0..SLOTS as u16).rev().collect()),
            freed: CountedEvent::new(),
            closed: AtomicBool::new(false),
            want_reader: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A claimed slot; frees it when dropped.
pub(super) struct Claim<'a> {
    waiters: &'a Waiters,
    index: u16,
    tid: u64,
}

impl Claim<'_> {
    /// The transaction id to send the request with.
    pub(super) fn tid(&self) -> u64 {
        self.tid
    }

    /// Waits for the reply; `None` if the channel closed first.
    pub(super) fn reply(&self) -> impl Future<Output = Option<Reply>> + '_ {
        let slot = &self.waiters.slots[usize::from(self.index)];
        let done = self.tid | DONE;
        futures_lite::future::poll_fn(move |cx| {
            // Looked at, registered, looked at again: a reply delivered in
            // between is seen on the second look.
            for pass in 0..2 {
                if slot.state.load(Ordering::Acquire) == done {
                    // The deliverer set DONE holding the lock: taking it
                    // here sees the whole reply.
                    let reply = lock(&slot.reply);
                    let mut out = Reply {
                        len: reply.len,
                        bytes: [0; MAX_REPLY],
                    };
                    out.bytes[..reply.len].copy_from_slice(reply.bytes());
                    return Poll::Ready(Some(out));
                }
                if self.waiters.closed.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                if pass == 0 {
                    slot.waker.register(cx.waker());
                }
            }
            Poll::Pending
        })
    }

    /// Records that this request waits for a turn at the reader; the
    /// request giving it up wakes it with [`Waiters::wake_next_reader`]
    /// through the waker [`Claim::reply`] registered.
    pub(super) fn want_reader(&self) {
        let (word, bit) = reader_bit(self.index);
        self.waiters.want_reader[word].fetch_or(bit, Ordering::SeqCst);
        // Pairs with the fence in `wake_next_reader`: either this request
        // sees the reader free on its next try, or the one releasing it
        // sees this bit.
        fence(Ordering::SeqCst);
    }

    /// Withdraws [`Claim::want_reader`]: the request holds the reader now,
    /// or no longer waits.
    pub(super) fn stop_wanting_reader(&self) {
        let (word, bit) = reader_bit(self.index);
        let word = &self.waiters.want_reader[word];
        // Only this request sets its bit, so a clear bit stays clear.
        if word.load(Ordering::Relaxed) & bit != 0 {
            word.fetch_and(!bit, Ordering::SeqCst);
        }
    }
}

/// Word and bit of slot `index` in the bitmap of reader waits.
fn reader_bit(index: u16) -> (usize, u64) {
    let index = usize::from(index);
    (index / 64, 1 << (index % 64))
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let slot = &self.waiters.slots[usize::from(self.index)];
        self.stop_wanting_reader();
        // A deliverer past its check of the old id fails its DONE exchange.
        slot.state.store(0, Ordering::Release);
        // The waker stays: only a reply to this slot's next id, a turn at
        // the reader for its next user, or closing wakes it, and the next
        // user registers its own before it sleeps.
        lock(&self.waiters.free).push(self.index);
        self.waiters.freed.notify(1);
    }
}

impl Waiters {
    /// Claims a slot, waiting while all are in use.
    pub(super) async fn claim(&self) -> Claim<'_> {
        loop {
            if let Some(claim) = self.try_claim() {
                return claim;
            }
            let freed = self.freed.listen();
            if let Some(claim) = self.try_claim() {
                return claim;
            }
            freed.await;
        }
    }

    fn try_claim(&self) -> Option<Claim<'_>> {
        let index = lock(&self.free).pop()?;
        // The generation in the high bits keeps a late reply to a former
        // user of the slot from matching.
        let slot = &self.slots[usize::from(index)];
        let generation = slot.claims.load(Ordering::Relaxed) + 1;
        slot.claims.store(generation, Ordering::Relaxed);
        let tid = ((generation << 16) & !DONE) | u64::from(index);
        slot.state.store(tid, Ordering::Release);
        Some(Claim {
            waiters: self,
            index,
            tid,
        })
    }

    /// Hands `payload` to the request waiting for `tid`; `false` if none
    /// is (a reply nobody asked for, or one to a request given up).
    pub(super) fn deliver(&self, tid: u64, payload: &[u8]) -> bool {
        let Some(slot) = self.slots.get((tid & 0xffff) as usize) else {
            return false;
        };
        if tid == 0 || tid & DONE != 0 {
            return false;
        }
        {
            let mut reply = lock(&slot.reply);
            // Answered already (a duplicate), or not this request's slot.
            if slot.state.load(Ordering::Acquire) != tid {
                return false;
            }
            let len = payload.len().min(MAX_REPLY);
            reply.bytes[..len].copy_from_slice(&payload[..len]);
            reply.len = len;
            let marked =
                slot.state
                    .compare_exchange(tid, tid | DONE, Ordering::AcqRel, Ordering::Acquire);
            if marked.is_err() {
                // Freed (and maybe claimed again) meanwhile.
                return false;
            }
        }
        slot.waker.wake();
        true
    }

    /// Wakes one request waiting for a turn at the reader, if any: called
    /// after the reader was let go. Its bit stays set until it takes the
    /// reader or gives up waiting, so a wake that finds it already
    /// answered is passed on (see the reader's hand-off in `channel`).
    /// Returns whether a request was woken.
    pub(super) fn wake_next_reader(&self) -> bool {
        fence(Ordering::SeqCst);
        for (word, bits) in self.want_reader.iter().enumerate() {
            let bits = bits.load(Ordering::SeqCst);
            if bits != 0 {
                let index = word * 64 + bits.trailing_zeros() as usize;
                self.slots[index].waker.wake();
                return true;
            }
        }
        false
    }

    /// Ends every wait: the channel is gone.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in self.slots.iter() {
            slot.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn a_reply_reaches_its_request_and_a_stale_one_does_not() {
        let waiters = Waiters::default();
        let first = block_on(waiters.claim());
        let stale = first.tid();
        assert!(waiters.deliver(stale, b"one"));
        assert!(!waiters.deliver(stale, b"two"), "a duplicate reply");
        assert!(!waiters.deliver(stale | DONE, b"marked"));
        assert_eq!(block_on(first.reply()).unwrap().bytes(), b"one");
        drop(first);
        // The slot is reused with a new id; the old id no longer matches.
        let second = block_on(waiters.claim());
        assert_eq!(second.tid() & 0xffff, stale & 0xffff);
        assert_ne!(second.tid(), stale);
        assert!(!waiters.deliver(stale, b"late"));
        assert!(!waiters.deliver(0, b"zero"));
        assert!(!waiters.deliver(u64::from(u16::MAX), b"beyond"));
        let mut wait = Box::pin(second.reply());
        assert!(block_on(poll_once(wait.as_mut())).is_none());
        assert!(waiters.deliver(second.tid(), &[7; MAX_REPLY + 10]));
        let reply = block_on(wait).unwrap();
        assert_eq!(reply.bytes(), &[7; MAX_REPLY][..], "cut to MAX_REPLY");
    }

    #[test]
    fn closing_ends_every_wait_and_a_full_table_waits_for_a_free_slot() {
        let waiters = Waiters::default();
        let claims: Vec<_> = (0..SLOTS).map(|_| block_on(waiters.claim())).collect();
        let mut next = Box::pin(waiters.claim());
        assert!(block_on(poll_once(next.as_mut())).is_none(), "table full");
        let tids: Vec<u64> = claims.iter().map(Claim::tid).collect();
        drop(claims);
        let claim = block_on(next);
        assert!(!tids.contains(&claim.tid()), "a fresh id");
        waiters.close();
        assert!(block_on(claim.reply()).is_none());
    }
}
