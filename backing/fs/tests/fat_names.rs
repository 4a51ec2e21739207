//! FAT as mtools writes it: 8.3 names holding OEM code-page bytes (no long
//! name), the 0x05 stand-in for a leading 0xE5, NT lower-case flags,
//! case-insensitive lookups, FAT12 floppies, times, attributes and free
//! space, each compared with the source tree and with `mdir`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_fs::{CodePage, FatTree, FatType, FileTree, Timestamp, TreePath, usage};
use vmbdev_tests::images::*;

/// Names that fit 8.3 in the code page, so mtools stores them without a
/// long name, with the byte each is expected to start with on disk.
fn short_names(code_page: u32) -> Vec<(&'static str, u8)> {
    let mut names = vec![
        ("É.TXT", 0x90),
        ("résumé", b'R'),
        ("å", 0x8F),
        ("Readme.TXT", b'R'),
    ];
    if code_page == 850 {
        // Õ is 0xE5 in code page 850: stored as 0x05.
        names.push(("Õ.TXT", 0x05));
    }
    names
}

fn make_source(root: &Path, code_page: u32) -> BTreeSet<String> {
    fs::create_dir_all(root.join("ü")).unwrap();
    fs::write(root.join("ü/inner.txt"), b"inside a short-named directory").unwrap();
    let mut names = BTreeSet::from(["ü".to_owned()]);
    for (name, _) in short_names(code_page) {
        fs::write(root.join(name), format!("bytes of {name}")).unwrap();
        names.insert(name.to_owned());
    }
    names
}

fn mount(img: &Path, code_page: CodePage) -> FatTree {
    let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open(img).unwrap());
    FatTree::mount_with(device, code_page).unwrap()
}

fn listed_names(tree: &dyn FileTree, dir: &str) -> BTreeSet<String> {
    tree.read_dir(&TreePath::parse(dir))
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The names `mdir -b` prints for the root (bare `::/NAME` lines).
fn mdir_names(img: &Path, conf: &Path) -> BTreeSet<String> {
    let out = mtools("mdir", conf)
        .args(["-b", "-i"])
        .arg(img)
        .arg("::/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("::/").trim_end_matches('/').to_owned())
        .collect()
}

/// The raw 32-byte root-directory entries of a FAT12/16 image.
fn fixed_root_entries(img: &Path) -> Vec<[u8; 32]> {
    let bytes = fs::read(img).unwrap();
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let bps = u16_at(11);
    let root = (u16_at(14) + usize::from(bytes[16]) * u16_at(22)) * bps;
    bytes[root..root + u16_at(17) * 32]
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap())
        .collect()
}

#[test]
fn short_names_decode_through_each_code_page_like_mdir() {
    let tmp = tempfile::tempdir().unwrap();
    for (code_page, ours) in [(437, CodePage::Cp437), (850, CodePage::Cp850)] {
        for (bits, kib) in [(12, 1440), (16, 20 * 1024), (32, 40 * 1024)] {
            let src = tmp.path().join(format!("src-{code_page}-{bits}"));
            let expected = make_source(&src, code_page);
            let img = fat_image_in_code_page(
                tmp.path(),
                &format!("cp{code_page}-fat{bits}.img"),
                &src,
                bits,
                kib,
                code_page,
            );
            let tree = mount(&img, ours);
            let what = format!("CP{code_page} FAT{bits}");
            assert_eq!(
                tree.fat_type(),
                [FatType::Fat12, FatType::Fat16, FatType::Fat32][(bits / 16) as usize],
                "{what}"
            );
            assert_eq!(listed_names(&tree, "/"), expected, "{what}");
            let conf = mtools_config(tmp.path(), code_page);
            // `mdir -b` prints short names without applying the NT case
            // flags, so compare letters ignoring case.
            let upper = |names: BTreeSet<String>| -> BTreeSet<String> {
                names.iter().map(|n| n.to_uppercase()).collect()
            };
            assert_eq!(
                upper(mdir_names(&img, &conf)),
                upper(expected.clone()),
                "{what}: mdir"
            );
            assert_eq!(
                listed_names(&tree, "/ü"),
                BTreeSet::from(["inner.txt".into()])
            );
            let mut buf = [0u8; 64];
            let n = tree
                .read_at(&TreePath::parse("/ü/inner.txt"), 0, &mut buf)
                .unwrap();
            assert_eq!(&buf[..n], b"inside a short-named directory", "{what}");
            for name in &expected {
                if name == "ü" {
                    continue;
                }
                let n = tree.read_at(&TreePath::parse(name), 0, &mut buf).unwrap();
                assert_eq!(
                    &buf[..n],
                    format!("bytes of {name}").as_bytes(),
                    "{what} {name}"
                );
            }
            if bits != 32 {
                // The names really are stored as bytes of the code page,
                // with no long-name fragments.
                let entries = fixed_root_entries(&img);
                for (name, first) in short_names(code_page) {
                    assert!(
                        entries
                            .iter()
                            .any(|e| e[0] == first && e[11] & 0x0F != 0x0F),
                        "{what}: no short entry for {name} starting with {first:#04x}"
                    );
                }
                // Only "Readme.TXT", whose mixed case the NT flags cannot
                // express, needs a long name (one fragment).
                let long = entries
                    .iter()
                    .filter(|e| e[11] == 0x0F && e[0] != 0xE5)
                    .count();
                assert_eq!(long, 1, "{what}: long-name fragments");
            }
        }
    }
}

#[test]
fn lookups_ignore_case_as_windows_does() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 850);
    let img = fat_image_in_code_page(tmp.path(), "f.img", &src, 12, 1440, 850);
    let tree = mount(&img, CodePage::Cp850);
    for (asked, stored) in [
        ("/Ü/INNER.TXT", "ü/inner.txt"),
        ("/ü/Inner.Txt", "ü/inner.txt"),
        ("/RÉSUMÉ", "résumé"),
        ("/é.txt", "É.TXT"),
        ("/README.TXT", "Readme.TXT"),
        ("/readme.txt", "Readme.TXT"),
        ("/õ.txt", "Õ.TXT"),
        ("/Å", "å"),
    ] {
        let meta = tree
            .lookup(&TreePath::parse(asked))
            .unwrap_or_else(|e| panic!("{asked}: {e}"));
        let size = fs::metadata(src.join(stored)).unwrap().len();
        assert_eq!(meta.size, size, "{asked}");
    }
    assert!(tree.lookup(&TreePath::parse("/resume")).is_err());
}

