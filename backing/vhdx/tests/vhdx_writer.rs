//! Images from our writer pass `qemu-img check`, convert back to the source,
//! and differencing chains read like a simple model of parent plus changes.

mod common;

use std::path::Path;

use common::*;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_vhdx::{MAX_CHAIN_DEPTH, Vhdx, VhdxError, WriteOptions, write_differencing, write_vhdx};

fn write_from_raw(
    dir: &Path,
    name: &str,
    data_seed: u64,
    size: u64,
    opts: WriteOptions,
) -> (Vec<u8>, std::path::PathBuf) {
    let raw = dir.join(format!("{name}.raw"));
    let data = make_raw(&raw, size, data_seed);
    let img = dir.join(format!("{name}.vhdx"));
    let source = RawFile::open(&raw).unwrap();
    write_vhdx(&source, &img, &opts).unwrap();
    (data, img)
}

#[test]
fn dynamic_and_fixed_pass_qemu_check_and_convert() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (block_mib, fixed, sector)) in [
        (1u32, false, 512u32),
        (8, true, 512),
        (32, false, 512),
        (2, false, 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let opts = WriteOptions {
            block_size: block_mib << 20,
            logical_sector_size: sector,
            physical_sector_size: 4096,
            fixed,
        };
        let size = 21 * MIB + 8 * 512;
        let (data, img) = write_from_raw(dir.path(), &format!("w{i}"), i as u64 + 20, size, opts);
        if sector == 512 {
            tool("qemu-img", &["check", path_str(&img)]);
            assert_same(
                &qemu_raw(&img, dir.path()),
                &data,
                "qemu convert of our image",
            );
        }
        let vhdx = Vhdx::open(&img).unwrap();
        assert_eq!(vhdx.logical_sector_size(), sector);
        assert_same(&read_all(&vhdx), &data, "our read of our image");
        let counts = vhdx.info().bat_counts;
        if fixed {
            assert_eq!(counts.zero + counts.not_present, 0);
        } else {
            let zero_blocks = data
                .chunks((block_mib as usize) << 20)
                .filter(|c| c.iter().all(|b| *b == 0))
                .count() as u64;
            assert_eq!(counts.zero, zero_blocks, "zero blocks are left unallocated");
        }
    }
}

/// Random sector changes: some whole blocks, some scattered sectors.
fn random_changes(seed: u64, size: u64, block: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sectors = size / 512;
    let mut out = Vec::new();
    for _ in 0..6 {
        let lba = rng.random_range(0..sectors - 8);
        let n = rng.random_range(1..8u64);
        let mut bytes = vec![0u8; (n * 512) as usize];
        rng.fill(&mut bytes[..]);
        out.push((lba, bytes));
    }
    // One fully rewritten block.
    let mut whole = vec![0u8; block as usize];
    rng.fill(&mut whole[..]);
    out.push((block / 512, whole));
    out
}

