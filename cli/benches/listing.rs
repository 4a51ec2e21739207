//! Listing a 10,000-entry directory: `vmbdev ls -r` against `7zz l` of the
//! same raw image, for FAT32 (mkfs.vfat + mcopy), ext4 (mke2fs -d) and
//! NTFS (mkntfs + wimapply). Each command runs several rounds; the median
//! wall time of each and their ratio are printed (the aim is a ratio of at
//! most 2). Both commands start a process, open the image and print every
//! entry, so the comparison includes what a user waits for. Skips with a
//! message when 7zz is not installed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmbdev_tests::cli::vmbdev_command;
use vmbdev_tests::images::{ext4_image, fat_image_in_code_page, ntfs_image};

/// Entries in the listed directory.
const ENTRIES: usize = 10_000;
/// Timed runs of each command per image.
const ROUNDS: usize = 7;

/// Median wall time of `ROUNDS` runs of `make()`, each of which must
/// succeed and print at least `ENTRIES` lines.
fn median(mut make: impl FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let mut cmd = make();
            let start = Instant::now();
            let out = cmd.output().expect("runs");
            let took = start.elapsed();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
            assert!(lines >= ENTRIES, "{cmd:?} printed {lines} lines");
            took
        })
        .collect();
    times.sort();
    times[ROUNDS / 2]
}

/// A directory `many` of `ENTRIES` one-byte files with 8.3 names (so
/// mcopy writes no long names and builds the FAT image quickly).
fn make_source(root: &Path) {
    let many = root.join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..ENTRIES {
        std::fs::write(many.join(format!("F{i:05}.BIN")), b"x").unwrap();
    }
}

fn main() {
    if Command::new("7zz").arg("i").output().is_err() {
        println!("listing: 7zz is not installed; skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let images = [
        (
            "FAT32",
            fat_image_in_code_page(tmp.path(), "fat32.img", &src, 32, 64 << 10, 437),
        ),
        ("ext4", ext4_image(tmp.path(), &src, 64)),
        ("NTFS", ntfs_image(tmp.path(), &src, 64)),
    ];
    println!("listing {ENTRIES} entries, median of {ROUNDS} rounds:");
    for (name, image) in &images {
        let ours = median(|| {
            let mut cmd = vmbdev_command(env!("CARGO_BIN_EXE_vmbdev"));
            cmd.arg("ls").arg("-r").arg(image).arg("/");
            cmd
        });
        let theirs = median(|| {
            let mut cmd = Command::new("7zz");
            cmd.arg("l").arg(image);
            cmd
        });
        println!(
            "  {name:<5}  vmbdev ls -r {:>9.2} ms   7zz l {:>9.2} ms   ratio {:.2}",
            ours.as_secs_f64() * 1e3,
            theirs.as_secs_f64() * 1e3,
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
}
