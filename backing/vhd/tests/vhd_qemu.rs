//! Images made by qemu-img read byte for byte like their raw source and
//! like `qemu-img convert -O raw`, and differencing disks built to the
//! specification over qemu-made parents read like a model of the chain.

mod common;

use common::*;
use vmbdev_block::BlockDevice;
use vmbdev_vhd::{DiskType, Vhd, VhdError};

fn convert(raw: &std::path::Path, img: &std::path::Path, subformat: &str, force: bool) {
    let opts = format!(
        "subformat={subformat},force_size={}",
        if force { "on" } else { "off" }
    );
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            &opts,
            path_str(raw),
            path_str(img),
        ],
    );
}

fn check(subformat: &str, force: bool, size: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = make_raw(&raw, size, seed);
    let img = dir.path().join("disk.vhd");
    convert(&raw, &img, subformat, force);
    let what = format!("{subformat} force_size={force} size {size}");
    let vhd = Vhd::open(&img).unwrap();
    let info = vhd.info().clone();
    let expected_type = if subformat == "fixed" {
        DiskType::Fixed
    } else {
        DiskType::Dynamic
    };
    assert_eq!(info.disk_type, expected_type, "{what}");
    if force {
        // force_size keeps the requested size and marks the creator.
        assert_eq!(info.current_size, size, "{what}");
        assert_eq!(info.creator_app, "qem2", "{what}");
    } else {
        // Without it qemu rounds up to a whole CHS geometry.
        assert_eq!(info.current_size, info.geometry.size_bytes(), "{what}");
        assert!(info.current_size >= size, "{what}");
        assert_eq!(info.creator_app, "qemu", "{what}");
    }
    let ours = read_all(&vhd);
    data.resize(info.current_size as usize, 0);
    assert_same(&ours, &data, &format!("{what}: vs the raw source"));
    let mut theirs = qemu_raw(&img, dir.path());
    if subformat == "fixed" {
        // qemu exposes a fixed disk's whole file, footer sector included.
        assert_eq!(theirs.len() as u64, info.current_size + 512, "{what}");
        theirs.truncate(info.current_size as usize);
    }
    assert_same(
        &ours,
        &theirs,
        &format!("{what}: vs qemu-img convert -O raw"),
    );
}

const ODD_SIZE: u64 = 21 * MIB + 7 * 512;

#[test]
fn fixed_with_and_without_force_size() {
    check("fixed", false, ODD_SIZE, 1);
    check("fixed", true, ODD_SIZE, 2);
}

#[test]
fn dynamic_with_and_without_force_size() {
    check("dynamic", false, ODD_SIZE, 3);
    check("dynamic", true, ODD_SIZE, 4);
    check("dynamic", true, 9 * MIB, 5);
}

/// A dynamic image written in place by qemu-io (blocks allocated after
/// creation, BAT updated) reads like qemu's own conversion of it.
#[test]
fn dynamic_written_by_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.vhd");
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "vpc",
            "-o",
            "force_size=on",
            path_str(&img),
            "12M",
        ],
    );
    for cmd in [
        "write -P 0x5a 3M 64k",
        "write -P 0xa5 1536 4k",
        "write -P 0x33 11M 1M",
    ] {
        tool("qemu-io", &["-f", "vpc", "-c", cmd, path_str(&img)]);
    }
    let vhd = Vhd::open(&img).unwrap();
    assert_eq!(vhd.info().allocated_blocks, 3);
    let ours = read_all(&vhd);
    let mut expected = vec![0u8; 12 * MIB as usize];
    expected[3 * MIB as usize..3 * MIB as usize + 65536].fill(0x5a);
    expected[1536..1536 + 4096].fill(0xa5);
    expected[11 * MIB as usize..].fill(0x33);
    assert_same(&ours, &expected, "written pattern");
    assert_same(
        &ours,
        &qemu_raw(&img, dir.path()),
        "qemu-img convert -O raw",
    );
}

/// Sectors the test writes into a child: (first sector, count).
const CHILD_WRITES: &[(u64, u64)] = &[(0, 1), (7, 9), (4096, 4096), (5000, 3), (9 * 2048, 129)];

/// A differencing child over a qemu-made dynamic parent: set bitmap bits
/// read the child's 0x5a sectors, clear bits and unallocated blocks the
/// parent's bytes (the model is the parent's raw conversion by qemu-img
/// with the written sectors overlaid).
#[test]
fn differencing_over_qemu_parent() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB;
    let raw = dir.path().join("src.raw");
    make_raw(&raw, size, 9);
    let parent = dir.path().join("parent.vhd");
    convert(&raw, &parent, "dynamic", true);
    let parent_bytes = std::fs::read(&parent).unwrap();
    let mut expected = qemu_raw(&parent, dir.path());
    let block_size = 2 * MIB as u32;
    let spb = block_size as u64 / 512;
    let mut layout = child_of(unique_id_of(&parent_bytes), "parent.vhd", size, block_size);
    let mut blocks: std::collections::BTreeMap<u32, Block> = Default::default();
    for &(first, count) in CHILD_WRITES {
        for s in first..first + count {
            let b = blocks.entry((s / spb) as u32).or_insert_with(|| Block {
                index: (s / spb) as u32,
                bitmap: vec![0; 512],
                data: vec![0x77; block_size as usize],
            });
            let i = (s % spb) as usize;
            b.bitmap[i / 8] |= 0x80 >> (i % 8);
            b.data[i * 512..(i + 1) * 512].fill(0x5a);
            expected[s as usize * 512..(s as usize + 1) * 512].fill(0x5a);
        }
    }
    layout.blocks = blocks.into_values().collect();
    let child = dir.path().join("child.vhd");
    std::fs::write(&child, layout.build()).unwrap();
    let vhd = Vhd::open(&child).unwrap();
    assert_eq!(vhd.info().disk_type, DiskType::Differencing);
    assert_eq!(vhd.info().parent_chain.len(), 1);
    assert_same(&read_all(&vhd), &expected, "child over parent");
    // Sub-block reads at odd places agree with the model too.
    for (lba, sectors) in [(6u64, 3usize), (4095, 2), (4999, 5), (9 * 2048 + 128, 2)] {
        let mut buf = vec![0u8; sectors * 512];
        vhd.read_sectors(lba, &mut buf).unwrap();
        assert_eq!(
            buf,
            expected[lba as usize * 512..][..sectors * 512],
            "lba {lba}"
        );
    }
}

/// The generic opener of the image crates picks the VHD reader for fixed
/// and dynamic VHDs alike.
#[test]
fn open_image_dispatches_to_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let data = make_raw(&raw, 3 * MIB, 11);
    for subformat in ["fixed", "dynamic"] {
        let img = dir.path().join(format!("{subformat}.vhd"));
        convert(&raw, &img, subformat, true);
        let any = vmbdev_vhdx::open_image(&img).unwrap();
        assert_eq!(any.size_bytes(), 3 * MIB, "{subformat}");
        assert_same(&read_all(&*any), &data, subformat);
    }
    let mut broken = std::fs::read(dir.path().join("dynamic.vhd")).unwrap();
    broken[100] ^= 1;
    let img = dir.path().join("broken.vhd");
    std::fs::write(&img, broken).unwrap();
    assert!(matches!(
        vmbdev_vhdx::open_image(&img),
        Err(vmbdev_vhdx::VhdxError::Vhd(VhdError::BadChecksum {
            structure: "footer copy",
            ..
        }))
    ));
}
