//! Replays the committed inputs of every fuzz target through the target's
//! own `run`: the minimised corpus in `fuzz/corpus/<target>/` and the
//! crash reproducers in `fuzz/regressions/<target>/`, one test per target.
//! A test fails, naming the files, if any input fails a check (panics) or
//! no longer decodes into the target's input (a corpus left behind by a
//! change to the input type; `fuzz/refresh-corpora.sh` remakes it).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, MemoryDisk};
use vmbdev_fs::TreePath;

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
/// The images `gen-seeds.sh` makes with the real tools, in a fresh
/// directory (kept alive by the returned guard).
fn fresh_seeds() -> (tempfile::TempDir, SeedImages) {
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
    (dir, seeds)
}

#[test]
fn fs_mount_read_corpus() {
    let (_dir, seeds) = fresh_seeds();
    replay("fs_mount_read", |data| fs_mount_read::run_on(&seeds, data));
}

/// The AddressSanitizer campaign's one finding: an NTFS image (mkntfs,
/// one patched index entry) whose root directory index has a subnode
/// pointing back up the tree. The ntfs crate followed it for ever,
/// buffering an index record per step (2 GB within 30 s). The listing
/// must now end in an error naming the read bound, quickly.
#[test]
fn an_ntfs_index_whose_subnodes_cycle_is_refused_after_bounded_reads() {
    let (_dir, seeds) = fresh_seeds();
    let input =
        std::fs::read(fuzz_dir().join("regressions/fs_mount_read/ntfs-index-subnode-cycle"))
            .expect("the committed reproducer");
    let image = fs_mount_read::patched_image(&seeds, &input).expect("the input decodes");
    let device: Arc<dyn BlockDevice> = Arc::new(MemoryDisk::new(image));
    let tree =
        vmbdev_fs::open_tree(device, None).expect("the partition and boot sector are intact");
    let error = tree
        .read_dir(&TreePath::root())
        .expect_err("a cyclic index cannot be listed");
    let text = error.to_string();
    assert!(
        text.contains("bytes allowed read for one step"),
        "the error names the read bound: {text}"
    );
}
