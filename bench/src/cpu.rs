//! Host CPU time beside wall time: every suite times its measured side and
//! its baseline with a [`Stopwatch`], which reads both clocks, and reports
//! the CPU time per unit of work ([`CpuPerUnit`]) next to the rate.
//!
//! The CPU clock is the whole process's (`CLOCK_PROCESS_CPUTIME_ID`, user
//! and system time of every thread, the ones that have exited included:
//! the sum `getrusage(RUSAGE_SELF)` reports, to the nanosecond instead of
//! the microsecond). A layout that spreads one request over a guest
//! thread, a device thread and a completion thread is charged for all
//! three, and a wall figure that improves by burning a second core shows
//! up here. Run beside other work in the same process (a test harness),
//! the figures include that work too.
//!
//! A device served by another process ([`other_process_cpu`]) is read from
//! `/proc`, summed over its live threads.

use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// CPU time this process has used so far, every thread's, user and system.
pub fn process_cpu() -> Duration {
    duration_of(clock_gettime(ClockId::ProcessCPUTime))
}

/// CPU time the calling thread has used so far, user and system.
pub fn thread_cpu() -> Duration {
    duration_of(clock_gettime(ClockId::ThreadCPUTime))
}

fn duration_of(t: rustix::time::Timespec) -> Duration {
    // The kernel's CPU clocks start at zero and never go negative.
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU time the live threads of process `pid` have used so far (each
/// thread's `/proc/PID/task/TID/schedstat`, the scheduler's nanoseconds);
/// `None` if `/proc` does not say. Threads that exited are not counted, so
/// sample it while the threads doing the work are alive.
pub fn other_process_cpu(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks {
        let path = task.ok()?.path().join("schedstat");
        // A thread that ended since the listing has nothing more to add.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
        total = total.saturating_add(ns);
    }
    Some(Duration::from_nanos(total))
}

/// Wall and process CPU time of one timed piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Wall time.
    pub wall: Duration,
    /// CPU time of the process (every thread) over the same interval.
    pub cpu: Duration,
}

impl Span {
    /// Wall seconds, at least a nanosecond (so rates stay finite).
    pub fn secs(&self) -> f64 {
        self.wall.as_secs_f64().max(1e-9)
    }
}

/// Both clocks read at a start.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    /// Reads both clocks now.
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// Wall and CPU time since [`Self::start`].
    pub fn stop(&self) -> Span {
        Span {
            wall: self.wall.elapsed(),
            cpu: process_cpu().saturating_sub(self.cpu),
        }
    }
}

/// Runs `work` and returns its result with its wall and CPU time.
pub fn timed<T>(work: impl FnOnce() -> T) -> (T, Span) {
    let watch = Stopwatch::start();
    let result = work();
    (result, watch.stop())
}

/// What a CPU figure is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuUnit {
    /// Nanoseconds per packet.
    NsPerPacket,
    /// Nanoseconds per request (one read).
    NsPerRequest,
    /// Microseconds per 10^6 bytes.
    UsPerMb,
    /// Microseconds per 2^20 bytes.
    UsPerMib,
}

impl CpuUnit {
    /// How tables and JSON spell the unit.
    pub fn label(self) -> &'static str {
        match self {
            Self::NsPerPacket => "ns/packet",
            Self::NsPerRequest => "ns/request",
            Self::UsPerMb => "µs/MB",
            Self::UsPerMib => "µs/MiB",
        }
    }

    /// `cpu` spread over `amount` units (packets, requests, MB or MiB:
    /// what the unit divides by).
    pub fn per(self, cpu: Duration, amount: f64) -> f64 {
        let time = match self {
            Self::NsPerPacket | Self::NsPerRequest => cpu.as_nanos() as f64,
            Self::UsPerMb | Self::UsPerMib => cpu.as_nanos() as f64 / 1e3,
        };
        time / amount.max(f64::MIN_POSITIVE)
    }
}

/// Host CPU time per unit of work of the measured side and of its
/// baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPerUnit {
    /// The measured side.
    pub value: f64,
    /// The baseline of the same run.
    pub baseline: f64,
    /// What both are per.
    pub unit: CpuUnit,
}

#[cfg(test)]
impl CpuPerUnit {
    /// Whether both figures are real measurements: finite and above zero.
    pub(crate) fn both_measured(&self) -> bool {
        [self.value, self.baseline]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
    }
}

impl CpuPerUnit {
    /// The figures of `amount` units of work done by `measured` and by
    /// `baseline`.
    pub fn of(unit: CpuUnit, amount: f64, measured: Span, baseline: Span) -> Self {
        Self {
            value: unit.per(measured.cpu, amount),
            baseline: unit.per(baseline.cpu, amount),
            unit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins on this thread until it has used `cpu` of CPU time (a CPU
    /// budget, not a wall-clock one: a descheduled thread spins longer),
    /// or a bounded number of rounds if the thread clock does not move.
    fn spin_for(cpu: Duration) -> Duration {
        let start = thread_cpu();
        let mut x = 1u64;
        for _ in 0..1_000_000 {
            if thread_cpu().saturating_sub(start) >= cpu {
                break;
            }
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        thread_cpu().saturating_sub(start)
    }

    #[test]
    fn process_cpu_counts_a_thread_that_worked_and_exited() {
        let watch = Stopwatch::start();
        // The work runs on a thread that ends before the stop: a clock of
        // the calling thread alone would miss it.
        let worked = std::thread::spawn(|| spin_for(Duration::from_millis(30)))
            .join()
            .unwrap();
        let span = watch.stop();
        assert!(worked >= Duration::from_millis(30), "{worked:?}");
        assert!(span.cpu >= worked, "{span:?} < {worked:?} of the worker");
    }

    #[test]
    fn process_cpu_grows_with_work_on_this_thread() {
        let before = process_cpu();
        let worked = spin_for(Duration::from_millis(10));
        let after = process_cpu();
        assert!(after.saturating_sub(before) >= worked);
    }

    #[test]
    fn cpu_per_unit_divides_in_the_unit() {
        let span = |cpu_ms| Span {
            wall: Duration::from_secs(1),
            cpu: Duration::from_millis(cpu_ms),
        };
        // 2 ms over 1000 packets = 2000 ns each; 1 ms = 1000 ns.
        let packets = CpuPerUnit::of(CpuUnit::NsPerPacket, 1000.0, span(2), span(1));
        assert_eq!((packets.value, packets.baseline), (2000.0, 1000.0));
        // 3 ms over 4 MB = 750 µs per MB.
        let mb = CpuPerUnit::of(CpuUnit::UsPerMb, 4.0, span(3), span(0));
        assert_eq!((mb.value, mb.baseline), (750.0, 0.0));
        assert_eq!(mb.unit.label(), "µs/MB");
    }

    #[test]
    fn another_process_is_read_from_proc() {
        let own = other_process_cpu(std::process::id()).expect("/proc/self/task");
        assert!(own > Duration::ZERO);
        assert_eq!(other_process_cpu(u32::MAX), None);
    }
}
