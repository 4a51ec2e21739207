//! Ring throughput benchmark: packets/s and GB/s through the loopback pair
//! for 64 B to 12 KiB payloads on one and two threads, and of a bare
//! two-thread handoff of the same bytes (what the cores take to pass them),
//! each beside a memcpy of the same bytes measured in the same run, with its
//! host CPU time per packet or per MB. `--quick` (or `VMBDEV_BENCH_QUICK=1`) moves fewer
//! bytes; `VMBDEV_BENCH_PAYLOADS` (comma-separated) measures only those
//! payload sizes.

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("VMBDEV_BENCH_QUICK").is_some();
    let payloads: Vec<usize> = match std::env::var("VMBDEV_BENCH_PAYLOADS") {
        Ok(list) => list
            .split(',')
            .map(|p| {
                p.trim()
                    .parse()
                    .expect("VMBDEV_BENCH_PAYLOADS: a list of byte counts")
            })
            .collect(),
        Err(_) => vmbdev_bench::ring::PAYLOAD_SIZES.to_vec(),
    };
    let results = match vmbdev_bench::ring::run_payloads(&payloads, quick) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{:<36} {:>16} {:>16} {:>8} {:>12} {:>12}",
        "measurement", "measured", "memcpy", "ratio", "CPU", "memcpy CPU"
    );
    for r in results {
        println!(
            "{:<36} {:>16.3e} {:>16.3e} {:>7.1}% {:>12.1} {:>12.1}   ({}, CPU {})",
            r.name,
            r.value,
            r.baseline,
            r.ratio * 100.0,
            r.cpu.value,
            r.cpu.baseline,
            r.unit,
            r.cpu.unit.label()
        );
    }
}
