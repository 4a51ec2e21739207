//! Mutated disk images (FAT, ext4 and NTFS file systems, bare or behind
//! GPT and MBR partition tables) are listed, detected, mounted, walked and
//! read through our `FileTree`.
//!
//! The images are the seeds `gen-seeds.sh` makes with the real tools,
//! loaded once; an input picks one and patches it. Patches aim at the
//! sectors the tools wrote (boot sectors, FATs, inode tables, MFT records,
//! directories: the non-zero sectors of the seed), at any offset, or cut
//! the image short. Inputs stay a few hundred bytes however large the
//! images are, so a run costs one copy of a seed plus the walk, and the
//! corpus stays small.
//!
//! Invariants: no panic in our code, no hang, no runaway allocation.
//! Panics inside the third-party file-system crates are contained by the
//! backing crate (they become `TreeError::Corrupt`); the panic hook here
//! lets those through (and prints each distinct one once) but fails the run
//! on a panic anywhere else, even one that would be caught: under libFuzzer
//! the hook it chains to aborts on the spot, elsewhere `run` panics once the
//! input is done. A file read in uneven chunks must give the same bytes as
//! one read in whole.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock};

use crate::{Outcome, decode_and_run, mem_device};
use arbitrary::Arbitrary;
use vmbdev_block::BlockDevice;
use vmbdev_fs::{EntryKind, FileTree, TreePath, open_tree};
use vmbdev_fs::{detect, mount};
use vmbdev_partition::{PartitionDevice, list_partitions};

/// Whether a panic at `file` is inside a third-party crate (a contained,
/// known class of defect) rather than in this workspace or std.
fn third_party(file: &str) -> bool {
    file.contains("/registry/src/") || file.contains("/git/checkouts/")
}

thread_local! {
    /// Panics in our code seen on this thread while `run_on` runs, caught
    /// or not.
    static OUR_PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if third_party(&location) {
                let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                if seen.insert(location.clone()) {
                    eprintln!("contained third-party panic at {location}: {info}");
                }
                return;
            }
            OUR_PANICS.with(|panics| {
                if let Some(panics) = panics.borrow_mut().as_mut() {
                    panics.push(format!("{location}: {info}"));
                }
            });
            // In a fuzz binary this is libfuzzer-sys's hook, which prints
            // and aborts; in a test it is the default hook, and `run_on`
            // fails after the input (aborting would take the other tests
            // down with it).
            previous(info);
        }));
    });
}

/// Walks the tree with bounds on entries, depth and bytes, checking that
/// chunked reads agree with whole reads.
fn walk(tree: &dyn FileTree) {
    let mut entries = 512usize;
    let mut bytes_left = 4usize << 20;
    let mut stack = vec![(TreePath::root(), 0usize)];
    let mut whole = vec![0u8; 64 * 1024];
    let mut part = vec![0u8; 64 * 1024];
    while let Some((path, depth)) = stack.pop() {
        let Ok(list) = tree.read_dir(&path) else {
            continue;
        };
        for (name, meta) in list {
            if entries == 0 || bytes_left == 0 {
                return;
            }
            entries -= 1;
            let child = path.join(&name);
            let _ = tree.lookup(&child);
            match meta.kind {
                EntryKind::Directory if depth < 8 => stack.push((child, depth + 1)),
                EntryKind::File => {
                    let mut offset = 0u64;
                    while offset < meta.size && bytes_left > 0 {
                        let Ok(n) = tree.read_at(&child, offset, &mut whole) else {
                            break;
                        };
                        if n == 0 {
                            break;
                        }
                        assert!(n <= whole.len(), "read_at returned more than asked");
                        bytes_left = bytes_left.saturating_sub(n);
                        // The same bytes again in two uneven pieces.
                        let first = (n / 3).max(1).min(n);
                        let a = tree.read_at(&child, offset, &mut part[..first]);
                        if let Ok(a) = a {
                            assert!(a <= first);
                            if a == first {
                                assert_eq!(part[..first], whole[..first], "chunked read differs");
                            }
                        }
                        offset += n as u64;
                    }
                }
                // Directories too deep, links and special files: nothing to read.
                _ => {}
            }
        }
    }
}

/// A seed image and where its tools wrote.
struct Seed {
    bytes: Vec<u8>,
    /// Offsets of the non-zero 512-byte sectors.
    written: Vec<usize>,
}

/// Why the seed images could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The directory or one of its files could not be read.
    #[error("{path}: {source} (fuzz/gen-seeds.sh makes the seed images)")]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// What reading it gave.
        source: std::io::Error,
    },
    /// The directory holds no file.
    #[error("{dir}: no seed images (fuzz/gen-seeds.sh makes them)")]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
}

/// The disk images inputs patch: every file of a directory `gen-seeds.sh`
/// filled, in file-name order (an input picks one by index).
pub struct SeedImages {
    seeds: Vec<Seed>,
}

impl SeedImages {
    /// Loads every file in `dir`.
    pub fn load(dir: &Path) -> Result<Self, SeedError> {
        let read_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SeedError::Read { path, source }
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
            paths.push(entry.map_err(read_error(dir))?.path());
        }
        paths.sort();
        let mut seeds = Vec::with_capacity(paths.len());
        for path in &paths {
            let bytes = std::fs::read(path).map_err(read_error(path))?;
            let written = (0..bytes.len() / 512)
                .map(|i| i * 512)
                .filter(|&at| bytes[at..at + 512].iter().any(|&b| b != 0))
                .collect();
            seeds.push(Seed { bytes, written });
        }
        if seeds.is_empty() {
            return Err(SeedError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self { seeds })
    }
}

