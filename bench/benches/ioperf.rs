//! storvsp in the shape of OpenVMM's `ioperf`: one thread, raw guest,
//! 16 KiB rings, 64 KiB RAM disk, 4 KiB GPA-direct READ(10)s at depths 1,
//! 4, 16 and 32, with the process CPU time per request.
//! `VMBDEV_BENCH_REQUESTS` sets the requests per depth (default
//! 2,000,000); `VMBDEV_BENCH_ROUNDS` repeats the whole set;
//! `VMBDEV_BENCH_DEPTHS` (comma-separated) runs only those depths.

use vmbdev_bench::ioperf::{DEPTHS, run_depths, table};

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let requests = env("VMBDEV_BENCH_REQUESTS", 2_000_000);
    let depths: Vec<usize> = match std::env::var("VMBDEV_BENCH_DEPTHS") {
        Ok(list) => list
            .split(',')
            .map(|d| {
                d.trim()
                    .parse()
                    .expect("VMBDEV_BENCH_DEPTHS: a list of numbers")
            })
            .collect(),
        Err(_) => DEPTHS.to_vec(),
    };
    for _ in 0..env("VMBDEV_BENCH_ROUNDS", 1) {
        let rows = run_depths(&depths, requests).expect("ioperf benchmark");
        print!("{}", table(&rows));
    }
}
