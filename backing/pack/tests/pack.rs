//! `pack_directory` output checked by the real tools: `qemu-img check` on
//! the VHDX, `sgdisk --verify` on the disk, `fsck.vfat -n` on the
//! partition, every file read back with mtools and through our own
//! `open_image` → `open_tree`, compared with the source.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vmbdev_block::BlockDevice;
use vmbdev_fs::open_tree;
use vmbdev_pack::{PackError, PackOptions, pack_directory};
use vmbdev_partition::list_partitions;
use vmbdev_partition::{PartitionScheme, PartitionType};
use vmbdev_tests::images::*;
use vmbdev_tests::trees::*;
use vmbdev_vhdx::open_image;

const MIB: u64 = 1 << 20;

fn qemu_raw(image: &Path, dir: &Path) -> PathBuf {
    let raw = dir.join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw));
    raw
}

/// Every path under `root` (relative, `/`-separated), files and dirs.
fn walk(root: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            let is_dir = e.file_type().unwrap().is_dir();
            out.push((child.to_str().unwrap().to_owned(), is_dir));
            if is_dir {
                stack.push(child);
            }
        }
    }
    out.sort();
    out
}

/// Reads the partition of a packed disk out to its own file, with its
/// first LBA.
fn extract_partition(raw: &Path, dir: &Path) -> (PathBuf, u64) {
    let device = vmbdev_block::RawFile::open(raw).unwrap();
    let parts = list_partitions(&device).unwrap();
    assert_eq!(parts.len(), 1);
    let p = &parts[0];
    let bytes = fs::read(raw).unwrap();
    let part = dir.join("part.img");
    fs::write(
        &part,
        &bytes[(p.first_lba * 512) as usize..((p.last_lba + 1) * 512) as usize],
    )
    .unwrap();
    (part, p.first_lba)
}

fn fsck_clean(part: &Path) -> String {
    let out = Command::new("fsck.vfat")
        .args(["-n", "-v"])
        .arg(part)
        .output()
        .expect("fsck.vfat is required");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fsck.vfat found problems:\n{text}");
    for bad in [
        "differ",
        "Wrong",
        "wrong",
        "invalid",
        "Invalid",
        "Free cluster",
        "Bad",
    ] {
        assert!(!text.contains(bad), "fsck.vfat reports {bad:?}:\n{text}");
    }
    text
}

fn sgdisk_verify(raw: &Path) {
    let text = run_output(Command::new("sgdisk").arg("--verify").arg(raw));
    assert!(
        text.contains("No problems found") && !text.contains("Caution"),
        "sgdisk --verify:\n{text}"
    );
}

/// Every file of `src` read with `mcopy` from the disk at the partition
/// offset equals its source; every directory is listed by `mdir`.
///
/// Names with characters outside the Basic Multilingual Plane are left to
/// our own reader: mtools 4.0 decodes each UTF-16 surrogate of such a name
/// as `_` (measured: `a😀b.txt` written by mcopy to a mkfs.vfat volume
/// lists as `ab.txt`, and ours, stored as a surrogate pair, as `a__b.txt`).
/// Names with `[` are left out too: mtools takes `[...]` as a wildcard.
fn mtools_match(raw: &Path, first_lba: u64, src: &Path, dir: &Path) {
    let image = format!("{}@@{}", raw.display(), first_lba * 512);
    let out = dir.join("mcopy.out");
    let mut files = 0;
    for (rel, is_dir) in walk(src) {
        if rel.contains('[') || rel.chars().any(|c| u32::from(c) > 0xFFFF) {
            continue;
        }
        if is_dir {
            run(Command::new("mdir")
                .args(["-i", &image])
                .arg(format!("::/{rel}")));
            continue;
        }
        let _ = fs::remove_file(&out);
        run(Command::new("mcopy")
            .args(["-n", "-i", &image])
            .arg(format!("::/{rel}"))
            .arg(&out));
        let got = fs::read(&out).unwrap();
        assert!(
            got == fs::read(src.join(&rel)).unwrap(),
            "mcopy {rel}: contents differ"
        );
        files += 1;
    }
    assert!(files > 5);
}

