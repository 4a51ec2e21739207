//! The storvsp request path allocates nothing per request once warm: a
//! counting global allocator watches 4 KiB GPA-direct READs driven by a
//! raw guest over an in-process ring (guest and device on this thread).

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use vmbdev_bench::ioperf::IoperfRig;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations made while `f` runs.
fn allocations_during(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    let change = region.change();
    change.allocations + change.reallocations
}

// No test harness (`harness = false`): the counter is process-wide, and
// the harness allocates on its own threads while a test runs.
fn main() {
    storvsp_reads_allocate_nothing_per_request_once_warm();
}

fn storvsp_reads_allocate_nothing_per_request_once_warm() {
    // The counter does count (else the zero below would prove nothing).
    let seen = allocations_during(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert!(seen >= 1, "the counting allocator saw {seen} allocations");
    let mut rig = IoperfRig::new().unwrap();
    for depth in [1usize, 4, 32] {
        // Warm-up: first waits register listeners, the bounce buffer grows.
        assert_eq!(rig.run(50, depth).unwrap(), 50 * depth as u64);
        let iterations = (1000 / depth as u64).max(1);
        let mut good = 0;
        let allocations = allocations_during(|| good = rig.run(iterations, depth).unwrap());
        assert_eq!(good, iterations * depth as u64, "every READ succeeds");
        assert_eq!(
            allocations,
            0,
            "{allocations} allocations over {} requests at depth {depth}",
            iterations * depth as u64
        );
    }
}
