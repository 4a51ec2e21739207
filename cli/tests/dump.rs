//! `vmbdev dump --direct` writes what `qemu-img convert -O raw` writes, and a
//! malformed image exits 1 with a one-line message.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required for this test: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dump_matches_qemu_convert() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhdx");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=1048576",
            s(&img),
            "9M",
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0x5c 512 3M",
            "-c",
            "write -P 0x17 7M 1536",
            s(&img),
        ],
    );
    let ours = dir.path().join("ours.raw");
    let theirs = dir.path().join("theirs.raw");
    let status = Command::new(env!("CARGO_BIN_EXE_vmbdev"))
        .args(["dump", "--direct", s(&img), "-o", s(&ours)])
        .status()
        .unwrap();
    assert!(status.success());
    run("qemu-img", &["convert", "-O", "raw", s(&img), s(&theirs)]);
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
    let out = Command::new(env!("CARGO_BIN_EXE_vmbdev"))
        .args([
            "dump",
            "--direct",
            s(&img),
            "-o",
            s(&dir.path().join("o.raw")),
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
    let out = Command::new(env!("CARGO_BIN_EXE_vmbdev"))
        .args(["dump"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
