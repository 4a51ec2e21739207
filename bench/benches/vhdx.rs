//! VHDX read throughput against pread on a raw file holding the same bytes,
//! measured in the same run over page-cached files: sequential 1 MiB reads
//! and random 4 KiB reads. Prints each figure beside its baseline and the
//! ratio, then the host CPU time per unit of both. The measuring lives in `vmbdev_bench::vhdx`.
//!
//! `--quick` (or `VMBDEV_BENCH_QUICK=1`) uses a 64 MiB disk;
//! `VMBDEV_BENCH_MIB` sets the disk size in MiB (default 1024).

use vmbdev_bench::vhdx::{BenchConfig, run};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("VMBDEV_BENCH_QUICK").is_some();
    let mut config = BenchConfig::new(quick);
    if let Some(mib) = std::env::var("VMBDEV_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.disk_bytes = mib << 20;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let results = match run(dir.path(), &config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "disk: {} MiB, VHDX block size 32 MiB",
        config.disk_bytes >> 20
    );
    println!(
        "{:<32} {:>14} {:>14} {:>8} {:>10} {:>10}",
        "measurement", "vhdx", "raw pread", "ratio", "vhdx CPU", "pread CPU"
    );
    for r in results {
        println!(
            "{:<32} {:>14.0} {:>14.0} {:>8.3} {:>10.1} {:>10.1}   ({}, CPU {})",
            r.name,
            r.value,
            r.baseline,
            r.ratio,
            r.cpu.value,
            r.cpu.baseline,
            r.unit,
            r.cpu.unit.label()
        );
    }
}
