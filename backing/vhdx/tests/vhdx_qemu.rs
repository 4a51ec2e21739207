//! Images made by qemu-img read byte for byte like `qemu-img convert -O raw`.

mod common;

use common::*;
use vmbdev_block::BlockDevice;
use vmbdev_vhdx::open_image;
use vmbdev_vhdx::{LogState, Vhdx};

fn check_matrix(block_mib: u64, fixed: bool, zero_state: bool, size: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let data = make_raw(&raw, size, seed);
    let img = dir.path().join("disk.vhdx");
    let mut opts = format!(
        "block_size={},block_state_zero={}",
        block_mib * MIB,
        if zero_state { "on" } else { "off" }
    );
    if fixed {
        opts.push_str(",subformat=fixed");
    }
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vhdx",
            "-o",
            &opts,
            path_str(&raw),
            path_str(&img),
        ],
    );
    let vhdx = Vhdx::open(&img).unwrap();
    assert_eq!(vhdx.info().block_size as u64, block_mib * MIB);
    assert_eq!(vhdx.info().virtual_size, size);
    let ours = read_all(&vhdx);
    let theirs = qemu_raw(&img, dir.path());
    assert_same(&ours, &theirs, &format!("{opts} size {size}"));
    assert_same(&ours, &data, "source");
    // The generic opener picks VHDX too.
    let any = open_image(&img).unwrap();
    assert_eq!(any.size_bytes(), size);
}

const ODD_SIZE: u64 = 21 * MIB + 7 * 512;

#[test]
fn block_1mib_dynamic_and_fixed() {
    check_matrix(1, false, true, ODD_SIZE, 1);
    check_matrix(1, true, false, ODD_SIZE, 2);
}

#[test]
fn block_8mib_dynamic_zero_state_on_and_off() {
    check_matrix(8, false, true, 40 * MIB, 3);
    check_matrix(8, false, false, ODD_SIZE, 4);
    check_matrix(8, true, true, ODD_SIZE, 5);
}

#[test]
fn block_32mib() {
    check_matrix(32, false, false, 70 * MIB + 512, 6);
    check_matrix(32, true, true, 40 * MIB, 7);
}

#[test]
fn block_256mib() {
    check_matrix(256, false, true, ODD_SIZE, 8);
    check_matrix(256, true, false, 20 * MIB, 9);
}

#[test]
fn clean_log_reports_stale_entries_after_qemu_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhdx");
    tool("qemu-img", &["create", "-f", "vhdx", path_str(&img), "24M"]);
    tool(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0xab 1M 3M",
            "-c",
            "write -z 2M 64k",
            path_str(&img),
        ],
    );
    let vhdx = Vhdx::open(&img).unwrap();
    assert!(matches!(vhdx.info().log, LogState::Clean { .. }));
    assert_same(
        &read_all(&vhdx),
        &qemu_raw(&img, dir.path()),
        "qemu-io image",
    );
}

#[test]
fn unaligned_multi_block_reads_match_model() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let data = make_raw(&raw, 12 * MIB, 11);
    let img = dir.path().join("disk.vhdx");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vhdx",
            "-o",
            "block_size=1048576",
            path_str(&raw),
            path_str(&img),
        ],
    );
    let vhdx = Vhdx::open(&img).unwrap();
    for (lba, sectors) in [
        (0u64, 1usize),
        (2047, 2),
        (1000, 5000),
        (3, 20000),
        (24575, 1),
    ] {
        let mut buf = vec![0u8; sectors * 512];
        vhdx.read_sectors(lba, &mut buf).unwrap();
        let at = lba as usize * 512;
        assert_same(&buf, &data[at..at + buf.len()], "range");
    }
    let mut buf = vec![0u8; 1024];
    assert!(vhdx.read_sectors(24575, &mut buf).is_err());
    assert!(vhdx.read_sectors(0, &mut buf[..100]).is_err());
}

#[test]
fn open_and_read_leave_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, 8 * MIB, 12);
    let img = dir.path().join("disk.vhdx");
    tool(
        "qemu-img",
        &["convert", "-O", "vhdx", path_str(&raw), path_str(&img)],
    );
    let before = std::fs::read(&img).unwrap();
    let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let vhdx = Vhdx::open(&img).unwrap();
    read_all(&vhdx);
    drop(vhdx);
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), mtime);
    assert!(std::fs::read(&img).unwrap() == before);
}

/// Data on both sides of the 4 GiB chunk boundary (32 MiB blocks: 128 blocks
/// per chunk, so the BAT interleaves a sector bitmap entry after block 127).
#[test]
fn reads_across_chunk_boundary_match_written_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.vhdx");
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=33554432",
            path_str(&img),
            "9G",
        ],
    );
    let writes = [
        (4096 * MIB - MIB, 2 * MIB, 0x3au8),
        (8192 * MIB + 4096, 8192, 0x4b),
        (100 * MIB, 4096, 0x5c),
    ];
    let mut args: Vec<String> = vec!["-f".into(), "vhdx".into()];
    for (at, len, pattern) in writes {
        args.push("-c".into());
        args.push(format!("write -P {pattern} {at} {len}"));
    }
    args.push(path_str(&img).into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("qemu-io", &args);
    let vhdx = Vhdx::open(&img).unwrap();
    assert_eq!(vhdx.info().bat_counts.fully_present, 4);
    for (at, len, pattern) in writes {
        // The written range plus 64 KiB of zeros on each side.
        let start = at - 65536;
        let mut buf = vec![0u8; (len + 2 * 65536) as usize];
        vhdx.read_sectors(start / 512, &mut buf).unwrap();
        let mut want = vec![0u8; buf.len()];
        want[65536..65536 + len as usize].fill(pattern);
        assert_same(&buf, &want, &format!("range at {at:#x}"));
    }
}
