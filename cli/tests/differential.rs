//! Differential tests of `vmbdev ls -r` and `vmbdev cat` against the real
//! tools: seeded random trees (names drawn per file-system family, see
//! `vmbdev_tests::random_trees`) written by mkfs.vfat + mcopy in code pages
//! 437 and 850 (FAT12, FAT16, FAT32), mke2fs -d (ext4) and mkntfs +
//! wimapply (NTFS), wrapped in GPT (sgdisk) or MBR (sfdisk) and converted
//! by qemu-img. The listing must equal the source tree (kinds, sizes, link
//! targets), every file must read back byte for byte, and FAT names must
//! also equal what `mdir` lists for the same volume.
//!
//! The matrix pairs each partition table with one container, GPT + VHDX
//! and MBR + dynamic VHD, for all eight file systems: every reader and
//! every table and container is covered while each image costs one
//! process per file. The two other pairings (GPT + VHD, MBR + VHDX) are
//! run for FAT16 in code page 850 and for ext4, which exercise both table
//! types' partition type codes and both fixed-root and cluster-chained
//! directories.
//!
//! ext4 and NTFS store names as given, so the source tree is the reference
//! there (and what `debugfs` and `ntfsls` list must equal it too); FAT
//! short names go through the code page, so their listing is also
//! compared with `mdir`'s. The stress set (a 10,000-entry directory,
//! 255-character names, 40 levels of nesting (20 on FAT), a 5 GiB sparse
//! ext4 file) builds one image per file system instead of the matrix, and
//! reads a sample of the 10,000 files; files over `READ_LIMIT` are listed
//! only.
//! `VMBDEV_TEST_SEED=N` draws other random trees.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use vmbdev_tests::cli::{cat, ls_json};
use vmbdev_tests::images::{
    ext4_image, fat_image_in_code_page, gpt_disk, mbr_disk, mtools, mtools_config, ntfs_image,
    run_output, to_vhd, to_vhdx,
};
use vmbdev_tests::random_trees::{Family, Listed, lower, make_random_tree, source_listing};
use vmbdev_tests::trees::swap_case;

const VMBDEV: &str = env!("CARGO_BIN_EXE_vmbdev");

/// One file system of the matrix.
#[derive(Debug, Clone, Copy)]
struct Case {
    family: Family,
    /// 12, 16 or 32 for FAT; 0 otherwise.
    fat_bits: u32,
}

impl Case {
    fn name(self) -> String {
        match self.family {
            Family::Fat(cp) => format!("fat{}-cp{cp}", self.fat_bits),
            Family::Ext4 => "ext4".into(),
            Family::Ntfs => "ntfs".into(),
        }
    }

    /// `--codepage N` for FAT, nothing otherwise.
    fn options(self) -> Vec<String> {
        match self.family {
            Family::Fat(cp) => vec!["--codepage".into(), cp.to_string()],
            _ => Vec::new(),
        }
    }

    /// GPT type code and MBR type byte of the partition.
    fn type_codes(self) -> (&'static str, &'static str) {
        match (self.family, self.fat_bits) {
            (Family::Ext4, _) => ("8300", "83"),
            (Family::Ntfs, _) => ("0700", "7"),
            (_, 12) => ("0700", "1"),
            (_, 16) => ("0700", "e"),
            _ => ("0700", "c"),
        }
    }

    /// The file system of `src`, made by the real tools in `dir`.
    fn build(self, dir: &Path, src: &Path) -> PathBuf {
        match self.family {
            Family::Fat(cp) => {
                let kib = if self.fat_bits == 32 {
                    40 << 10
                } else {
                    16 << 10
                };
                let name = format!("{}.img", self.name());
                fat_image_in_code_page(dir, &name, src, self.fat_bits, kib, cp)
            }
            // 64 MiB: enough inodes for the 10,000-entry directory.
            Family::Ext4 => ext4_image(dir, src, 64),
            Family::Ntfs => ntfs_image(dir, src, 48),
        }
    }
}

