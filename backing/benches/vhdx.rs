//! VHDX read throughput against pread on a raw file holding the same bytes,
//! measured in the same run over page-cached files: sequential 1 MiB reads
//! and random 4 KiB reads. Prints the ratios.
//!
//! `VMBDEV_BENCH_MIB` sets the disk size in MiB (default 1024).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_backing::vhdx::{Vhdx, WriteOptions, write_vhdx};
use vmbdev_backing::{BlockDevice, RawFile};

const MIB: u64 = 1 << 20;

fn sequential(dev: &dyn BlockDevice) -> Duration {
    let mut buf = vec![0u8; MIB as usize];
    let start = Instant::now();
    let mut at = 0;
    while at < dev.size_bytes() {
        dev.read_sectors(at / 512, &mut buf).expect("read");
        at += MIB;
    }
    start.elapsed()
}

fn random(dev: &dyn BlockDevice, count: usize) -> Duration {
    let mut rng = SmallRng::seed_from_u64(1);
    let pages = dev.size_bytes() / 4096;
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    for _ in 0..count {
        let page = rng.random_range(0..pages);
        dev.read_sectors(page * 8, &mut buf).expect("read");
    }
    start.elapsed()
}

fn main() {
    let mib: u64 = std::env::var("VMBDEV_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let raw_path = dir.path().join("disk.raw");
    let mut rng = SmallRng::seed_from_u64(0);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&raw_path).expect("create");
        let mut chunk = vec![0u8; MIB as usize];
        for _ in 0..mib {
            rng.fill(&mut chunk[..]);
            f.write_all(&chunk).expect("write");
        }
    }
    let raw = RawFile::open(&raw_path).expect("open raw");
    let vhdx_path = dir.path().join("disk.vhdx");
    write_vhdx(&raw, &vhdx_path, &WriteOptions::default()).expect("write vhdx");
    let vhdx = Vhdx::open(&vhdx_path).expect("open vhdx");
    // Warm the page cache for both files.
    sequential(&raw);
    sequential(&vhdx);
    let count = 100_000;
    let (raw_seq, vhdx_seq) = (sequential(&raw), sequential(&vhdx));
    let (raw_rand, vhdx_rand) = (random(&raw, count), random(&vhdx, count));
    let mbps = |d: Duration| mib as f64 / d.as_secs_f64();
    let iops = |d: Duration| count as f64 / d.as_secs_f64();
    println!("disk: {mib} MiB, VHDX block size 32 MiB");
    println!(
        "sequential 1 MiB: raw {:.0} MiB/s, vhdx {:.0} MiB/s, vhdx/raw {:.3}",
        mbps(raw_seq),
        mbps(vhdx_seq),
        raw_seq.as_secs_f64() / vhdx_seq.as_secs_f64()
    );
    println!(
        "random 4 KiB: raw {:.0} IOPS, vhdx {:.0} IOPS, vhdx/raw {:.3}",
        iops(raw_rand),
        iops(vhdx_rand),
        raw_rand.as_secs_f64() / vhdx_rand.as_secs_f64()
    );
}
