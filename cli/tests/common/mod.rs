//! Helpers shared by the safety, output, format and message suites: an
//! ext4 VHDX made by the real tools, and checks that a file was left alone.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use vmbdev_tests::cli::vmbdev_command;
use vmbdev_tests::images::{ext4_image, run};

/// The `vmbdev` binary.
pub fn vmbdev() -> Command {
    vmbdev_command(env!("CARGO_BIN_EXE_vmbdev"))
}

/// Runs `vmbdev ARGS` in `dir`.
pub fn vmbdev_in(dir: &Path, args: &[&str]) -> Output {
    vmbdev().current_dir(dir).args(args).output().unwrap()
}

/// Text of stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `files` (path relative to the root, contents) under `dir/src`,
/// makes an ext4 file system of them (mke2fs -d) and converts it to
/// `dir/IMG.vhdx` (qemu-img convert). Returns the VHDX path.
pub fn ext4_vhdx(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let src = dir.join("src");
    for (path, data) in files {
        let at = src.join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, data).unwrap();
    }
    std::fs::create_dir_all(&src).unwrap();
    let mib = 8 + files.iter().map(|(_, d)| d.len() as u64).sum::<u64>() * 2 / (1 << 20);
    let fs = ext4_image(dir, &src, mib);
    let vhdx = dir.join("IMG.vhdx");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vhdx"])
        .arg(&fs)
        .arg(&vhdx));
    std::fs::remove_file(fs).unwrap();
    std::fs::remove_dir_all(src).unwrap();
    vhdx
}

/// A file's bytes and modification time.
pub fn snapshot(path: &Path) -> (Vec<u8>, SystemTime) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

/// Names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Pseudo-random bytes (xorshift from `seed`), not from the code under
/// test.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sets the length of the existing file at `path` (a disk shrinking or
/// growing under a running vmbdev).
pub fn set_file_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}