/// The seed of a case: fixed, so a failure reproduces, and printed with
/// it; `VMBDEV_TEST_SEED=N` draws other trees.
fn seed(case: Case) -> u64 {
    let offset: u64 = std::env::var("VMBDEV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let base = match case.family {
        Family::Fat(cp) => u64::from(cp) * 100 + u64::from(case.fat_bits),
        Family::Ext4 => 4,
        Family::Ntfs => 7,
    };
    0x5EED_0000 + base + (offset << 16)
}

/// Paths and kinds (`dir` or `file`) `mdir -/ -a` lists for a FAT image,
/// long names where there are any, short names otherwise.
fn mdir_listing(img: &Path, code_page: u32, dir: &Path) -> BTreeSet<(String, String)> {
    let conf = mtools_config(dir, code_page);
    let text = run_output(
        mtools("mdir", &conf)
            .args(["-/", "-a", "-i"])
            .arg(img)
            .arg("::/"),
    );
    let mut out = BTreeSet::new();
    // mdir names a directory in its headers with its own letter case, so
    // headers are matched to the directory entries listed before them.
    let mut dirs: BTreeMap<String, String> = BTreeMap::from([(String::new(), String::new())]);
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("Directory for ::") {
            let key = lower(path.trim_end_matches('/'));
            current = Some(dirs.get(&key).cloned().unwrap_or(key));
            continue;
        }
        if line.starts_with(' ') && line.contains(" file") {
            // A directory's entries end at its "N files" summary.
            current = None;
        }
        let (Some(parent), Some((name, kind))) = (&current, mdir_entry(line)) else {
            continue;
        };
        if name != "." && name != ".." {
            let path = format!("{parent}/{name}");
            if kind == "dir" {
                dirs.insert(lower(&path), path.clone());
            }
            out.insert((path, kind));
        }
    }
    out
}

/// The name and kind in one `mdir` entry line: an 8-character name field,
/// a 3-character extension, the size or `<DIR>`, date and time, then the
/// long name when the entry has one.
fn mdir_entry(line: &str) -> Option<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() < 13 || chars[0] == ' ' {
        return None;
    }
    let field = |range: std::ops::Range<usize>| -> String {
        chars[range]
            .iter()
            .collect::<String>()
            .trim_end()
            .to_owned()
    };
    let (base, ext) = (field(0..8), field(9..12));
    let rest: String = chars[12..].iter().collect();
    let mut tail = rest.as_str();
    let mut fields = Vec::new();
    for _ in 0..3 {
        tail = tail.trim_start();
        let end = tail.find(' ').unwrap_or(tail.len());
        fields.push(&tail[..end]);
        tail = &tail[end..];
    }
    let kind = if fields[0] == "<DIR>" { "dir" } else { "file" };
    // Two spaces separate the time from a long name.
    let long = tail.strip_prefix("  ").filter(|l| !l.is_empty());
    let name = match long {
        Some(long) => long.to_owned(),
        None if ext.is_empty() => base,
        None => format!("{base}.{ext}"),
    };
    Some((name, kind.to_owned()))
}

/// `kind`, or only `dir` and `file` when the tool tells no more.
fn kind_or_dir(kind: &str, keep_kind: bool) -> String {
    match kind {
        "dir" => "dir".into(),
        _ if !keep_kind => "file".into(),
        other => other.into(),
    }
}

