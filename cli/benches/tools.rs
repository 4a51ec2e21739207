//! `cargo bench -p vmbdev-cli --bench tools`: the command line against the
//! tools a user would otherwise reach for, in the same run on the same
//! files.
//!
//! - `vmbdev dump` (through storvsc, and `--direct`) against
//!   `qemu-img convert -O raw` on a 1 GiB dynamic VHDX half filled with
//!   random data: time and host bytes allocated by each output.
//! - `vmbdev cat` of a 50 MiB file in a FAT32 image against `7zz e -so`.
//!
//! Each figure is the median of a few rounds. Outputs go to
//! `$VMBDEV_BENCH_DIR` (default: a temporary directory), removed between
//! rounds so no tool pays for freeing another's file. A missing tool skips
//! its comparison with a message.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};

const MIB: u64 = 1 << 20;
const ROUNDS: usize = 5;
const VMBDEV: &str = env!("CARGO_BIN_EXE_vmbdev");

/// Whether `name` is an executable on `PATH`.
fn have(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Runs `cmd` to completion, output discarded; panics on failure.
fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let took = start.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    took
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let len = fa.metadata().unwrap().len();
    if len != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    let mut at = 0;
    while at < len {
        let n = (len - at).min(x.len() as u64) as usize;
        fa.read_exact_at(&mut x[..n], at).unwrap();
        fb.read_exact_at(&mut y[..n], at).unwrap();
        if x[..n] != y[..n] {
            return false;
        }
        at += n as u64;
    }
    true
}

/// A 1 GiB dynamic VHDX (8 MiB blocks) whose even-numbered 8 MiB regions
/// hold random data and odd ones were never written: half empty.
fn half_empty_vhdx(dir: &Path) -> PathBuf {
    let raw = dir.join("half.raw");
    let file = std::fs::File::create(&raw).unwrap();
    file.set_len(1 << 30).unwrap();
    let mut rng = SmallRng::seed_from_u64(13);
    let mut data = vec![0u8; (8 * MIB) as usize];
    for region in (0..128u64).step_by(2) {
        rng.fill(&mut data[..]);
        file.write_all_at(&data, region * 8 * MIB).unwrap();
    }
    drop(file);
    let vhdx = dir.join("half.vhdx");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .args(["-o", "subformat=dynamic,block_size=8M"])
        .arg(&raw)
        .arg(&vhdx));
    std::fs::remove_file(raw).unwrap();
    vhdx
}

/// Times `make(out)` ROUNDS times, removing `out` before each; returns the
/// median and the bytes the last output takes.
fn timed(out: &Path, make: impl Fn(&Path) -> Command) -> (Duration, u64) {
    let times = (0..ROUNDS)
        .map(|_| {
            let _ = std::fs::remove_file(out);
            run(&mut make(out))
        })
        .collect();
    (median(times), allocated(out))
}

fn bench_dump(dir: &Path) {
    if !have("qemu-img") {
        println!("dump: skipped (qemu-img not found)");
        return;
    }
    let vhdx = half_empty_vhdx(dir);
    let image = vhdx.clone();
    let theirs = dir.join("qemu.raw");
    let (qemu, qemu_bytes) = timed(&theirs, |out| {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-O", "raw"]).arg(&image).arg(out);
        c
    });
    println!("dump of a 1 GiB dynamic VHDX, 512 MiB of it data (median of {ROUNDS}):");
    println!(
        "  qemu-img convert -O raw   {:>7.3} s  {:>5} MiB allocated",
        qemu.as_secs_f64(),
        qemu_bytes / MIB
    );
    // vmbdev syncs its output before renaming it into place; qemu-img
    // leaves it in the page cache. The same work on qemu-img's side:
    if have("sync") {
        let (synced, _) = timed(&theirs, |out| {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                "qemu-img convert -O raw \"$1\" \"$2\" && sync \"$2\"",
                "sh",
            ])
            .arg(&image)
            .arg(out);
            c
        });
        println!(
            "  qemu-img convert + sync   {:>7.3} s  (the output synced, as vmbdev does)",
            synced.as_secs_f64()
        );
    }
    for (name, direct) in [("vmbdev dump", false), ("vmbdev dump --direct", true)] {
        let ours = dir.join(format!("vmbdev-{direct}.raw"));
        let (time, bytes) = timed(&ours, |out| {
            let mut c = Command::new(VMBDEV);
            c.arg("dump");
            if direct {
                c.arg("--direct");
            }
            c.arg(&image).arg("-o").arg(out);
            c
        });
        assert!(
            same_bytes(&ours, &theirs),
            "{name}: output differs from qemu-img's"
        );
        println!(
            "  {name:<25} {:>7.3} s  {:>5} MiB allocated  time {:.2}x, allocated {:.2}x qemu-img's",
            time.as_secs_f64(),
            bytes / MIB,
            time.as_secs_f64() / qemu.as_secs_f64().max(1e-9),
            bytes as f64 / qemu_bytes.max(1) as f64
        );
        std::fs::remove_file(ours).unwrap();
    }
    std::fs::remove_file(theirs).unwrap();
    std::fs::remove_file(vhdx).unwrap();
}

/// A 128 MiB FAT32 image (mkfs.vfat) holding a 50 MiB random file
/// `big.bin` (mcopy).
fn fat32_with_file(dir: &Path) -> PathBuf {
    let img = dir.join("fat.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    run(Command::new("mkfs.vfat").args(["-F", "32"]).arg(&img));
    let file = dir.join("big.bin");
    let mut data = vec![0u8; (50 * MIB) as usize];
    SmallRng::seed_from_u64(5).fill(&mut data[..]);
    std::fs::write(&file, data).unwrap();
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&file)
        .arg("::/big.bin"));
    std::fs::remove_file(file).unwrap();
    img
}

fn bench_cat(dir: &Path) {
    let missing: Vec<_> = ["7zz", "mkfs.vfat", "mcopy"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        println!("cat: skipped ({} not found)", missing.join(", "));
        return;
    }
    let img = fat32_with_file(dir);
    let rounds =
        |make: &dyn Fn() -> Command| median((0..ROUNDS).map(|_| run(&mut make())).collect());
    let seven = rounds(&|| {
        let mut c = Command::new("7zz");
        c.args(["e", "-so"]).arg(&img).arg("big.bin");
        c
    });
    println!("cat of a 50 MiB file in a FAT32 image to /dev/null (median of {ROUNDS}):");
    println!("  7zz e -so                 {:>7.3} s", seven.as_secs_f64());
    for (name, in_band) in [("vmbdev cat", false), ("vmbdev cat --in-band", true)] {
        let time = rounds(&|| {
            let mut c = Command::new(VMBDEV);
            c.arg("cat");
            if in_band {
                c.arg("--in-band");
            }
            c.arg(&img).arg("/big.bin");
            c
        });
        println!(
            "  {name:<25} {:>7.3} s  {:.2}x 7zz's time",
            time.as_secs_f64(),
            time.as_secs_f64() / seven.as_secs_f64().max(1e-9)
        );
    }
    std::fs::remove_file(img).unwrap();
}

fn main() {
    // `cargo test --benches` runs benchmarks with no `--bench`: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = std::env::var_os("VMBDEV_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .expect("a scratch directory");
    println!("scratch directory: {}", dir.path().display());
    bench_dump(dir.path());
    bench_cat(dir.path());
}
