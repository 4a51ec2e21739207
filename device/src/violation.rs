//! Guest protocol violations, counted per kind and logged at a rate limit.
//!
//! Every device reports a guest's protocol violation to its
//! [`ViolationLog`]. The count of each kind is exact and can be read at
//! any time; the log is bounded so a guest that sends bad packets in a
//! loop cannot flood the host's log: the first
//! [`ViolationPolicy::logged_per_kind`] violations of each kind are logged
//! one `warn` event each, later ones are only counted, and at most one
//! summary event (how many went unlogged since the previous summary) is
//! emitted per [`ViolationPolicy::summary_interval`]. A summary is emitted
//! when a violation arrives, so a guest that stops misbehaving produces no
//! more events. The time comes from a [`Clock`], injectable so tests count
//! events without depending on the wall clock.
//!
//! Kinds are `&'static str` names chosen by the device code, never built
//! from guest bytes, so the table of kinds stays as small as the code.
//! Whether a violation fails the packet or stops the channel is the
//! device's choice, documented in its module.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A monotonic time source for rate limiting.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time elapsed since an arbitrary fixed origin; never decreases.
    fn now(&self) -> Duration;
}

/// [`Clock`] on [`Instant`]: the default.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A [`Clock`] that moves only when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// How much of a violation storm reaches the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViolationPolicy {
    /// Violations of one kind logged individually before that kind is
    /// only counted.
    pub logged_per_kind: u32,
    /// Shortest time between two summaries of unlogged violations.
    pub summary_interval: Duration,
}

impl Default for ViolationPolicy {
    fn default() -> Self {
        Self {
            logged_per_kind: 8,
            summary_interval: Duration::from_secs(10),
        }
    }
}

/// Something a device reports as a violation: a fixed kind name and a
/// description of this instance (which may quote guest values).
pub trait Violation: Display {
    /// The kind it is counted under.
    fn kind(&self) -> &'static str;
}

impl Violation for &'static str {
    fn kind(&self) -> &'static str {
        self
    }
}

impl Violation for vmbdev_ring::RingError {
    fn kind(&self) -> &'static str {
        "ring failure"
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct KindCount {
    seen: u64,
    logged: u32,
}

#[derive(Debug)]
struct LogState {
    kinds: BTreeMap<&'static str, KindCount>,
    unlogged_since_summary: u64,
    last_summary: Duration,
}

/// Per-kind violation counts of one device and its rate-limited log.
/// Shared by the device's channels.
#[derive(Debug)]
pub struct ViolationLog {
    device: &'static str,
    policy: ViolationPolicy,
    clock: Arc<dyn Clock>,
    state: Mutex<LogState>,
}

impl ViolationLog {
    /// A log for `device` (its name in log events) with the default
    /// policy and the monotonic clock.
    pub fn new(device: &'static str) -> Self {
        Self::with_policy(
            device,
            ViolationPolicy::default(),
            Arc::new(MonotonicClock::default()),
        )
    }

