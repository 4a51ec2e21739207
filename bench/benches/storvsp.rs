//! storvsc → ring → storvsp → disk read benchmark against `pread` in the
//! same run, with the host CPU time per read of both. `VMBDEV_BENCH_MB`
//! sets the image size (default 1024); `VMBDEV_BENCH_LAYOUT=one` or
//! `threads` keeps only that layout, `VMBDEV_BENCH_DEPTH=N` only the
//! workloads of that depth, `VMBDEV_BENCH_ROUNDS` sets the measurements
//! of each side (default 5; more for a profile), and
//! `VMBDEV_BENCH_FORMAT=raw` serves the raw file instead of a VHDX of it;
//! `VMBDEV_BENCH_SPIN=N` has the threads layout poll its rings N times
//! before sleeping.

use vmbdev_bench::storvsp::{BenchConfig, make_image, run, table};

fn main() {
    let mb: u64 = std::env::var("VMBDEV_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("temporary directory");
    let image = dir.path().join("bench.raw");
    make_image(&image, mb << 20).expect("bench image");
    let mut config = BenchConfig::standard(image);
    if let Ok(bytes) = std::env::var("VMBDEV_BENCH_RUN_MB") {
        if let Ok(v) = bytes.parse::<u64>() {
            config.bytes_per_run = v << 20;
        }
    }
    if let Ok(only) = std::env::var("VMBDEV_BENCH_LAYOUT") {
        config
            .runs
            .retain(|(layout, _)| layout.name().starts_with(only.as_str()));
    }
    if let Some(spin) = std::env::var("VMBDEV_BENCH_SPIN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        config.spin = spin;
    }
    if std::env::var("VMBDEV_BENCH_FORMAT").as_deref() == Ok("raw") {
        config.format = vmbdev_bench::storvsp::ImageFormat::Raw;
    }
    if let Some(rounds) = std::env::var("VMBDEV_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        config.rounds = rounds;
    }
    if let Some(depth) = std::env::var("VMBDEV_BENCH_DEPTH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        config.workloads.retain(|w| w.depth == depth);
    }
    let rows = run(&config).expect("benchmark");
    print!("{}", table(&rows));
}
