//! `locate` tells where every sector lives: reading each extent it reports
//! (`pread` of a file extent, zeros, or `read_sectors` for a copy) gives
//! the bytes `read_sectors` and `qemu-img convert -O raw` give, for images
//! qemu made (with holes), our differencing chains and partition views.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_block::{BlockDevice, Extent, RawFile};
use vmbdev_partition::PartitionDevice;
use vmbdev_vhdx::{Vhdx, WriteOptions, write_differencing, write_vhdx};

/// How many extents of each kind a walk met.
#[derive(Debug, Default)]
struct Kinds {
    file: usize,
    zero: usize,
    copy: usize,
}

/// Reads `count` sectors at `lba` extent by extent.
fn read_by_extents(dev: &dyn BlockDevice, lba: u64, count: u64, kinds: &mut Kinds) -> Vec<u8> {
    let sector = u64::from(dev.logical_sector_size());
    let mut out = vec![0u8; (count * sector) as usize];
    let mut done = 0u64;
    while done < count {
        let extent = dev.locate(lba + done, count - done).unwrap();
        let n = extent.sectors();
        assert!(
            n >= 1 && n <= count - done,
            "extent of {n} sectors for {}",
            count - done
        );
        let buf = &mut out[(done * sector) as usize..((done + n) * sector) as usize];
        match extent {
            Extent::File { fd, offset, .. } => {
                let file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
                file.read_exact_at(buf, offset).unwrap();
                kinds.file += 1;
            }
            Extent::Zero { .. } => kinds.zero += 1,
            Extent::Memory { bytes, .. } => buf.copy_from_slice(bytes),
            Extent::Copy { .. } => {
                dev.read_sectors(lba + done, buf).unwrap();
                kinds.copy += 1;
            }
        }
        done += n;
    }
    out
}

/// The whole device by extents, every sector alone, and random windows all
/// equal `expected`; returns the kinds the whole walk met.
fn check_device(dev: &dyn BlockDevice, expected: &[u8], seed: u64) -> Kinds {
    let sector = u64::from(dev.logical_sector_size());
    let count = dev.sector_count();
    assert_eq!(count * sector, expected.len() as u64);
    let mut kinds = Kinds::default();
    assert_same(
        &read_by_extents(dev, 0, count, &mut kinds),
        expected,
        "whole walk",
    );
    let mut ignored = Kinds::default();
    let mut each = Vec::with_capacity(expected.len());
    for lba in 0..count {
        each.extend(read_by_extents(dev, lba, 1, &mut ignored));
    }
    assert_same(&each, expected, "sector by sector");
    let mut rng = SmallRng::seed_from_u64(seed);
    for _ in 0..200 {
        let lba = rng.random_range(0..count);
        let n = rng.random_range(1..=(count - lba).min(5000));
        let at = (lba * sector) as usize;
        let want = &expected[at..at + (n * sector) as usize];
        assert_same(&read_by_extents(dev, lba, n, &mut ignored), want, "window");
    }
    assert!(dev.locate(count, 1).is_err(), "past the end");
    assert!(dev.locate(count - 1, 2).is_err(), "across the end");
    assert!(dev.locate(u64::MAX, 2).is_err(), "overflow");
    kinds
}

#[test]
fn qemu_dynamic_image_with_holes_and_partial_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhdx");
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            path_str(&img),
            "24M",
        ],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "write -P 0xcd 3M 2M",
            "-c",
            "write -P 0x11 10752512 4k",
            "-c",
            "write -P 0x5e 23M 1M",
            path_str(&img),
        ],
    );
    let theirs = qemu_raw(&img, dir.path());
    let vhdx = Vhdx::open(&img).unwrap();
    assert_same(&read_all(&vhdx), &theirs, "read_sectors");
    let kinds = check_device(&vhdx, &theirs, 1);
    assert!(kinds.file >= 3, "{kinds:?}");
    assert!(kinds.zero >= 3, "{kinds:?}");
    assert_eq!(kinds.copy, 0, "{kinds:?}");
    // Two blocks written back to back by one request are one extent when
    // qemu placed them next to each other in the file.
    match vhdx.locate(3 * 2048, 4096).unwrap() {
        Extent::File { sectors, .. } => assert!(sectors == 2048 || sectors == 4096),
        other => panic!("written block is {other:?}"),
    }
    // Unwritten blocks after the first write merge into one zero run.
    match vhdx.locate(2048, 2 * 2048).unwrap() {
        Extent::Zero { sectors } => assert_eq!(sectors, 2 * 2048),
        other => panic!("hole is {other:?}"),
    }
}