    /// A log with an explicit policy and clock.
    pub fn with_policy(
        device: &'static str,
        policy: ViolationPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let last_summary = clock.now();
        Self {
            device,
            policy,
            clock,
            state: Mutex::new(LogState {
                kinds: BTreeMap::new(),
                unlogged_since_summary: 0,
                last_summary,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one violation seen on `channel` and logs it if the policy
    /// allows.
    pub fn record(&self, channel: u16, violation: &dyn Violation) {
        self.record_as(channel, violation.kind(), violation);
    }

    /// [`record`](Self::record) with the kind given apart from the
    /// description.
    pub fn record_as(&self, channel: u16, kind: &'static str, detail: &dyn Display) {
        let mut state = self.lock();
        let count = state.kinds.entry(kind).or_default();
        count.seen += 1;
        if count.logged < self.policy.logged_per_kind {
            count.logged += 1;
            let last = count.logged == self.policy.logged_per_kind;
            drop(state);
            tracing::warn!(
                device = self.device,
                channel,
                kind,
                %detail,
                more_only_counted = last,
                "guest protocol violation"
            );
            return;
        }
        state.unlogged_since_summary += 1;
        let now = self.clock.now();
        if now.saturating_sub(state.last_summary) < self.policy.summary_interval {
            return;
        }
        state.last_summary = now;
        let unlogged = std::mem::take(&mut state.unlogged_since_summary);
        let total: u64 = state.kinds.values().map(|k| k.seen).sum();
        drop(state);
        tracing::warn!(
            device = self.device,
            unlogged,
            total,
            "guest protocol violations counted without a log event since the last summary"
        );
    }

    /// How many violations of `kind` were seen.
    pub fn count(&self, kind: &str) -> u64 {
        self.lock().kinds.get(kind).map_or(0, |k| k.seen)
    }

    /// How many violations were seen in all.
    pub fn total(&self) -> u64 {
        self.lock().kinds.values().map(|k| k.seen).sum()
    }

    /// Every kind seen with its count, by kind name.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        self.lock()
            .kinds
            .iter()
            .map(|(&kind, count)| (kind, count.seen))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A subscriber that counts `warn` and more severe events, for tests
    /// that check a log stays bounded.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct EventCounter {
        events: Arc<AtomicUsize>,
    }

    impl EventCounter {
        pub(crate) fn count(&self) -> usize {
            self.events.load(Ordering::SeqCst)
        }
    }

    impl tracing::Subscriber for EventCounter {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() <= tracing::Level::WARN {
                self.events.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn log_with(clock: &Arc<ManualClock>) -> ViolationLog {
        ViolationLog::with_policy(
            "test",
            ViolationPolicy {
                logged_per_kind: 3,
                summary_interval: Duration::from_secs(5),
            },
            clock.clone(),
        )
    }

    #[test]
    fn a_storm_is_counted_exactly_and_logged_a_bounded_number_of_times() {
        let clock = Arc::new(ManualClock::default());
        let log = log_with(&clock);
        let events = EventCounter::default();
        tracing::subscriber::with_default(events.clone(), || {
            for _ in 0..10_000 {
                log.record(0, &"bad a");
            }
            for _ in 0..500 {
                log.record(1, &"bad b");
            }
        });
        assert_eq!(log.count("bad a"), 10_000);
        assert_eq!(log.count("bad b"), 500);
        assert_eq!(log.count("never"), 0);
        assert_eq!(log.total(), 10_500);
        assert_eq!(log.counts(), vec![("bad a", 10_000), ("bad b", 500)]);
        // 3 per kind, and no summary: the clock never reached 5 s.
        assert_eq!(events.count(), 6);
    }

    #[test]
    fn one_summary_per_interval_while_the_storm_lasts() {
        let clock = Arc::new(ManualClock::default());
        let log = log_with(&clock);
        let events = EventCounter::default();
        tracing::subscriber::with_default(events.clone(), || {
            for _ in 0..3 {
                log.record(0, &"bad");
            }
            assert_eq!(events.count(), 3);
            for _ in 0..100 {
                log.record(0, &"bad");
            }
            assert_eq!(events.count(), 3, "suppressed before the interval");
            clock.advance(Duration::from_secs(4));
            log.record(0, &"bad");
            assert_eq!(events.count(), 3, "4 s is still inside the interval");
            clock.advance(Duration::from_secs(1));
            log.record(0, &"bad");
            assert_eq!(events.count(), 4, "a summary at 5 s");
            for _ in 0..1000 {
                log.record(0, &"bad");
            }
            assert_eq!(events.count(), 4, "one summary per interval");
            clock.advance(Duration::from_secs(60));
            log.record(0, &"bad");
            assert_eq!(events.count(), 5);
        });
        assert_eq!(log.count("bad"), 3 + 100 + 1 + 1 + 1000 + 1);
    }

    #[test]
    fn a_zero_limit_logs_only_summaries() {
        let clock = Arc::new(ManualClock::default());
        let log = ViolationLog::with_policy(
            "test",
            ViolationPolicy {
                logged_per_kind: 0,
                summary_interval: Duration::ZERO,
            },
            clock,
        );
        let events = EventCounter::default();
        tracing::subscriber::with_default(events.clone(), || {
            log.record(0, &"bad");
            log.record(0, &"bad");
        });
        // A zero interval lets every violation summarise itself.
        assert_eq!(events.count(), 2);
        assert_eq!(log.count("bad"), 2);
    }
}