fn pack(src: &Path, out: &Path, options: &PackOptions) -> vmbdev_pack::PackReport {
    pack_directory(src, out, options).unwrap()
}

#[test]
fn packed_tree_passes_the_tools_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source_tree(&src, 21, 30, true);
    // A directory spanning many clusters, with aliases that need tails.
    let many = src.join("many long names");
    fs::create_dir(&many).unwrap();
    for i in 0..150 {
        fs::write(
            many.join(format!("a long file name number {i}.text")),
            format!("{i}"),
        )
        .unwrap();
    }
    fs::write(many.join("UPPER.TXT"), b"exact 8.3").unwrap();
    fs::write(many.join("lower.txt"), b"lower-case 8.3").unwrap();
    fs::write(many.join(".hidden"), b"dot").unwrap();
    fs::write(many.join("x".repeat(255)), b"longest").unwrap();

    let vhdx = tmp.path().join("out.vhdx");
    let report = pack(&src, &vhdx, &PackOptions::default());
    assert_eq!(report.cluster_bytes, 512);
    assert_eq!(report.partition_first_lba, 2048);
    run(Command::new("qemu-img").arg("check").arg(&vhdx));
    // Dynamic: far smaller than the disk.
    assert!(fs::metadata(&vhdx).unwrap().len() < report.disk_size / 2 + 8 * MIB);

    let raw = qemu_raw(&vhdx, tmp.path());
    assert_eq!(fs::metadata(&raw).unwrap().len(), report.disk_size);
    sgdisk_verify(&raw);
    let (part, first_lba) = extract_partition(&raw, tmp.path());
    let fsck = fsck_clean(&part);
    assert!(fsck.contains("512 bytes per cluster"), "{fsck}");
    mtools_match(&raw, first_lba, &src, tmp.path());

    let device: Arc<dyn BlockDevice> = Arc::from(open_image(&vhdx).unwrap());
    let parts = list_partitions(&*device).unwrap();
    assert_eq!(parts[0].scheme, PartitionScheme::Gpt);
    assert_eq!(
        parts[0].partition_type,
        PartitionType::Guid(vmbdev_partition::BASIC_DATA_PARTITION)
    );
    let tree = open_tree(device, None).unwrap();
    assert_eq!(assert_tree_matches(&*tree, &src) as u64, report.files);
    assert_case_behaviour(&*tree, true);
}

