//! `vmbdev dump` (through storvsc over loopback) compared byte for byte
//! with `qemu-img convert -O raw`, and its one-line failures.

use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_tests::cli::{qemu_img, vmbdev_command};

fn vmbdev() -> Command {
    vmbdev_command(env!("CARGO_BIN_EXE_vmbdev"))
}

fn random_file(path: &Path, len: usize, seed: u64) {
    let mut bytes = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill(&mut bytes[..]);
    // A run of zeros, as a sparse region of a real image.
    let hole = len / 3;
    bytes[hole..hole + len / 8].fill(0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn dump_through_storvsc_equals_qemu_img_convert() {
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of the 2 MiB transfer or of the batch size.
    let image = dir.path().join("disk.img");
    random_file(&image, (9 << 20) + 7 * 512, 3);
    let reference = dir.path().join("reference.raw");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        image.to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    let got = dump(&image, &dir.path().join("out.raw"));
    let want = std::fs::read(&reference).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "dump differs from qemu-img convert");
}

/// Runs `vmbdev dump IMAGE -o OUT` (through storvsc), checks it succeeded
/// quietly (no progress bar when stderr is not a terminal) and returns OUT.
fn dump(image: &Path, output: &Path) -> Vec<u8> {
    let run = vmbdev()
        .args([
            "dump",
            image.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
    std::fs::read(output).unwrap()
}

#[test]
fn dump_of_qemu_img_vhdx_images_equals_qemu_img_convert() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    // Not a multiple of any block size below; a zero hole spans blocks.
    random_file(&raw, (13 << 20) + 512, 11);
    for (name, options) in [
        ("dynamic-1m.vhdx", "block_size=1M"),
        ("dynamic-32m.vhdx", "block_size=32M"),
        ("fixed.vhdx", "subformat=fixed,block_state_zero=off"),
    ] {
        let image = dir.path().join(name);
        let (image_s, raw_s) = (image.to_str().unwrap(), raw.to_str().unwrap());
        qemu_img(&[
            "convert", "-f", "raw", "-O", "vhdx", "-o", options, raw_s, image_s,
        ]);
        let reference = dir.path().join(format!("{name}.qemu.raw"));
        qemu_img(&["convert", "-O", "raw", image_s, reference.to_str().unwrap()]);
        let got = dump(&image, &dir.path().join(format!("{name}.dump")));
        let want = std::fs::read(&reference).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(got == want, "{name}: dump differs from qemu-img convert");
    }
}

#[test]
fn bad_images_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, [0u8; 100]).unwrap();
    let missing = dir.path().join("missing.img");
    // Only the VHDX signature, then zeros: no valid header.
    let signature_only = dir.path().join("signature.vhdx");
    let mut bytes = vec![0u8; 2 << 20];
    bytes[..8].copy_from_slice(b"vhdxfile");
    std::fs::write(&signature_only, bytes).unwrap();
    for image in [&empty, &missing, &signature_only] {
        let output = dir.path().join("out.raw");
        let run = vmbdev()
            .args([
                "dump",
                image.to_str().unwrap(),
                "-o",
                output.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("vmbdev: "), "{stderr}");
    }
}
