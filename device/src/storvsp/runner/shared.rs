//! What a channel task shares with the device that owns it: the table of
//! requests taken and not answered (what a save keeps), the device
//! counters, and the signal that stops the task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use vmbdev_ring::GpaRange;

use crate::storvsp::Completion;
use crate::violation::{Violation, ViolationLog};

/// A request taken from the ring and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingRequest {
    /// An SRB whose job may not have finished: re-run it.
    Rerun {
        /// The vstor payload as received.
        payload: Vec<u8>,
        /// GPA ranges of the packet (empty for in-band).
        ranges: Vec<GpaRange>,
        /// Transaction id to echo.
        transaction_id: u64,
    },
    /// A completion computed but not yet written to the ring: resend it.
    Reply(Completion),
}

/// Requests of one channel read but not answered, in arrival order.
///
/// A slab: entries live in a vector sized once (to the queue depth, see
/// [`with_capacity`](Self::with_capacity)) and freed slots are reused, so
/// the steady state allocates nothing. It grows only when more requests
/// are pending than that, which a restore of a larger table can cause.
#[derive(Debug, Default)]
pub struct PendingTable {
    inner: Mutex<Slab>,
}

#[derive(Debug, Default)]
struct Slab {
    /// Sequence number given to the next insertion (orders snapshots).
    next: u64,
    entries: Vec<Option<(u64, PendingRequest)>>,
    /// Indices of the `None` slots in `entries`.
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    fn insert(&mut self, request: PendingRequest) -> PendingKey {
        let seq = self.next;
        self.next += 1;
        let index = match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some((seq, request));
                index
            }
            None => {
                self.entries.push(Some((seq, request)));
                // Keep room for this slot in the free list, so a later
                // remove does not allocate either.
                self.free.reserve(self.entries.len() - self.free.len());
                self.entries.len() - 1
            }
        };
        self.len += 1;
        PendingKey { index, seq }
    }

    /// Takes every entry out, oldest first.
    fn drain_sorted(&mut self) -> Vec<PendingRequest> {
        let mut taken: Vec<(u64, PendingRequest)> =
            self.entries.iter_mut().filter_map(Option::take).collect();
        taken.sort_by_key(|(seq, _)| *seq);
        self.free.clear();
        self.free.extend((0..self.entries.len()).rev());
        self.len = 0;
        taken.into_iter().map(|(_, request)| request).collect()
    }
}

/// Where a pending request sits in its [`PendingTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PendingKey {
    index: usize,
    seq: u64,
}

impl PendingTable {
    /// An empty table with room for `capacity` requests.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Slab {
                next: 0,
                entries: Vec::with_capacity(capacity),
                free: Vec::with_capacity(capacity),
                len: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for `capacity` entries in all (no-op if there is).
    pub(super) fn reserve(&self, capacity: usize) {
        let mut slab = self.lock();
        let more = capacity.saturating_sub(slab.entries.len());
        slab.entries.reserve(more);
        let free_more = capacity.saturating_sub(slab.free.len());
        slab.free.reserve(free_more);
    }

    pub(super) fn insert(&self, request: PendingRequest) -> PendingKey {
        self.lock().insert(request)
    }

    pub(super) fn remove(&self, key: PendingKey) {
        let mut slab = self.lock();
        let Some(slot) = slab.entries.get_mut(key.index) else {
            return;
        };
        // The sequence number guards against a slot refilled after a
        // `replace`.
        if matches!(slot, Some((seq, _)) if *seq == key.seq) {
            *slot = None;
            slab.free.push(key.index);
            slab.len -= 1;
        }
    }

    /// Number of pending requests.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether no request is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the pending requests, oldest first.
    pub fn snapshot(&self) -> Vec<PendingRequest> {
        let slab = self.lock();
        let mut all: Vec<&(u64, PendingRequest)> = slab.entries.iter().flatten().collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter()
            .map(|(_, request)| request.clone())
            .collect()
    }

    /// Removes and returns every pending request, oldest first.
    pub fn take_all(&self) -> Vec<PendingRequest> {
        self.lock().drain_sorted()
    }

    /// Replaces the contents (used on restore).
    pub fn replace(&self, requests: Vec<PendingRequest>) {
        let mut slab = self.lock();
        let _ = slab.drain_sorted();
        for request in requests {
            slab.insert(request);
        }
    }
}

/// Counters of one device, shared by its channels. Protocol violations
/// go to a [`ViolationLog`]: exact counts per kind, rate-limited logging.
#[derive(Debug)]
pub struct StorvspStats {
    violations: ViolationLog,
    requests: AtomicU64,
    completions: AtomicU64,
    notifications: AtomicU64,
}

impl Default for StorvspStats {
    fn default() -> Self {
        Self::with_violation_log(ViolationLog::new("storvsp"))
    }
}

impl StorvspStats {
    /// Counters whose violations go to `violations`.
    pub fn with_violation_log(violations: ViolationLog) -> Self {
        Self {
            violations,
            requests: AtomicU64::default(),
            completions: AtomicU64::default(),
            notifications: AtomicU64::default(),
        }
    }

    /// Packets that were not valid vstor requests (not answered), and
    /// ring failures.
    pub fn violations(&self) -> u64 {
        self.violations.total()
    }

    /// The violations per kind.
    pub fn violation_log(&self) -> &ViolationLog {
        &self.violations
    }

    /// Requests taken from the rings.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Completions written to the rings.
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// Unsolicited packets (ENUMERATE_BUS) written.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    pub(super) fn violation(&self, channel: u16, what: &dyn Violation) {
        self.violations.record(channel, what);
    }

    pub(super) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_completion(&self) {
        self.completions.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_notification(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }
}
