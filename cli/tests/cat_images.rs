//! `vmbdev cat` and `vmbdev ls` on VHDX images made by the real tools:
//! FAT32, FAT16, ext4 and NTFS file systems (mkfs.vfat + mcopy, mke2fs -d,
//! mkntfs + wimapply), in GPT (sgdisk) and MBR (sfdisk) tables, converted
//! by `qemu-img convert -O vhdx`. Every file read through the vmbfs guest
//! client over loopback (in-band and by RDMA) equals its source; the
//! recursive JSON listing names every path with its type and size; lookups
//! in the other letter case follow the file system's rules.

use std::path::{Path, PathBuf};
use std::process::Output;

use vmbdev_tests::cli::ls_json;
use vmbdev_tests::images::{
    ext4_image, fat_image, gpt_disk, make_source_tree, mbr_disk, ntfs_image, to_vhd, to_vhdx,
};
use vmbdev_tests::random_trees::source_listing;

const VMBDEV: &str = env!("CARGO_BIN_EXE_vmbdev");

/// `vmbdev cat IMAGE PATH --rdma|--in-band`: the bytes, or the failed output.
fn cat(image: &Path, path: &str, rdma: bool) -> Result<Vec<u8>, Output> {
    let extra: &[&str] = if rdma { &["--rdma"] } else { &["--in-band"] };
    vmbdev_tests::cli::cat(VMBDEV, image, path, extra)
}

/// Which file systems fold letter case in lookups.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    Insensitive,
    Sensitive,
}

fn check_image(src: &Path, image: &Path, case: Case) {
    let source = source_listing(src);
    let mut listed = ls_json(VMBDEV, image, &[]);
    // mke2fs adds lost+found to every ext4 volume: not part of the source.
    listed.retain(|e| !e.path.starts_with("/lost+found"));
    assert_eq!(listed, source, "{}: listing", image.display());
    let mut rdma = false;
    for e in source.iter().filter(|e| e.kind == "file") {
        let (path, kind) = (&e.path, &e.kind);
        let want = std::fs::read(src.join(&path[1..])).unwrap();
        let got = cat(image, path, rdma)
            .unwrap_or_else(|out| panic!("cat {path}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(got == want, "{}: {path} ({kind}) differs", image.display());
        rdma = !rdma;
    }
    let upper = "/DOCS/BLOCK.BIN";
    let want = std::fs::read(src.join("docs/block.bin")).unwrap();
    match (case, cat(image, upper, false)) {
        (Case::Insensitive, Ok(got)) => assert!(got == want, "{upper} differs"),
        (Case::Insensitive, Err(out)) => {
            panic!("{upper}: {}", String::from_utf8_lossy(&out.stderr))
        }
        (Case::Sensitive, Ok(_)) => panic!("{upper} found on a case-sensitive file system"),
        (Case::Sensitive, Err(out)) => {
            assert_eq!(out.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.starts_with("vmbdev: ") && stderr.contains("no such file"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn every_file_of_every_file_system_in_gpt_and_mbr_vhdx_images() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 21, 4, true);
    let cases: [(&str, PathBuf, &str, &str, Case); 4] = [
        (
            "fat32",
            fat_image(dir.path(), &src, 32, 40),
            "0700",
            "c",
            Case::Insensitive,
        ),
        (
            "fat16",
            fat_image(dir.path(), &src, 16, 16),
            "0700",
            "e",
            Case::Insensitive,
        ),
        (
            "ext4",
            ext4_image(dir.path(), &src, 16),
            "8300",
            "83",
            Case::Sensitive,
        ),
        (
            "ntfs",
            ntfs_image(dir.path(), &src, 16),
            "0700",
            "7",
            Case::Insensitive,
        ),
    ];
    for (name, fs_image, gpt_type, mbr_type, case) in cases {
        let gpt = dir.path().join(format!("{name}-gpt.raw"));
        gpt_disk(&fs_image, &gpt, gpt_type);
        check_image(&src, &to_vhdx(&gpt), case);
        let mbr = dir.path().join(format!("{name}-mbr.raw"));
        mbr_disk(&fs_image, &mbr, mbr_type);
        check_image(&src, &to_vhdx(&mbr), case);
    }
}

/// The same trees served from VHDs: fixed and dynamic, with and without
/// `force_size` (without it the disk grows to a whole CHS geometry, so the
/// GPT backup header is no longer in the last sector).
#[test]
fn every_file_in_gpt_and_mbr_vhd_images() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 22, 4, true);
    let fat = fat_image(dir.path(), &src, 16, 16);
    let gpt = dir.path().join("fat16-gpt.raw");
    gpt_disk(&fat, &gpt, "0700");
    let mbr = dir.path().join("fat16-mbr.raw");
    mbr_disk(&fat, &mbr, "e");
    for options in [
        "subformat=dynamic,force_size=on",
        "subformat=fixed,force_size=off",
    ] {
        check_image(&src, &to_vhd(&gpt, options), Case::Insensitive);
        check_image(&src, &to_vhd(&mbr, options), Case::Insensitive);
    }
    let ext4 = ext4_image(dir.path(), &src, 16);
    let ext4_gpt = dir.path().join("ext4-gpt.raw");
    gpt_disk(&ext4, &ext4_gpt, "8300");
    check_image(
        &src,
        &to_vhd(&ext4_gpt, "subformat=dynamic"),
        Case::Sensitive,
    );
}
