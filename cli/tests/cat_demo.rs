//! `vmbdev cat` and `vmbdev demo` as a user runs them.

use std::path::Path;
use std::process::{Command, Output};
use vmbdev_tests::cli::run_vmbdev;
use vmbdev_tests::images::{mbr_disk, run};

fn vmbdev(args: &[&std::ffi::OsStr]) -> Output {
    run_vmbdev(env!("CARGO_BIN_EXE_vmbdev"), args)
}

fn cat(dir: &Path, path: &str, extra: &[&str]) -> Output {
    let mut args = vec!["cat".as_ref(), dir.as_os_str(), std::ffi::OsStr::new(path)];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    vmbdev(&args)
}

/// Files of assorted sizes, contents differing per file and position.
fn make_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = [
        ("a.txt", 0usize),
        ("one", 1),
        ("EFI/BOOT/BOOTX64.EFI", 12277),
        ("EFI/BOOT/exact", 12276),
        ("dir with space/ü.bin", 70_001),
        ("big/blob", 1 << 20),
        // More than one read buffer of `cat`, so it streams.
        ("big/over two chunks", (9 << 20) + 4097),
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, (path, len))| {
            let data: Vec<u8> = (0..*len)
                .map(|j| (j as u32).wrapping_mul(2_654_435_761).rotate_left(i as u32) as u8)
                .collect();
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, &data).unwrap();
            (path.to_string(), data)
        })
        .collect()
}

#[test]
fn cat_every_file_byte_exact_in_band_and_rdma() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    let files = make_tree(&dir);
    for (path, data) in &files {
        for extra in [&["--in-band"][..], &[][..], &["--rdma"][..]] {
            let out = cat(&dir, path, extra);
            assert!(
                out.status.success(),
                "{path} {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.stdout == *data, "{path} {extra:?} differs");
        }
    }
    // -o writes the file instead of standard output.
    let target = tmp.path().join("out.bin");
    let out = cat(
        &dir,
        "big/blob",
        &["--rdma", "-o", target.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(std::fs::read(&target).unwrap() == files[5].1);
    for mode in ["--in-band", "--rdma"] {
        let out = cat(
            &dir,
            "big/over two chunks",
            &[mode, "-o", target.to_str().unwrap()],
        );
        assert!(out.status.success(), "{mode}");
        assert!(std::fs::read(&target).unwrap() == files[6].1, "{mode}");
    }
    assert!(
        !cat(&dir, "a.txt", &["--rdma", "--in-band"])
            .status
            .success(),
        "the two modes exclude each other"
    );
}

#[test]
fn cat_never_leaves_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    make_tree(&dir);
    let secret = b"top secret bytes";
    std::fs::write(tmp.path().join("secret"), secret).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("link")).unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("EFI/rel")).unwrap();
    for path in [
        "../secret",
        "..\\secret",
        "/../secret",
        "\\..\\..\\secret",
        "EFI/../../secret",
        "link",
        "EFI/rel",
    ] {
        for extra in [&["--in-band"][..], &[][..], &["--rdma"][..]] {
            let out = cat(&dir, path, extra);
            assert_eq!(out.status.code(), Some(1), "{path}: not a clean failure");
            assert!(
                !out.stdout.windows(secret.len()).any(|w| w == secret),
                "{path} leaked the secret"
            );
            assert!(!out.stderr.is_empty(), "{path}: no message");
        }
    }
}

#[test]
fn cat_errors_and_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    make_tree(&dir);
    let out = cat(&dir, "missing/file", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing/file"));
    let out = cat(&tmp.path().join("nope"), "x", &[]);
    assert_eq!(out.status.code(), Some(1));
    let out = cat(&dir, "EFI", &[]);
    assert_eq!(out.status.code(), Some(1), "a directory is not catted");
    let out = vmbdev(&["cat".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
    let out = vmbdev(&[
        "cat".as_ref(),
        "a".as_ref(),
        "b".as_ref(),
        "--bogus".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cat_from_an_ext4_disk_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    let files = make_tree(&dir);
    let img = tmp.path().join("fs.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&dir)
        .arg(&img)
        .arg("32M"));
    // Partition 1 of an MBR disk starting at sector 2048.
    let disk = tmp.path().join("disk.raw");
    mbr_disk(&img, &disk, "83");
    for (path, data) in &files {
        let out = cat(&disk, path, &["--rdma", "--partition", "1"]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == *data, "{path} differs");
    }
    let out = cat(&disk, "one", &["--partition", "3"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn demo_exits_0_and_reports() {
    let out = vmbdev(&["demo".as_ref(), "--bench-mib".as_ref(), "8".as_ref()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("all bytes match"), "{text}");
    assert!(text.contains("RDMA / in-band"), "{text}");
}

/// The line index of the first line containing every one of `parts`.
fn line_of(lines: &[&str], parts: &[&str]) -> usize {
    lines
        .iter()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{}", lines.join("\n")))
}

#[test]
fn demo_shows_the_control_plane_handshake_before_its_reads() {
    let out = vmbdev(&["demo".as_ref(), "--bench-mib".as_ref(), "1".as_ref()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // Linux's first ask, on connection 4, and the host's yes.
    let contact = line_of(&lines, &["[conn 4] INITIATE_CONTACT version 5.3"]);
    let version = line_of(&lines, &["VERSION_RESPONSE supported 1"]);
    let request = line_of(&lines, &["[conn 1] REQUESTOFFERS"]);
    let vmbfs_offer = line_of(&lines, &["OFFERCHANNEL relid 1 "]);
    let disk_offer = line_of(&lines, &["OFFERCHANNEL relid 2 "]);
    let delivered = line_of(&lines, &["ALLOFFERS_DELIVERED"]);
    let agreed = line_of(&lines, &["version 5.3 agreed, 2 offers"]);
    let named_fs = line_of(&lines, &["relid 1: vmbfs"]);
    let named_disk = line_of(&lines, &["relid 2: storvsp"]);
    // vmbfs: Linux's first GPADL handle, created and opened with status 0.
    let fs_created = line_of(&lines, &["GPADL_CREATED relid 1 gpadl 0xe1e10 status 0x0"]);
    let fs_open = line_of(&lines, &["OPENCHANNEL relid 1 gpadl 0xe1e10"]);
    let fs_opened = line_of(&lines, &["OPENCHANNEL_RESULT relid 1 status 0x0"]);
    let fs_read = line_of(&lines, &["read all files in-band", "all bytes match"]);
    let rdma_read = line_of(&lines, &["read all files by RDMA", "all bytes match"]);
    // storvsp: its primary, then the sub-channel offered later.
    let disk_opened = line_of(&lines, &["OPENCHANNEL_RESULT relid 2 status 0x0"]);
    let sub_offer = line_of(&lines, &["OFFERCHANNEL relid 3 ", "sub_channel 1"]);
    let sub_opened = line_of(&lines, &["OPENCHANNEL_RESULT relid 3 status 0x0"]);
    let disk_read = line_of(&lines, &["storvsp: read the whole", "all sectors match"]);
    let unload = line_of(&lines, &["UNLOAD_RESPONSE"]);
    let order = [
        contact,
        version,
        request,
        vmbfs_offer,
        disk_offer,
        delivered,
        agreed,
        named_fs,
        named_disk,
        fs_created,
        fs_open,
        fs_opened,
        fs_read,
        rdma_read,
        disk_opened,
        sub_offer,
        sub_opened,
        disk_read,
        unload,
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order {order:?}:\n{text}"
    );
}
