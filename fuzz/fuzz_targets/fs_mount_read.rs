//! Mutated disk images (FAT, ext4 and NTFS file systems, bare or behind
//! GPT and MBR partition tables; seeds from `gen-seeds.sh`) are listed,
//! detected, mounted, walked and read through our `FileTree`.
//!
//! Invariants: no panic in our code, no hang, no runaway allocation.
//! Panics inside the third-party file-system crates are contained by the
//! backing crate (they become `TreeError::Corrupt`); the panic hook here
//! lets those through (and prints each distinct one once) but aborts on a
//! panic anywhere else, even one that would be caught. A file read in
//! uneven chunks must give the same bytes as one read in whole.
#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Once};

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

fuzz_target!(|data: &[u8]| {
    install_panic_hook();
    let device: Arc<dyn BlockDevice> = Arc::new(mem_device(data.to_vec(), 512));
    if let Ok(parts) = list_partitions(&*device) {
        for info in parts.iter().take(4) {
            let Ok(view) = PartitionDevice::for_partition(device.clone(), info) else {
                continue;
            };
            let view: Arc<dyn BlockDevice> = Arc::new(view);
            if let Ok(Some(kind)) = detect(&*view)
                && let Ok(tree) = mount(view, kind)
            {
                walk(&*tree);
            }
        }
    }
    if let Ok(tree) = open_tree(device, None) {
        let _ = tree.lookup(&TreePath::parse("\\EFI\\BOOT\\BOOTX64.EFI"));
    }
});
