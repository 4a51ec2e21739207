//! What a channel task shares with the device that owns it: the table of
//! requests taken and not answered (what a save keeps), the device
//! counters, and the signal that stops the task.

use std::collections::BTreeMap;
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
#[derive(Debug, Default)]
pub struct PendingTable {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, PendingRequest>>,
}

impl PendingTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PendingRequest>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, request: PendingRequest) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(seq, request);
        seq
    }

    pub(super) fn remove(&self, seq: u64) {
        self.lock().remove(&seq);
    }

    /// Number of pending requests.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the pending requests, oldest first.
    pub fn snapshot(&self) -> Vec<PendingRequest> {
        self.lock().values().cloned().collect()
    }

    /// Removes and returns every pending request, oldest first.
    pub fn take_all(&self) -> Vec<PendingRequest> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// Replaces the contents (used on restore).
    pub fn replace(&self, requests: Vec<PendingRequest>) {
        let mut map = self.lock();
        map.clear();
        for request in requests {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            map.insert(seq, request);
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