#[test]
fn the_wrong_code_page_changes_names_above_0x7f_only() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 850);
    let img = fat_image_in_code_page(tmp.path(), "f.img", &src, 12, 1440, 850);
    let as_437 = listed_names(&mount(&img, CodePage::Cp437), "/");
    // 0xE5 is Õ in 850 and σ in 437; bytes 0x90 (É) and 0x8F (Å) are the
    // same in both.
    assert!(as_437.contains("σ.TXT"), "{as_437:?}");
    assert!(
        as_437.contains("É.TXT") && as_437.contains("Readme.TXT"),
        "{as_437:?}"
    );
    assert!(!as_437.contains("Õ.TXT"));
}

#[test]
fn times_and_attributes_come_from_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("old.txt"), b"x").unwrap();
    fs::write(src.join("sub/hidden.txt"), b"y").unwrap();
    // 2021-03-04 05:06:08 UTC (an even second: FAT keeps 2 s steps).
    let when = 1_614_834_368;
    run(std::process::Command::new("touch")
        .args(["-d", &format!("@{when}")])
        .arg(src.join("old.txt")));
    let img = fat_image_in_code_page(tmp.path(), "t.img", &src, 16, 16 * 1024, 437);
    let conf = mtools_config(tmp.path(), 437);
    run(mtools("mattrib", &conf)
        .args(["-i"])
        .arg(&img)
        .args(["+r", "+h", "::/sub/hidden.txt"]));
    let tree = mount(&img, CodePage::Cp437);
    let old = tree.lookup(&TreePath::parse("/old.txt")).unwrap();
    assert_eq!(old.modified, Some(Timestamp::new(when, 0)));
    assert_eq!(old.accessed, Some(Timestamp::new(when - when % 86_400, 0)));
    assert_eq!(old.attributes.map(|a| a & 0x3F), Some(0x20), "archive only");
    let hidden = tree.lookup(&TreePath::parse("/sub/hidden.txt")).unwrap();
    assert_eq!(
        hidden.attributes.map(|a| a & 0x07),
        Some(0x03),
        "read-only, hidden"
    );
    let sub = tree.lookup(&TreePath::parse("/sub")).unwrap();
    assert_eq!(sub.attributes.map(|a| a & 0x10), Some(0x10));
    // `mcopy -m` stores the kept time as the creation time too.
    assert_eq!(old.created, Some(Timestamp::new(when, 0)));
}

/// Bytes `mdir` reports free.
fn mdir_free_bytes(img: &Path, conf: &Path) -> u64 {
    let out = mtools("mdir", conf)
        .arg("-i")
        .arg(img)
        .arg("::/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("bytes free"))
        .unwrap_or_else(|| panic!("no free line in {text}"));
    line.split("bytes free")
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn free_space_and_type_match_mdir_for_each_fat() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data.bin"), vec![7u8; 300_000]).unwrap();
    let conf = mtools_config(tmp.path(), 437);
    for (bits, kib, fat_type) in [
        (12, 1440, FatType::Fat12),
        (16, 16 * 1024, FatType::Fat16),
        (32, 40 * 1024, FatType::Fat32),
    ] {
        let img = fat_image_in_code_page(tmp.path(), &format!("u{bits}.img"), &src, bits, kib, 437);
        let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open(&img).unwrap());
        let found = usage(device.clone(), vmbdev_fs::FsKind::Fat)
            .unwrap()
            .unwrap();
        assert_eq!(found.fat_type, Some(fat_type));
        assert_eq!(found.free_bytes, mdir_free_bytes(&img, &conf), "FAT{bits}");
        let tree = FatTree::mount(device).unwrap();
        assert_eq!(
            u64::from(tree.count_free_clusters().unwrap()) * tree.cluster_bytes(),
            found.free_bytes,
            "FAT{bits}: counted and recorded free space agree"
        );
    }
}