fn apply(model: &mut [u8], changes: &[(u64, Vec<u8>)]) {
    for (lba, bytes) in changes {
        let at = *lba as usize * 512;
        model[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

#[test]
fn differencing_chain_reads_parent_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let (mut model, base) = write_from_raw(dir.path(), "base", 30, size, opts);
    let mid = dir.path().join("mid.vhdx");
    let changes = random_changes(31, size, MIB);
    write_differencing(&base, &mid, &changes, &opts).unwrap();
    apply(&mut model, &changes);
    let top = dir.path().join("top.vhdx");
    let changes = random_changes(32, size, 2 * MIB);
    write_differencing(&mid, &top, &changes, &opts).unwrap();
    apply(&mut model, &changes);

    let vhdx = Vhdx::open(&top).unwrap();
    let info = vhdx.info();
    assert_eq!(info.parent_chain.len(), 2);
    assert!(info.bat_counts.partially_present > 0);
    assert!(info.bat_counts.fully_present > 0);
    assert!(info.bat_counts.not_present > 0);
    assert_same(&read_all(&vhdx), &model, "chain read");
    qemu_view_of_child(&top, dir.path(), &model);
}

/// qemu-img reads differencing VHDX only in versions that support it; where
/// it opens the child, its view must equal ours. Where it refuses, it must
/// say so rather than return other data.
fn qemu_view_of_child(child: &Path, dir: &Path, model: &[u8]) {
    let out = dir.join("child.qemu.raw");
    let result = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw", path_str(child), path_str(&out)])
        .output()
        .expect("qemu-img is required");
    if result.status.success() {
        assert_same(&std::fs::read(&out).unwrap(), model, "qemu view of chain");
    } else {
        let err = String::from_utf8_lossy(&result.stderr);
        eprintln!("qemu-img refuses the differencing image: {err}");
        assert!(
            err.contains("not supported") || err.contains("Not supported"),
            "{err}"
        );
    }
}

#[test]
fn differencing_with_4096_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let size = 6 * MIB;
    let opts = WriteOptions {
        block_size: 1 << 20,
        logical_sector_size: 4096,
        physical_sector_size: 4096,
        fixed: false,
    };
    let (mut model, base) = write_from_raw(dir.path(), "base", 33, size, opts);
    let child = dir.path().join("child.vhdx");
    let changes: Vec<(u64, Vec<u8>)> = vec![(3, vec![0x5a; 4096 * 2]), (700, vec![0x11; 4096])];
    write_differencing(&base, &child, &changes, &opts).unwrap();
    for (lba, bytes) in &changes {
        let at = *lba as usize * 4096;
        model[at..at + bytes.len()].copy_from_slice(bytes);
    }
    assert_same(
        &read_all(&Vhdx::open(&child).unwrap()),
        &model,
        "4096 chain",
    );
}

#[test]
fn parent_problems_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let (_, base) = write_from_raw(dir.path(), "base", 40, 4 * MIB, opts);
    let child = dir.path().join("child.vhdx");
    write_differencing(&base, &child, &[(1, vec![1; 512])], &opts).unwrap();
    let good = std::fs::read(&base).unwrap();

    // A rewritten parent has a new data_write_guid.
    write_from_raw(dir.path(), "base", 40, 4 * MIB, opts);
    assert!(matches!(
        Vhdx::open(&child),
        Err(VhdxError::ParentLinkageMismatch { .. })
    ));

    std::fs::remove_file(&base).unwrap();
    assert!(matches!(
        Vhdx::open(&child),
        Err(VhdxError::ParentNotFound { .. })
    ));

    // A child copied over its own parent points at itself.
    std::fs::write(&base, &good).unwrap();
    std::fs::copy(&child, &base).unwrap();
    assert!(matches!(
        Vhdx::open(&child),
        Err(VhdxError::ParentCycle { .. })
    ));
}

#[test]
fn chain_depth_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let (_, mut prev) = write_from_raw(dir.path(), "base", 41, MIB, opts);
    for i in 0..MAX_CHAIN_DEPTH {
        let next = dir.path().join(format!("c{i}.vhdx"));
        write_differencing(&prev, &next, &[], &opts).unwrap();
        if i + 2 == MAX_CHAIN_DEPTH {
            // Exactly at the limit still opens.
            Vhdx::open(&next).unwrap();
        }
        prev = next;
    }
    assert!(matches!(
        Vhdx::open(&prev),
        Err(VhdxError::ChainTooDeep { .. })
    ));
}

#[test]
fn parent_with_other_sector_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let (_, base) = write_from_raw(dir.path(), "base", 42, 4 * MIB, opts);
    let child = dir.path().join("child.vhdx");
    write_differencing(&base, &child, &[(0, vec![7; MIB as usize])], &opts).unwrap();
    let mut b = std::fs::read(&child).unwrap();
    let at = metadata_value(&b, &LOGICAL_GUID);
    put32(&mut b, at, 4096);
    std::fs::write(&child, &b).unwrap();
    assert!(matches!(
        Vhdx::open(&child),
        Err(VhdxError::ParentSectorSizeMismatch {
            child: 4096,
            parent: 512,
            ..
        })
    ));
}

/// A child whose changes lie in the second sector-bitmap chunk (1 MiB
/// blocks, 512-byte sectors: 4096 blocks = 4 GiB per chunk) over a sparse
/// qemu-made parent.
#[test]
fn differencing_in_second_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=1048576",
            path_str(&base),
            "5G",
        ],
    );
    let at = 4096 * MIB + 3 * MIB;
    tool(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            &format!("write -P 0x66 {at} {}", 2 * MIB),
            path_str(&base),
        ],
    );
    let child = dir.path().join("child.vhdx");
    let lba = at / 512 + 100;
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    write_differencing(&base, &child, &[(lba, vec![0x77; 1024])], &opts).unwrap();
    let vhdx = Vhdx::open(&child).unwrap();
    assert_eq!(vhdx.info().bat_counts.partially_present, 1);
    assert_eq!(vhdx.info().bat_counts.bitmaps_present, 1);
    let mut buf = vec![0u8; 4 * MIB as usize];
    vhdx.read_sectors((at - MIB) / 512, &mut buf).unwrap();
    let mut want = vec![0u8; buf.len()];
    want[MIB as usize..3 * MIB as usize].fill(0x66);
    let changed = MIB as usize + 100 * 512;
    want[changed..changed + 1024].fill(0x77);
    assert_same(&buf, &want, "second chunk");
}
