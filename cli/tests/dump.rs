//! `vmbdev dump --direct` writes what `qemu-img convert -O raw` writes, as
//! sparse as it (both paths, file and pipe), and a malformed image exits 1
//! with a one-line message.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
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

/// Host bytes a file takes.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A 64 MiB dynamic VHDX with 1 MiB blocks, made by qemu-img and written
/// by qemu-io: data in a few blocks (one of them with a zero 64 KiB stretch
/// inside), the rest never written, and a last block written with zeros.
fn half_empty_vhdx(dir: &Path) -> std::path::PathBuf {
    half_empty(dir, "vhdx", "block_size=1048576")
}

/// The same in qemu-img's format `format` (`vhdx`, or `vpc` for VHD).
fn half_empty(dir: &Path, format: &str, options: &str) -> std::path::PathBuf {
    let img = dir.join(format!("half.{format}"));
    qemu_img(&["create", "-f", format, "-o", options, path_str(&img), "64M"]);
    tool(
        "qemu-io",
        &[
            "-f",
            format,
            "-c",
            "write -P 0xa5 1M 3M",
            "-c",
            "write -z 2M 64k",
            "-c",
            "write -P 0x3c 20M 512k",
            "-c",
            "write -P 0x00 40M 1M",
            "-c",
            "write -P 0x77 63M 4k",
            path_str(&img),
        ],
    );
    img
}

#[test]
fn dump_of_a_half_empty_image_is_as_sparse_as_qemu_convert() {
    let dir = tempfile::tempdir().unwrap();
    dumps_as_sparse_as_qemu(dir.path(), &half_empty_vhdx(dir.path()));
    let vhd = half_empty(dir.path(), "vpc", "subformat=dynamic,force_size=on");
    dumps_as_sparse_as_qemu(dir.path(), &vhd);
}

/// Dumps `img` both ways and compares bytes and allocation with
/// `qemu-img convert -O raw`.
fn dumps_as_sparse_as_qemu(dir: &Path, img: &Path) {
    let theirs = dir.join("theirs.raw");
    qemu_img(&["convert", "-O", "raw", path_str(img), path_str(&theirs)]);
    let want = std::fs::read(&theirs).unwrap();
    for direct in [true, false] {
        let ours = dir.join(format!("ours-{direct}.raw"));
        let mut cmd = vmbdev();
        cmd.arg("dump");
        if direct {
            cmd.arg("--direct");
        }
        let out = cmd
            .args([path_str(img), "-o", path_str(&ours)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&ours).unwrap();
        assert_eq!(got.len(), want.len(), "direct={direct}");
        assert!(
            got == want,
            "direct={direct}: dump differs from qemu-img convert"
        );
        // Written data is 3.5 MiB + 4 KiB; a dump that wrote its zeros would
        // take 64 MiB.
        let slack = 64 << 10;
        assert!(
            allocated(&ours) <= allocated(&theirs) + slack,
            "{img:?} direct={direct}: ours takes {} bytes, qemu-img's {}",
            allocated(&ours),
            allocated(&theirs)
        );
    }
}

#[test]
fn dump_to_a_pipe_writes_the_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let img = half_empty_vhdx(dir.path());
    let theirs = dir.path().join("theirs.raw");
    qemu_img(&["convert", "-O", "raw", path_str(&img), path_str(&theirs)]);
    let out = vmbdev()
        .args(["dump", "--direct", path_str(&img), "-o", "-"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == std::fs::read(&theirs).unwrap());
}
