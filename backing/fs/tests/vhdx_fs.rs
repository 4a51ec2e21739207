//! Real file systems (mkfs.vfat + mcopy, mke2fs -d, mkntfs + wimapply) in
//! GPT and MBR disks, converted to VHDX by `qemu-img convert -O vhdx`, read
//! back through `open_image` → `open_tree` and compared with their source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vmbdev_block::BlockDevice;
use vmbdev_fs::open_tree;
use vmbdev_partition::PartitionScheme;
use vmbdev_partition::list_partitions;
use vmbdev_tests::images::*;
use vmbdev_tests::trees::*;
use vmbdev_vhdx::open_image;

/// Converts a raw disk to a dynamic VHDX with 1 MiB blocks.
fn to_vhdx(raw: &Path) -> PathBuf {
    let vhdx = raw.with_extension("vhdx");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic,block_size=1048576",
        ])
        .arg(raw)
        .arg(&vhdx));
    vhdx
}

/// Wraps `fs_image` in a GPT disk and an MBR disk, converts both to VHDX
/// and checks every file, directory and the case behaviour.
fn check_wrapped(
    dir: &Path,
    src: &Path,
    fs_image: &Path,
    gpt_type: &str,
    mbr_type: &str,
    case_insensitive: bool,
) {
    let gpt = dir.join("gpt.img");
    gpt_disk(fs_image, &gpt, gpt_type);
    let mbr = dir.join("mbr.img");
    mbr_disk(fs_image, &mbr, mbr_type);
    for (raw, scheme) in [(gpt, PartitionScheme::Gpt), (mbr, PartitionScheme::Mbr)] {
        let vhdx = to_vhdx(&raw);
        std::fs::remove_file(&raw).unwrap();
        let device: Arc<dyn BlockDevice> = Arc::from(open_image(&vhdx).unwrap());
        let parts = list_partitions(&*device).unwrap();
        assert_eq!(parts.len(), 1, "{vhdx:?}");
        assert_eq!(parts[0].scheme, scheme);
        assert_eq!(parts[0].first_lba, PART_START);
        let tree = open_tree(device, None).unwrap();
        let files = assert_tree_matches(&*tree, src);
        assert!(files > 15, "{vhdx:?}: only {files} files compared");
        assert_case_behaviour(&*tree, case_insensitive);
        std::fs::remove_file(&vhdx).unwrap();
    }
}

fn source(dir: &Path, seed: u64) -> PathBuf {
    let src = dir.join("src");
    make_source_tree(&src, seed, 14, true);
    src
}

#[test]
fn fat32_in_vhdx() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 31);
    let img = fat_image(tmp.path(), &src, 32, 36);
    check_wrapped(tmp.path(), &src, &img, "0700", "c", true);
}

#[test]
fn fat16_in_vhdx() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 32);
    let img = fat_image(tmp.path(), &src, 16, 16);
    check_wrapped(tmp.path(), &src, &img, "0700", "e", true);
}

#[test]
fn ext4_in_vhdx() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 33);
    let img = ext4_image(tmp.path(), &src, 16);
    check_wrapped(tmp.path(), &src, &img, "8300", "83", false);
}

#[test]
fn ntfs_in_vhdx() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 34);
    let img = ntfs_image(tmp.path(), &src, 16);
    check_wrapped(tmp.path(), &src, &img, "0700", "7", true);
}
