//! Checking a [`FileTree`] against the host directory it was made from,
//! and devices that wrap others for tests.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, MemoryDisk};
use vmbdev_fs::{EntryKind, FileTree, TreeError, TreePath};

/// Reads a whole file through the tree in chunks of varying size, starting
/// at varying offsets so reads resume mid-file and jump back.
fn read_through(tree: &dyn FileTree, path: &TreePath, size: u64) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let mut offset = 0u64;
    let chunks = [65536usize, 1, 4095, 4097, 511, 100_000];
    let mut i = 0;
    while offset < size {
        let want = chunks[i % chunks.len()];
        i += 1;
        let end = (offset as usize + want).min(out.len());
        let n = tree
            .read_at(path, offset, &mut out[offset as usize..end])
            .unwrap();
        assert_eq!(n, end - offset as usize, "{path}: short read at {offset}");
        offset += n as u64;
    }
    // A read at the end gives 0, and one from the middle again (backwards)
    // still gives the right bytes.
    let mut probe = [0u8; 8];
    assert_eq!(tree.read_at(path, size, &mut probe).unwrap(), 0);
    if size > 3 {
        let mid = size / 2;
        let n = tree.read_at(path, mid, &mut probe).unwrap();
        assert_eq!(&probe[..n], &out[mid as usize..mid as usize + n]);
    }
    out
}

/// Checks that `tree` holds exactly what `src` holds: names, kinds, sizes
/// and bytes. Returns how many files were compared.
pub fn assert_tree_matches(tree: &dyn FileTree, src: &Path) -> usize {
    assert_dir_matches(tree, &TreePath::root(), src)
}

fn assert_dir_matches(tree: &dyn FileTree, path: &TreePath, src: &Path) -> usize {
    let meta = tree.lookup(path).unwrap();
    assert_eq!(
        meta.kind,
        EntryKind::Directory,
        "{path} not flagged as a directory"
    );
    let mut expected: Vec<String> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    expected.sort();
    let listed = tree.read_dir(path).unwrap();
    let mut names: Vec<String> = listed
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n != "System Volume Information" && n != "lost+found")
        .collect();
    names.sort();
    assert_eq!(names, expected, "listing of {path}");
    let mut files = 0;
    for name in expected {
        let child = path.join(&name);
        let host = src.join(&name);
        let meta = tree.lookup(&child).unwrap();
        let listed_meta = listed.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(meta, listed_meta, "{child}: lookup and listing disagree");
        if host.is_dir() {
            assert_eq!(meta.kind, EntryKind::Directory, "{child}");
            files += assert_dir_matches(tree, &child, &host);
        } else {
            let want = fs::read(&host).unwrap();
            assert_eq!(meta.kind, EntryKind::File, "{child}");
            assert_eq!(meta.size, want.len() as u64, "{child}: size");
            let got = read_through(tree, &child, meta.size);
            assert!(got == want, "{child}: contents differ");
            let mut one = [0u8; 1];
            assert!(matches!(
                tree.read_dir(&child),
                Err(TreeError::NotADirectory(_))
            ));
            let _ = tree.read_at(&child, 0, &mut one).unwrap();
            files += 1;
        }
    }
    files
}

/// The same path with every letter whose other case is one character
/// swapped (not 'ß' → "SS"): a lookup that must succeed where case is
/// folded.
pub fn swap_case(path: &str) -> String {
    path.chars()
        .map(|c| {
            let other: Vec<char> = if c.is_lowercase() {
                c.to_uppercase().collect()
            } else {
                c.to_lowercase().collect()
            };
            if other.len() == 1 { other[0] } else { c }
        })
        .collect()
}

/// Checks lookups in the other letter case: found (same entry) on a
/// case-insensitive file system, not found on a case-sensitive one.
pub fn assert_case_behaviour(tree: &dyn FileTree, case_insensitive: bool) {
    for name in [
        "docs/A directory with spaces/deeper/deepest/leaf.dat",
        "Ünïcødé ディレクトリ/Grüße – 日本語.txt",
        "README",
        "docs/block.bin",
    ] {
        let exact = tree.lookup(&TreePath::parse(name)).unwrap();
        let swapped = swap_case(name);
        let other = tree.lookup(&TreePath::parse(&swapped));
        if case_insensitive {
            assert_eq!(other.unwrap(), exact, "{swapped}");
        } else {
            assert!(
                matches!(other, Err(TreeError::NotFound(_))),
                "{swapped}: {other:?}"
            );
        }
    }
}

/// Wraps bytes as a shared device of 512-byte sectors.
pub fn mem_device(bytes: Vec<u8>) -> Arc<dyn BlockDevice> {
    Arc::new(MemoryDisk::new(bytes).with_disk_id([7; 16]))
}

/// Walks a whole tree, reading every file, with bounds on entries and
/// bytes so a hostile image cannot make the walk run away. Errors are
/// expected and ignored; the point is that nothing panics.
pub fn walk_everything(tree: &dyn FileTree) {
    let mut budget_entries = 2000usize;
    let mut stack = vec![(TreePath::root(), 0usize)];
    let mut buf = vec![0u8; 65536];
    while let Some((path, depth)) = stack.pop() {
        let Ok(list) = tree.read_dir(&path) else {
            continue;
        };
        for (name, meta) in list {
            if budget_entries == 0 {
                return;
            }
            budget_entries -= 1;
            let child = path.join(&name);
            let _ = tree.lookup(&child);
            match meta.kind {
                EntryKind::Directory if depth < 16 => stack.push((child, depth + 1)),
                EntryKind::File => {
                    let mut offset = 0;
                    while offset < meta.size.min(1 << 20) {
                        match tree.read_at(&child, offset, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => offset += n as u64,
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