#[test]
fn converted_images_and_raw_files_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let size = 13 * MIB + 5 * 512;
    let raw = dir.path().join("src.raw");
    let data = make_raw(&raw, size, 7);
    let img = dir.path().join("c.vhdx");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vhdx",
            "-o",
            "block_size=1M,block_state_zero=on",
            path_str(&raw),
            path_str(&img),
        ],
    );
    let theirs = qemu_raw(&img, dir.path());
    assert_same(&theirs, &data, "qemu convert");
    let vhdx: Arc<dyn BlockDevice> = Arc::new(Vhdx::open(&img).unwrap());
    let kinds = check_device(&*vhdx, &theirs, 2);
    assert!(kinds.file > 0 && kinds.zero > 0, "{kinds:?}");

    let file = RawFile::open(&raw).unwrap();
    let kinds = check_device(&file, &data, 3);
    assert_eq!((kinds.file, kinds.zero, kinds.copy), (1, 0, 0));

    // A partition view translates offsets into the disk it views.
    let part = PartitionDevice::new(vhdx.clone(), 2049, 8000).unwrap();
    let at = 2049 * 512;
    check_device(&part, &data[at..at + 8000 * 512], 4);
}

fn write_raw_vhdx(dir: &Path, name: &str, size: u64, seed: u64) -> (Vec<u8>, std::path::PathBuf) {
    let raw = dir.join(format!("{name}.raw"));
    let data = make_raw(&raw, size, seed);
    let img = dir.join(format!("{name}.vhdx"));
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    write_vhdx(&RawFile::open(&raw).unwrap(), &img, &opts).unwrap();
    (data, img)
}

#[test]
fn differencing_chain_resolves_through_the_parents() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB;
    let (mut model, base) = write_raw_vhdx(dir.path(), "base", size, 40);
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let mid = dir.path().join("mid.vhdx");
    let mut rng = SmallRng::seed_from_u64(41);
    let mut changes = Vec::new();
    for i in 0..10u64 {
        let lba = i * 2300 + rng.random_range(0..100);
        let mut bytes = vec![0u8; 512 * rng.random_range(1..40usize)];
        rng.fill(&mut bytes[..]);
        changes.push((lba, bytes));
    }
    let mut whole = vec![0u8; MIB as usize];
    rng.fill(&mut whole[..]);
    changes.push((5 * 2048, whole));
    write_differencing(&base, &mid, &changes, &opts).unwrap();
    for (lba, bytes) in &changes {
        let at = *lba as usize * 512;
        model[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let top = dir.path().join("top.vhdx");
    let changes = vec![
        (100u64, vec![0x77u8; 512 * 3]),
        (9 * 2048 + 7, vec![0x88; 512]),
    ];
    write_differencing(&mid, &top, &changes, &opts).unwrap();
    for (lba, bytes) in &changes {
        let at = *lba as usize * 512;
        model[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let vhdx = Vhdx::open(&top).unwrap();
    assert!(vhdx.info().bat_counts.partially_present > 0);
    assert_same(&read_all(&vhdx), &model, "read_sectors");
    let kinds = check_device(&vhdx, &model, 5);
    assert!(kinds.file > 10, "{kinds:?}");
    // Sector 100 is the child's, 103 the middle image's or the base's.
    let child = Vhdx::open(&top).unwrap();
    let Extent::File {
        offset, sectors, ..
    } = child.locate(100, 10).unwrap()
    else {
        panic!("changed sectors are not a file extent");
    };
    assert_eq!(sectors, 3);
    let mut buf = vec![0u8; 512];
    std::fs::File::open(&top)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    assert_eq!(buf, vec![0x77; 512]);
}