/// Paths and kinds `debugfs -R "ls -p DIR"` lists for each directory of
/// `source` (lost+found left out): `/inode/mode/uid/gid/name/size/` lines.
fn debugfs_listing(img: &Path, source: &[Listed], dir: &Path) -> BTreeSet<(String, String)> {
    let dirs: Vec<&str> = std::iter::once("/")
        .chain(
            source
                .iter()
                .filter(|e| e.kind == "dir")
                .map(|e| e.path.as_str()),
        )
        .collect();
    let commands = dir.join("debugfs.cmds");
    let script: String = dirs.iter().map(|d| format!("ls -p \"{d}\"\n")).collect();
    fs::write(&commands, script).unwrap();
    let text = run_output(
        std::process::Command::new("debugfs")
            .arg("-f")
            .arg(&commands)
            .arg(img),
    );
    let mut out = BTreeSet::new();
    let mut parent = "";
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("debugfs: ls -p \"") {
            parent = d.trim_end_matches('"').trim_end_matches('/');
            continue;
        }
        let fields: Vec<&str> = line.split('/').collect();
        let [_, _, mode, _, _, name, _, _] = fields[..] else {
            continue;
        };
        if name == "." || name == ".." || (parent.is_empty() && name == "lost+found") {
            continue;
        }
        let kind = match u32::from_str_radix(mode, 8).unwrap() >> 12 {
            0o04 => "dir",
            0o10 => "file",
            0o12 => "link",
            0o01 => "fifo",
            other => panic!("{name}: type {other:o}"),
        };
        out.insert((format!("{parent}/{name}"), kind.to_owned()));
    }
    out
}

/// Paths and kinds (`dir` or `file`) `ntfsls -R -F` lists: a `/DIR/:`
/// header before each directory's names, a `/` after directory names.
fn ntfsls_listing(img: &Path) -> BTreeSet<(String, String)> {
    let text = run_output(
        std::process::Command::new("ntfsls")
            .args(["-R", "-F"])
            .arg(img),
    );
    let mut out = BTreeSet::new();
    let mut parent = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(d) = line.strip_suffix(":").filter(|d| d.starts_with('/')) {
            parent = d.trim_end_matches('/').to_owned();
            continue;
        }
        let (name, kind) = match line.strip_suffix('/') {
            Some(name) => (name, "dir"),
            None => (line, "file"),
        };
        if name != "." && name != ".." {
            out.insert((format!("{parent}/{name}"), kind.to_owned()));
        }
    }
    out
}

/// Files larger than this are listed but not read (`cat` holds a whole
/// file in memory).
const READ_LIMIT: u64 = 64 << 20;