#[test]
fn mkfs_vfat_sees_the_same_layout_rules() {
    // mtools' own view of the boot sector: cluster size from the table,
    // two FATs, the partition offset as hidden sectors.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source_tree(&src, 22, 5, false);
    for (size, cluster) in [(64 * MIB, 512u64), (300 * MIB, 4096)] {
        let vhdx = tmp.path().join("sized.vhdx");
        let report = pack(
            &src,
            &vhdx,
            &PackOptions {
                disk_size: Some(size),
                block_size: Some(2 << 20),
                label: Some("Packed".into()),
                ..PackOptions::default()
            },
        );
        assert_eq!(report.disk_size, size);
        let info = run_output(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&vhdx),
        );
        assert!(
            info.contains(&format!("\"virtual-size\": {size}")),
            "{info}"
        );
        assert!(info.contains("\"cluster-size\": 2097152"), "{info}");
        let raw = qemu_raw(&vhdx, tmp.path());
        sgdisk_verify(&raw);
        let (part, first_lba) = extract_partition(&raw, tmp.path());
        fsck_clean(&part);
        let minfo = run_output(
            Command::new("minfo")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(format!("{}@@{}", raw.display(), first_lba * 512))
                .arg("::"),
        );
        assert!(
            minfo.contains(&format!("cluster size: {} sectors", cluster / 512)),
            "{minfo}"
        );
        assert!(minfo.contains("hidden sectors: 2048"), "{minfo}");
        assert!(
            minfo.contains("Packed") || minfo.contains("PACKED"),
            "{minfo}"
        );
        let label = run_output(
            Command::new("mlabel")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-s", "-i"])
                .arg(format!("{}@@{}", raw.display(), first_lba * 512))
                .arg("::"),
        );
        assert!(label.contains("PACKED"), "{label}");
        mtools_match(&raw, first_lba, &src, tmp.path());
        fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn an_empty_tree_packs_to_a_valid_minimum_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    // Only things that are not packed: a link and a non-UTF-8 name.
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"bad\xff name");
        fs::write(src.join(name), b"x").unwrap();
    }
    let vhdx = tmp.path().join("empty.vhdx");
    let report = pack(&src, &vhdx, &PackOptions::default());
    assert_eq!(report.files, 0);
    assert_eq!(report.skipped_count, 2);
    assert_eq!(report.skipped.len(), 2);
    // mkfs.vfat refuses FAT32 below about 32 MiB too.
    assert!(report.disk_size >= 33 * MIB && report.disk_size <= 40 * MIB);
    let raw = qemu_raw(&vhdx, tmp.path());
    sgdisk_verify(&raw);
    let (part, _) = extract_partition(&raw, tmp.path());
    fsck_clean(&part);
    let tree = open_tree(Arc::from(open_image(&vhdx).unwrap()), None).unwrap();
    assert!(
        tree.read_dir(&vmbdev_fs::TreePath::root())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn unpackable_trees_are_refused_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.vhdx");

    let case = tmp.path().join("case");
    fs::create_dir_all(case.join("d")).unwrap();
    fs::write(case.join("d/Name.txt"), b"1").unwrap();
    fs::write(case.join("d/NAME.TXT"), b"2").unwrap();
    let err = pack_directory(&case, &out, &PackOptions::default()).unwrap_err();
    assert!(matches!(err, PackError::Fat(_)), "{err}");
    assert!(err.to_string().contains("/d/"), "{err}");

    let colon = tmp.path().join("colon");
    fs::create_dir(&colon).unwrap();
    fs::write(colon.join("a:b"), b"").unwrap();
    let err = pack_directory(&colon, &out, &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("a:b"), "{err}");

    let big = tmp.path().join("big");
    fs::create_dir(&big).unwrap();
    fs::File::create(big.join("huge"))
        .unwrap()
        .set_len(1 << 32)
        .unwrap();
    let err = pack_directory(&big, &out, &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("/huge"), "{err}");

    let small = tmp.path().join("small");
    make_source_tree(&small, 23, 0, true);
    let err = pack_directory(
        &small,
        &out,
        &PackOptions {
            disk_size: Some(16 * MIB),
            ..PackOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, PackError::DiskTooSmall { .. }), "{err}");
    // Large enough for FAT32 but not for the files.
    fs::write(small.join("filler"), vec![7u8; 38 << 20]).unwrap();
    let err = pack_directory(
        &small,
        &out,
        &PackOptions {
            disk_size: Some(40 * MIB),
            ..PackOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("clusters"), "{err}");
    assert!(pack_directory(&tmp.path().join("missing"), &out, &PackOptions::default()).is_err());
}

/// Random names: Unicode, spaces, dots, characters that are legal in long
/// names but not in 8.3 ones, shared prefixes that force `~N` tails, and
/// lengths up to the 255-unit limit.
fn random_name(rng: &mut rand::rngs::SmallRng) -> String {
    use rand::Rng;
    const POOL: &[&str] = &[
        "a", "B", "z", "0", "9", " ", ".", "+", ",", ";", "=", "[", "]", "~", "-", "_", "é", "Ü",
        "ß", "日", "本", "😀", "Ω", "$", "'", "(",
    ];
    let prefix = ["report", "Report final", ".config", "x"][rng.random_range(0..4)];
    let len = match rng.random_range(0..10) {
        0 => rng.random_range(60..120),
        _ => rng.random_range(0..20),
    };
    let mut name = prefix.to_owned();
    for _ in 0..len {
        name.push_str(POOL[rng.random_range(0..POOL.len())]);
    }
    let ext = ["", ".txt", ".TXT", ".tar.gz", ".verylongext"][rng.random_range(0..5)];
    name.push_str(ext);
    name.trim_end_matches(['.', ' ']).to_owned() + "q"
}

#[test]
fn random_names_survive_the_round_trip() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    let dirs = ["", "sub dir", "sub dir/Ünder", ".dotted.dir"];
    for d in dirs {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    let mut taken = std::collections::HashSet::new();
    let mut made = 0;
    while made < 160 {
        let dir = dirs[rng.random_range(0..dirs.len())];
        let name = random_name(&mut rng);
        let folded: String = name.chars().flat_map(char::to_lowercase).collect();
        if name.len() > 255 || !taken.insert(format!("{dir}/{folded}")) {
            continue;
        }
        let size = rng.random_range(0..3000);
        let mut bytes = vec![0u8; size];
        rng.fill(&mut bytes[..]);
        fs::write(src.join(dir).join(&name), bytes).unwrap();
        made += 1;
    }
    let vhdx = tmp.path().join("names.vhdx");
    pack(&src, &vhdx, &PackOptions::default());
    let raw = qemu_raw(&vhdx, tmp.path());
    let (part, first_lba) = extract_partition(&raw, tmp.path());
    fsck_clean(&part);
    mtools_match(&raw, first_lba, &src, tmp.path());
    let tree = open_tree(Arc::from(open_image(&vhdx).unwrap()), None).unwrap();
    assert_eq!(assert_tree_matches(&*tree, &src), 160);
}

/// `build_disk` packs any `FileTree`: here an in-memory tree whose
/// directories fill their 512-byte cluster exactly (16 entries, no end
/// marker) or spill one entry into a second cluster, and an ext4 image
/// read through `open_tree`. The packed disk is itself a block device.
#[test]
fn any_file_tree_packs_including_exactly_full_directory_clusters() {
    use vmbdev_fs::FileTree;
    use vmbdev_pack::build_disk;
    let tmp = tempfile::tempdir().unwrap();
    let mut builder = vmbdev_fs::MemoryTree::builder();
    // 13 files, EMPTY, "." and "..": 16 entries, one full cluster.
    for i in 0..13 {
        builder
            .add_file(&format!("FULL/F{i:02}"), vec![i as u8; i * 100])
            .unwrap();
    }
    // 15 files, "." and "..": one entry in a second cluster.
    for i in 0..15 {
        builder
            .add_file(&format!("SPILL/F{i:02}"), vec![i as u8; 513])
            .unwrap();
    }
    builder.add_dir("FULL/EMPTY").unwrap();
    let memory = builder.build();
    let disk = build_disk(&memory, tmp.path(), &PackOptions::default()).unwrap();
    assert_eq!(disk.report().files, 28);
    fs::write(tmp.path().join("mem.raw"), disk_bytes(&disk)).unwrap();
    let (part, _) = extract_partition(&tmp.path().join("mem.raw"), tmp.path());
    fsck_clean(&part);
    let tree = open_tree(Arc::new(disk), None).unwrap();
    for dir in ["/FULL", "/SPILL"] {
        // Names, kinds and sizes: FAT adds times and attributes that the
        // memory tree does not have.
        let shape = |listing: Vec<(String, vmbdev_fs::Metadata)>| {
            let mut v: Vec<_> = listing
                .into_iter()
                .map(|(name, m)| (name, m.kind, m.size))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let want = shape(memory.read_dir(&vmbdev_fs::TreePath::parse(dir)).unwrap());
        let got = shape(tree.read_dir(&vmbdev_fs::TreePath::parse(dir)).unwrap());
        assert_eq!(got, want, "{dir}");
    }
    let mut buf = vec![0u8; 2000];
    let n = tree
        .read_at(&vmbdev_fs::TreePath::parse("/full/f12"), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], &vec![12u8; 1200][..]);

    // An ext4 image as the source: the packed FAT32 holds the same tree.
    let src = tmp.path().join("src");
    make_source_tree(&src, 24, 10, false);
    let ext4 = ext4_image(tmp.path(), &src, 8);
    let ext4_tree = open_tree(Arc::new(vmbdev_block::RawFile::open(&ext4).unwrap()), None).unwrap();
    let from_ext4 = build_disk(&*ext4_tree, tmp.path(), &PackOptions::default()).unwrap();
    let tree = open_tree(Arc::new(from_ext4), None).unwrap();
    assert_tree_matches(&*tree, &src);
}

/// Every byte of a device.
fn disk_bytes(device: &dyn BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; device.size_bytes() as usize];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        device.read_sectors(i as u64 * 2048, chunk).unwrap();
    }
    out
}
