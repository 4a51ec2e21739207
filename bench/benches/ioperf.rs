//! storvsp in the shape of OpenVMM's `ioperf`: one thread, raw guest,
//! 16 KiB rings, 64 KiB RAM disk, 4 KiB GPA-direct READ(10)s at depths 1,
//! 4, 16 and 32, with the process CPU time per request.
//! `VMBDEV_BENCH_REQUESTS` sets the requests per depth (default
//! 2,000,000); `VMBDEV_BENCH_ROUNDS` repeats the whole set.

use vmbdev_bench::ioperf::{run_all, table};

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let requests = env("VMBDEV_BENCH_REQUESTS", 2_000_000);
    for _ in 0..env("VMBDEV_BENCH_ROUNDS", 1) {
        let rows = run_all(requests).expect("ioperf benchmark");
        print!("{}", table(&rows));
    }
}