#[test]
fn fat32_with_a_stale_fsinfo_count_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let img = fat_image_in_code_page(tmp.path(), "s.img", &src, 32, 40 * 1024, 437);
    let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open(&img).unwrap());
    let true_free = FatTree::mount(device)
        .unwrap()
        .count_free_clusters()
        .unwrap();
    // FSInfo is sector 1 (mkfs.vfat's choice); claim more free clusters
    // than the volume has, which the reader must not believe.
    let mut bytes = fs::read(&img).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[48], bytes[49]]), 1);
    bytes[512 + 488..512 + 492].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    fs::write(&img, &bytes).unwrap();
    let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open(&img).unwrap());
    let tree = FatTree::mount(device).unwrap();
    assert_eq!(tree.free_clusters().unwrap(), true_free);
}

/// Reads `len` bytes of `path` at `offset` the way a zero-copy reader does:
/// each run `locate` names is read from its file (or is zeros); returns
/// the bytes and how many runs were mapped.
fn read_by_locate(tree: &FatTree, path: &TreePath, offset: u64, len: u64) -> (Vec<u8>, usize) {
    use std::os::unix::fs::FileExt;
    let (mut out, mut runs) = (Vec::new(), 0);
    while (out.len() as u64) < len {
        let at = offset + out.len() as u64;
        let extent = tree
            .locate(path, at, len - out.len() as u64)
            .unwrap()
            .expect("a FAT file on a raw image is always mapped");
        if extent.is_empty() {
            break;
        }
        let mut run = vec![0u8; extent.len() as usize];
        match extent {
            vmbdev_fs::FileExtent::Borrowed { fd, offset, .. } => {
                let file = fs::File::from(fd.try_clone_to_owned().unwrap());
                file.read_exact_at(&mut run, offset).unwrap();
            }
            vmbdev_fs::FileExtent::Zero { .. } => {}
            other => panic!("unexpected extent {other:?}"),
        }
        out.extend_from_slice(&run);
        runs += 1;
    }
    (out, runs)
}

#[test]
fn locate_maps_a_fragmented_file_run_by_run_like_mtype() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = mtools_config(tmp.path(), 437);
    let img = tmp.path().join("fat.img");
    blank(&img, 16 << 20);
    // FAT16: no FSInfo next-free hint, so mtools fills the first free
    // clusters.
    run(std::process::Command::new("mkfs.vfat")
        .args(["-F", "16", "-s", "1"])
        .arg(&img));
    // A hole left by a deleted file makes the next big file take it first,
    // then continue after the file that follows the hole.
    let piece = |n: usize, seed: u32| -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed as u8)
            .collect()
    };
    for (name, data) in [
        ("a.bin", piece(40_000, 1)),
        ("b.bin", piece(70_000, 2)),
        ("c.bin", piece(30_000, 3)),
    ] {
        let src = tmp.path().join(name);
        fs::write(&src, &data).unwrap();
        run(mtools("mcopy", &conf)
            .arg("-i")
            .arg(&img)
            .arg(&src)
            .arg(format!("::/{name}")));
    }
    run(mtools("mdel", &conf).arg("-i").arg(&img).arg("::/b.bin"));
    let big = piece(300_001, 4);
    let src = tmp.path().join("d.bin");
    fs::write(&src, &big).unwrap();
    run(mtools("mcopy", &conf)
        .arg("-i")
        .arg(&img)
        .arg(&src)
        .arg("::/d.bin"));
    let theirs = mtools("mtype", &conf)
        .args(["-b", "-i"])
        .arg(&img)
        .arg("::/d.bin")
        .output()
        .unwrap();
    assert!(theirs.stdout == big, "mtype prints the file");

    let tree = mount(&img, CodePage::Cp437);
    let path = TreePath::parse("/d.bin");
    let (whole, runs) = read_by_locate(&tree, &path, 0, big.len() as u64 + 10);
    assert!(whole == big, "the runs put together are the file");
    assert!(runs >= 2, "the file is fragmented ({runs} run)");
    // From an offset inside a sector and a cluster, up to the end.
    let (tail, _) = read_by_locate(&tree, &path, 12_345, 1 << 20);
    assert!(tail == big[12_345..], "a run starting mid-sector");
    let mut buf = vec![0u8; big.len()];
    assert_eq!(tree.read_at(&path, 0, &mut buf).unwrap(), big.len());
    assert!(buf == big, "read_at agrees");
    assert!(
        tree.locate(&path, big.len() as u64, 10)
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        tree.locate(&TreePath::parse("/"), 0, 10),
        Err(vmbdev_fs::TreeError::IsADirectory(_))
    ));
}
