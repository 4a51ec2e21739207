//! Replays the committed inputs of every fuzz target through the target's
//! own `run`: the minimised corpus in `fuzz/corpus/<target>/` and the
//! crash reproducers in `fuzz/regressions/<target>/`, one test per target.
//! A test fails, naming the files, if any input fails a check (panics) or
//! no longer decodes into the target's input (a corpus left behind by a
//! change to the input type; `fuzz/refresh-corpora.sh` remakes it).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

use vmbdev_fuzz_harness::fs_mount_read::{self, SeedImages};
use vmbdev_fuzz_harness::{
    Outcome, ring_reader, storvsp_session, vhd_open_read, vhdx_open_read, vmbfs_session,
    vmbus_control,
};

/// `fuzz/`, where the corpora and the seed script live.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files in `dir` (none if it does not exist), sorted by name.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every committed input of `target` through `run`, then fails, naming
/// the files, if any panicked or was rejected.
fn replay(target: &str, run: impl Fn(&[u8]) -> Outcome) {
    let corpus = files_in(&fuzz_dir().join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} holds no inputs (fuzz/refresh-corpora.sh makes them)"
    );
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));
    let mut panicked = Vec::new();
    let mut rejected = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match catch_unwind(AssertUnwindSafe(|| run(&data))) {
            Ok(Outcome::Ran) => {}
            Ok(Outcome::Rejected) => rejected.push(path.display().to_string()),
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    assert!(
        panicked.is_empty(),
        "{target}: inputs failing a check: {panicked:#?}"
    );
    assert!(
        rejected.is_empty(),
        "{target}: inputs that no longer decode: {rejected:#?}"
    );
}

#[test]
fn ring_reader_corpus() {
    replay("ring_reader", ring_reader::run);
}

#[test]
fn vmbfs_session_corpus() {
    replay("vmbfs_session", vmbfs_session::run);
}

#[test]
fn storvsp_session_corpus() {
    replay("storvsp_session", storvsp_session::run);
}

#[test]
fn vmbus_control_corpus() {
    replay("vmbus_control", vmbus_control::run);
}

#[test]
fn vhdx_open_read_corpus() {
    replay("vhdx_open_read", vhdx_open_read::run);
}

#[test]
fn vhd_open_read_corpus() {
    replay("vhd_open_read", vhd_open_read::run);
}

/// The images the inputs patch are made here with `gen-seeds.sh` and the
/// real tools, as for a fuzzing run (they are not committed).
#[test]
fn fs_mount_read_corpus() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let seeds = dir.path().join("seeds");
    let output = Command::new(fuzz_dir().join("gen-seeds.sh"))
        .arg(&seeds)
        .output()
        .expect("run fuzz/gen-seeds.sh");
    assert!(
        output.status.success(),
        "fuzz/gen-seeds.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seeds = SeedImages::load(&seeds).unwrap_or_else(|e| panic!("{e}"));
    replay("fs_mount_read", |data| fs_mount_read::run_on(&seeds, data));
}
