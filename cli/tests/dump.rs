//! `vmbdev dump --direct` writes what `qemu-img convert -O raw` writes, and a
//! malformed image exits 1 with a one-line message.

use std::process::Command;
use vmbdev_tests::cli::{path_str, qemu_img, tool, vmbdev_command};

fn vmbdev() -> Command {
    vmbdev_command(env!("CARGO_BIN_EXE_vmbdev"))
}

#[test]
fn dump_matches_qemu_convert() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhdx");
    qemu_img(&[
        "create",
        "-f",
        "vhdx",
        "-o",
        "block_size=1048576",
        path_str(&img),
        "9M",
    ]);
    tool(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0x5c 512 3M",
            "-c",
            "write -P 0x17 7M 1536",
            path_str(&img),
        ],
    );
    let ours = dir.path().join("ours.raw");
    let theirs = dir.path().join("theirs.raw");
    let status = vmbdev()
        .args(["dump", "--direct", path_str(&img), "-o", path_str(&ours)])
        .status()
        .unwrap();
    assert!(status.success());
    qemu_img(&["convert", "-O", "raw", path_str(&img), path_str(&theirs)]);
    let (a, b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert!(a == b, "dump differs from qemu-img convert");
    assert!(a.contains(&0x5c));
}

#[test]
fn malformed_image_exits_1_with_message() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bad.vhdx");
    let mut bytes = vec![0u8; 2 << 20];
    bytes[..8].copy_from_slice(b"vhdxfile");
    std::fs::write(&img, &bytes).unwrap();
    let out = vmbdev()
        .args([
            "dump",
            "--direct",
            path_str(&img),
            "-o",
            path_str(&dir.path().join("o.raw")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.vhdx") && err.contains("header"), "{err}");
}

#[test]
fn usage_error_exits_2() {
    let out = vmbdev().args(["dump"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