/// Checks `image` (a disk holding the file system of `case` made from
/// `src`) against the source: listing, bytes of every `step`-th file (and
/// the last) up to `READ_LIMIT`, and for FAT and NTFS case-folded lookups.
fn check_image(case: Case, src: &Path, image: &Path, source: &[Listed], step: usize) {
    let what = format!("{} seed {:#x} {}", case.name(), seed(case), image.display());
    let options = case.options();
    let mut extra: Vec<&str> = options.iter().map(String::as_str).collect();
    let mut listed = ls_json(VMBDEV, image, &extra);
    // mke2fs adds lost+found to every ext4 volume: not part of the source.
    listed.retain(|e| !(case.family == Family::Ext4 && e.path.starts_with("/lost+found")));
    assert_eq!(listed, source, "{what}: listing");
    let files: Vec<&Listed> = source.iter().filter(|e| e.kind == "file").collect();
    for (i, entry) in files.iter().enumerate() {
        if (i % step != 0 && i + 1 != files.len()) || entry.size > READ_LIMIT {
            continue;
        }
        let want = fs::read(src.join(&entry.path[1..])).unwrap();
        // Every other file by RDMA, the others in-band.
        extra.truncate(options.len());
        extra.push(if i % 2 == 1 { "--rdma" } else { "--in-band" });
        let path = match case.family {
            Family::Ext4 => entry.path.clone(),
            _ if i % 3 == 0 => swap_case(&entry.path),
            _ => entry.path.clone(),
        };
        let got = cat(VMBDEV, image, &path, &extra).unwrap_or_else(|out| {
            panic!(
                "{what}: cat {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(got == want, "{what}: {path} differs");
    }
}

/// Builds the file system of `case` from a fresh random tree, wraps it in
/// each (table, container) pair and checks each disk.
fn run_case(case: Case, pairs: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("src");
    make_random_tree(&src, case.family, seed(case));
    let source = source_listing(&src);
    let fs_image = case.build(dir, &src);
    if let Family::Fat(cp) = case.family {
        let theirs = mdir_listing(&fs_image, cp, dir);
        let ours: BTreeSet<(String, String)> = source
            .iter()
            .map(|e| (e.path.clone(), e.kind.clone()))
            .collect();
        assert_eq!(
            ours,
            theirs,
            "{} seed {:#x}: source and mdir",
            case.name(),
            seed(case)
        );
    }
    let kinds = |keep_kind: bool| -> BTreeSet<(String, String)> {
        source
            .iter()
            .map(|e| (e.path.clone(), kind_or_dir(&e.kind, keep_kind)))
            .collect()
    };
    match case.family {
        Family::Ext4 => assert_eq!(debugfs_listing(&fs_image, &source, dir), kinds(true)),
        Family::Ntfs => assert_eq!(ntfsls_listing(&fs_image), kinds(false)),
        Family::Fat(_) => {}
    }
    for &pair in pairs {
        let image = disk(case, &fs_image, pair);
        check_image(case, &src, &image, &source, 1);
        fs::remove_file(&image).unwrap();
    }
}

/// `fs_image` in a partition table (`gpt` or `mbr`) in a container
/// (`vhdx`, or a dynamic `vhd`), next to it.
fn disk(case: Case, fs_image: &Path, (table, container): (&str, &str)) -> PathBuf {
    let (gpt_type, mbr_type) = case.type_codes();
    let raw = fs_image.with_file_name(format!("{}-{table}.raw", case.name()));
    match table {
        "gpt" => gpt_disk(fs_image, &raw, gpt_type),
        _ => mbr_disk(fs_image, &raw, mbr_type),
    };
    let image = match container {
        "vhdx" => to_vhdx(&raw),
        _ => to_vhd(&raw, "subformat=dynamic"),
    };
    fs::remove_file(&raw).unwrap();
    image
}

/// Builds `case`'s file system of the tree `fill` writes, in one disk
/// `pair`, and checks the listing and every `step`-th file.
fn run_stress(case: Case, pair: (&str, &str), step: usize, fill: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fill(&src);
    check_stress(case, pair, step, &src, tmp.path());
}

/// Builds `case`'s file system of `src` in `dir`, in one disk `pair`, and
/// checks the listing and every `step`-th file.
fn check_stress(case: Case, pair: (&str, &str), step: usize, src: &Path, dir: &Path) {
    let source = source_listing(src);
    let fs_image = case.build(dir, src);
    let image = disk(case, &fs_image, pair);
    check_image(case, src, &image, &source, step);
    fs::remove_file(fs_image).unwrap();
    fs::remove_file(image).unwrap();
}

const EXT4: Case = Case {
    family: Family::Ext4,
    fat_bits: 0,
};
const NTFS: Case = Case {
    family: Family::Ntfs,
    fat_bits: 0,
};

const MAIN_PAIRS: [(&str, &str); 2] = [("gpt", "vhdx"), ("mbr", "vhd")];
const OTHER_PAIRS: [(&str, &str); 2] = [("gpt", "vhd"), ("mbr", "vhdx")];

fn fat(bits: u32, code_page: u32) -> Case {
    Case {
        family: Family::Fat(code_page),
        fat_bits: bits,
    }
}

#[test]
fn fat12_trees_in_both_code_pages() {
    run_case(fat(12, 437), &MAIN_PAIRS);
    run_case(fat(12, 850), &MAIN_PAIRS);
}

#[test]
fn fat16_trees_in_both_code_pages() {
    run_case(fat(16, 437), &MAIN_PAIRS);
    let both: Vec<_> = MAIN_PAIRS.iter().chain(&OTHER_PAIRS).copied().collect();
    run_case(fat(16, 850), &both);
}

#[test]
fn fat32_trees_in_both_code_pages() {
    run_case(fat(32, 437), &MAIN_PAIRS);
    run_case(fat(32, 850), &MAIN_PAIRS);
}

#[test]
fn ext4_trees_with_case_siblings_links_fifos_and_holes() {
    let both: Vec<_> = MAIN_PAIRS.iter().chain(&OTHER_PAIRS).copied().collect();
    run_case(EXT4, &both);
}

#[test]
fn ntfs_trees_with_long_unicode_names_and_holes() {
    run_case(NTFS, &MAIN_PAIRS);
}

/// Entries in the large directory of the stress tests.
const MANY: usize = 10_000;

#[test]
fn a_10000_entry_directory_on_fat32_ext4_and_ntfs() {
    // One source for the three: writing 10,000 files is slow on a loaded
    // host. 8.3 names, as mcopy takes minutes to pick numeric tails for
    // 10,000 long names.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let many = src.join("many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..MANY {
        fs::write(many.join(format!("F{i:05}.BIN")), &b"0123456789"[..i % 10]).unwrap();
    }
    for (case, pair) in [
        (fat(32, 437), ("gpt", "vhdx")),
        (EXT4, ("mbr", "vhd")),
        (NTFS, ("gpt", "vhd")),
    ] {
        check_stress(case, pair, 397, &src, tmp.path());
    }
}

/// Directories nested `depth` deep under `src`, a file in each, and at
/// the bottom a directory and a file with names of `long` (255 UTF-16
/// units, or 255 bytes on ext4).
fn deep_and_long(src: &Path, depth: usize, long: &str) {
    let mut at = src.to_owned();
    for level in 0..depth {
        at = at.join(format!("level {level:02}"));
        fs::create_dir(&at).unwrap();
        fs::write(at.join("here.txt"), format!("level {level}")).unwrap();
    }
    let named = at.join(long);
    fs::create_dir(&named).unwrap();
    fs::write(
        named.join(format!("{}x", &long[..long.len() - 1])),
        b"longest",
    )
    .unwrap();
    fs::write(src.join(long), vec![0x5A; 5000]).unwrap();
}

#[test]
fn names_of_255_characters_and_deep_nesting() {
    // 100 two-byte letters and 55 ASCII: 155 characters, 255 bytes.
    let bytes_255 = format!("{}{}", "é".repeat(100), "a".repeat(55));
    assert_eq!(bytes_255.len(), 255);
    // 255 UTF-16 units, the FAT and NTFS limit; ASCII, as the host
    // directory holds at most 255 bytes.
    let units_255 = format!("{}12345", "Long name ".repeat(25));
    assert_eq!(units_255.encode_utf16().count(), 255);
    run_stress(EXT4, ("mbr", "vhdx"), 1, |src| {
        deep_and_long(src, 40, &bytes_255)
    });
    run_stress(NTFS, ("mbr", "vhd"), 1, |src| {
        deep_and_long(src, 40, &units_255)
    });
    run_stress(fat(32, 850), ("gpt", "vhdx"), 1, |src| {
        deep_and_long(src, 20, &units_255)
    });
}

#[test]
fn a_sparse_ext4_file_past_4_gib_lists_its_size() {
    // Read back in full by the reader tests (backing/fs ext4_kinds); here
    // the listing and the small files around it go through the binary.
    run_stress(EXT4, ("gpt", "vhdx"), 1, |src| {
        use std::os::unix::fs::FileExt;
        let big = fs::File::create(src.join("big.sparse")).unwrap();
        big.set_len(5 << 30).unwrap();
        big.write_all_at(b"past four gibibytes", (4 << 30) + 12345)
            .unwrap();
        fs::write(src.join("after.txt"), b"small").unwrap();
    });
}
