//! Shared helpers for the file-system tests: a random source tree, images
//! made by the real tools, partition-table wrapping and a tree comparator.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vmbdev_backing::{BlockDevice, BlockError, EntryKind, FileTree, TreeError, TreePath};

/// Runs a tool, failing the test with its output when it is missing or
/// fails.
pub fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .env("LC_ALL", "C.UTF-8")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} (is the tool installed?): {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a tool and returns its stdout.
pub fn run_output(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} (is the tool installed?): {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Writes a source tree with nested directories, long, Unicode and spaced
/// names, an empty file and the edge sizes around a 4 KiB block, plus
/// `extra` random files. With `big`, one file of about 2 MiB.
pub fn make_source_tree(root: &Path, seed: u64, extra: usize, big: bool) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dirs = [
        "docs",
        "docs/A directory with spaces",
        "docs/A directory with spaces/deeper/deepest",
        "Ünïcødé ディレクトリ",
        "empty dir",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut files: Vec<(String, usize)> = vec![
        ("empty.txt".into(), 0),
        ("one.bin".into(), 1),
        ("docs/block-minus-one.bin".into(), 4095),
        ("docs/block.bin".into(), 4096),
        ("docs/block-plus-one.bin".into(), 4097),
        (
            "docs/A directory with spaces/a rather long file name, with spaces and commas.txt"
                .into(),
            777,
        ),
        (
            "docs/A directory with spaces/deeper/deepest/leaf.dat".into(),
            12345,
        ),
        ("Ünïcødé ディレクトリ/Grüße – 日本語.txt".into(), 300),
        ("README".into(), 42),
    ];
    if big {
        files.push(("docs/big file.bin".into(), 2 * 1024 * 1024 + 321));
    }
    for i in 0..extra {
        let dir = dirs[rng.random_range(0..dirs.len())];
        let size = match rng.random_range(0..4) {
            0 => rng.random_range(0..16),
            1 => rng.random_range(0..5000),
            _ => rng.random_range(0..40000),
        };
        files.push((
            format!("{dir}/random file {i} é{}.bin", rng.random_range(0..1000)),
            size,
        ));
    }
    for (name, size) in files {
        fs::write(root.join(name), bytes(&mut rng, size)).unwrap();
    }
}

/// Creates an empty file of `size` bytes.
pub fn blank(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// A FAT image (`fat_bits` 12, 16 or 32) of `mib` MiB holding `src`.
pub fn fat_image(dir: &Path, src: &Path, fat_bits: u32, mib: u64) -> PathBuf {
    let img = dir.join(format!("fat{fat_bits}.img"));
    blank(&img, mib << 20);
    run(Command::new("mkfs.vfat")
        .args(["-F", &fat_bits.to_string(), "-n", "TESTVOL"])
        .arg(&img));
    let entries: Vec<PathBuf> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg("-s")
        .args(&entries)
        .arg("::/"));
    img
}

/// An ext4 image of `mib` MiB holding `src` (`mke2fs -d`).
pub fn ext4_image(dir: &Path, src: &Path, mib: u64) -> PathBuf {
    let img = dir.join("ext4.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(src)
        .arg(&img)
        .arg(format!("{mib}M")));
    img
}

/// An NTFS image of `mib` MiB holding `src` (mkntfs, then wimcapture and
/// wimapply straight into the image file).
pub fn ntfs_image(dir: &Path, src: &Path, mib: u64) -> PathBuf {
    let img = dir.join("ntfs.img");
    blank(&img, mib << 20);
    run(Command::new("mkntfs").args(["-F", "-Q", "-q"]).arg(&img));
    let wim = dir.join("src.wim");
    run(Command::new("wimcapture")
        .arg(src)
        .arg(&wim)
        .arg("--no-acls"));
    run(Command::new("wimapply").arg(&wim).arg("1").arg(&img));
    img
}

/// Start of the partition in the wrapped disks, in 512-byte sectors.
pub const PART_START: u64 = 2048;

fn disk_with(fs_image: &Path, disk: &Path, tail: u64) -> u64 {
    let fs_bytes = fs::read(fs_image).unwrap();
    let sectors = (fs_bytes.len() as u64).div_ceil(512);
    blank(disk, (PART_START + sectors + tail) * 512);
    sectors
}

fn copy_in(fs_image: &Path, disk: &Path) {
    use std::os::unix::fs::FileExt;
    let fs_bytes = fs::read(fs_image).unwrap();
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&fs_bytes, PART_START * 512).unwrap();
}

/// A GPT disk (sgdisk) whose partition 1 holds `fs_image`.
pub fn gpt_disk(fs_image: &Path, disk: &Path, type_code: &str) -> u64 {
    let sectors = disk_with(fs_image, disk, 2048);
    run(Command::new("sgdisk")
        .arg(format!(
            "--new=1:{}:{}",
            PART_START,
            PART_START + sectors - 1
        ))
        .arg(format!("--typecode=1:{type_code}"))
        .arg("--change-name=1:test part")
        .arg(disk));
    copy_in(fs_image, disk);
    sectors
}

/// An MBR disk (sfdisk) whose partition 1 holds `fs_image`.
pub fn mbr_disk(fs_image: &Path, disk: &Path, type_byte: &str) -> u64 {
    let sectors = disk_with(fs_image, disk, 0);
    let script = format!("label: dos\n{PART_START},{sectors},{type_byte}\n");
    let mut child = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run sfdisk (is it installed?)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    copy_in(fs_image, disk);
    sectors
}

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
        let listed_meta = listed.iter().find(|(n, _)| *n == name).unwrap().1;
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
        let swapped: String = name
            .chars()
            .map(|c| {
                // Only swap letters whose other case is one character
                // (not 'ß' → "SS").
                let other: Vec<char> = if c.is_lowercase() {
                    c.to_uppercase().collect()
                } else {
                    c.to_lowercase().collect()
                };
                if other.len() == 1 { other[0] } else { c }
            })
            .collect();
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

/// A block device over bytes in memory, for mutated images.
pub struct MemDevice(pub Vec<u8>);

impl BlockDevice for MemDevice {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        self.0.len() as u64 / 512
    }
    fn disk_id(&self) -> [u8; 16] {
        [7; 16]
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = vmbdev_backing::check_request(self, lba, buf.len())? as usize;
        buf.copy_from_slice(&self.0[offset..offset + buf.len()]);
        Ok(())
    }
}

/// Wraps bytes as a shared device.
pub fn mem_device(bytes: Vec<u8>) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice(bytes))
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
                EntryKind::Directory => {}
                EntryKind::File => {
                    let mut offset = 0;
                    while offset < meta.size.min(1 << 20) {
                        match tree.read_at(&child, offset, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => offset += n as u64,
                        }
                    }
                }
            }
        }
    }
}

/// A device that counts the bytes read through it.
pub struct CountingDevice {
    /// The device read from.
    pub inner: Arc<dyn BlockDevice>,
    /// Bytes read so far.
    pub bytes: std::sync::atomic::AtomicU64,
}

impl BlockDevice for CountingDevice {
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn disk_id(&self) -> [u8; 16] {
        self.inner.disk_id()
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_sectors(lba, buf)
    }
}
