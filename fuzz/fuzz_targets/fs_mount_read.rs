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
//! lets those through (and prints each distinct one once) but aborts on a
//! panic anywhere else, even one that would be caught. A file read in
//! uneven chunks must give the same bytes as one read in whole.
#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Once, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmbdev_block::BlockDevice;
use vmbdev_fs::{EntryKind, FileTree, TreePath, open_tree};
use vmbdev_fs::{detect, mount};
use vmbdev_fuzz::mem_device;
use vmbdev_partition::{PartitionDevice, list_partitions};

/// Whether a panic at `file` is inside a third-party crate (a contained,
/// known class of defect) rather than in this workspace or std.
fn third_party(file: &str) -> bool {
    file.contains("/registry/src/") || file.contains("/git/checkouts/")
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
            // libfuzzer-sys's hook prints and aborts.
            previous(info);
            std::process::abort();
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

/// The seeds of `gen-seeds.sh`, sorted by name.
fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/fs_mount_read");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (run fuzz/gen-seeds.sh)", dir.display()))
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        paths.sort();
        let seeds: Vec<Seed> = paths
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .map(|bytes| {
                let written = (0..bytes.len() / 512)
                    .map(|i| i * 512)
                    .filter(|&at| bytes[at..at + 512].iter().any(|&b| b != 0))
                    .collect();
                Seed { bytes, written }
            })
            .collect();
        assert!(!seeds.is_empty(), "{}: no seed images", dir.display());
        seeds
    })
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
fn patched(input: &Input) -> Vec<u8> {
    let seeds = seeds();
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

fuzz_target!(|input: Input| {
    install_panic_hook();
    let device: Arc<dyn BlockDevice> = Arc::new(mem_device(patched(&input), 512));
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
});