/// Where `gen-seeds.sh` puts the images by default: `fuzz/seeds/fs_mount_read`.
pub fn default_seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds/fs_mount_read")
}

/// The images in [`default_seed_dir`], loaded once.
fn default_seeds() -> &'static SeedImages {
    static SEEDS: OnceLock<SeedImages> = OnceLock::new();
    SEEDS.get_or_init(|| SeedImages::load(&default_seed_dir()).unwrap_or_else(|e| panic!("{e}")))
}

#[derive(Debug, Arbitrary)]
enum Patch {
    /// Bytes at an offset inside one of the sectors the tools wrote.
    Written {
        sector: u16,
        at: u16,
        bytes: Vec<u8>,
    },
    /// A little-endian value at an offset inside a written sector.
    Value { sector: u16, at: u16, value: Value },
    /// Bytes anywhere.
    Raw { offset: u32, bytes: Vec<u8> },
    /// The image cut to this many sectors.
    Truncate(u16),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Zero16,
    Max16,
    Zero32,
    Max32,
    Small32(u8),
    Pow2(u8),
    Raw64(u64),
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Zero16 => vec![0; 2],
            Value::Max16 => vec![0xff; 2],
            Value::Zero32 => vec![0; 4],
            Value::Max32 => vec![0xff; 4],
            Value::Small32(v) => u32::from(*v).to_le_bytes().to_vec(),
            Value::Pow2(p) => (1u64 << (p % 64)).to_le_bytes().to_vec(),
            Value::Raw64(v) => v.to_le_bytes().to_vec(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u8,
    patches: Vec<Patch>,
}

fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().take(64).enumerate() {
        if let Some(x) = image.get_mut(at.wrapping_add(i)) {
            *x = b;
        }
    }
}

/// The seed `input` picks, with its patches applied.
fn patched(seeds: &SeedImages, input: &Input) -> Vec<u8> {
    let seeds = &seeds.seeds;
    let seed = &seeds[usize::from(input.seed) % seeds.len()];
    let mut image = seed.bytes.clone();
    let in_written = |sector: u16, at: u16| {
        let base = seed.written[usize::from(sector) % seed.written.len().max(1)];
        base + usize::from(at % 512)
    };
    for patch in input.patches.iter().take(32) {
        match patch {
            Patch::Written { sector, at, bytes } if !seed.written.is_empty() => {
                put(&mut image, in_written(*sector, *at), bytes)
            }
            Patch::Value { sector, at, value } if !seed.written.is_empty() => {
                put(&mut image, in_written(*sector, *at), &value.bytes())
            }
            Patch::Raw { offset, bytes } => {
                let at = *offset as usize % image.len().max(1);
                put(&mut image, at, bytes)
            }
            Patch::Truncate(sectors) => image.truncate(usize::from(*sectors) * 512),
            _ => {}
        }
    }
    image
}

/// Detects, mounts and walks the file system on `view`, if any.
fn mount_and_walk(view: Arc<dyn BlockDevice>) {
    if let Ok(Some(kind)) = detect(&*view)
        && let Ok(tree) = mount(view, kind)
    {
        walk(&*tree);
    }
}

fn check(seeds: &SeedImages, input: Input) {
    let device: Arc<dyn BlockDevice> = Arc::new(mem_device(patched(seeds, &input), 512));
    match list_partitions(&*device) {
        Ok(parts) if !parts.is_empty() => {
            for info in parts.iter().take(4) {
                if let Ok(view) = PartitionDevice::for_partition(device.clone(), info) {
                    mount_and_walk(Arc::new(view));
                }
            }
        }
        // A bare file system (or a table too broken to list).
        _ => mount_and_walk(device.clone()),
    }
    if let Ok(tree) = open_tree(device, None) {
        let _ = tree.lookup(&TreePath::parse("\\EFI\\BOOT\\BOOTX64.EFI"));
    }
}

/// The image an input of the fuzz target mounts: `seeds`' image with its
/// patches applied; `None` if `data` does not decode. Lets a test take a
/// finding's image apart.
pub fn patched_image(seeds: &SeedImages, data: &[u8]) -> Option<Vec<u8>> {
    let mut image = None;
    decode_and_run::<Input>(data, |input| image = Some(patched(seeds, &input)));
    image
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it, patching the images in [`default_seed_dir`] (what
/// the fuzz target does); a failed check panics.
pub fn run(data: &[u8]) -> Outcome {
    run_on(default_seeds(), data)
}

/// [`run`], patching `seeds` instead: a test makes its own with
/// `gen-seeds.sh`. Panics, after the input is done, if code outside the
/// third-party crates panicked during it, even where the panic was caught.
pub fn run_on(seeds: &SeedImages, data: &[u8]) -> Outcome {
    install_panic_hook();
    OUR_PANICS.with(|panics| *panics.borrow_mut() = Some(Vec::new()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_and_run::<Input>(data, |input| check(seeds, input))
    }));
    let ours = OUR_PANICS.with(|panics| panics.borrow_mut().take().unwrap_or_default());
    match outcome {
        Err(payload) => std::panic::resume_unwind(payload),
        Ok(_) if !ours.is_empty() => panic!("panics outside third-party crates: {ours:?}"),
        Ok(outcome) => outcome,
    }
}
