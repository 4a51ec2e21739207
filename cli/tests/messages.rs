//! One error style everywhere: `vmbdev: <file>: <what> [at <where>]`, the
//! file named once, no Rust `Debug` forms, SCSI sense data in words, the
//! same not-found message from `ls` and `cat`, and counts with the right
//! plural (`pack` counts the root as a directory).

mod common;

use std::io::Read;
use std::process::Stdio;

use common::{ext4_vhdx, names, noise, set_file_len, stderr, vmbdev, vmbdev_in};

#[test]
fn a_missing_image_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["info", "x.vhdx"][..],
        &["ls", "x.vhdx"],
        &["cat", "x.vhdx", "/a.txt"],
        &["dump", "x.vhdx", "-o", "out.raw"],
        &["dump", "--direct", "x.vhdx", "-o", "out.raw"],
    ] {
        let out = vmbdev_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            "vmbdev: x.vhdx: No such file or directory\n",
            "{args:?}"
        );
    }
    assert!(names(dir.path()).is_empty());
}

#[test]
fn ls_and_cat_say_the_same_when_a_path_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    ext4_vhdx(dir.path(), &[("docs/a.txt", b"a")]);
    for path in ["/docs/missing.txt", "/nowhere/a.txt"] {
        let ls = vmbdev_in(dir.path(), &["ls", "IMG.vhdx", path]);
        let cat = vmbdev_in(dir.path(), &["cat", "IMG.vhdx", path]);
        let want = format!("vmbdev: IMG.vhdx: {path}: no such file or directory\n");
        assert_eq!((ls.status.code(), stderr(&ls)), (Some(1), want.clone()));
        assert_eq!((cat.status.code(), stderr(&cat)), (Some(1), want));
    }
}

#[test]
fn a_missing_parent_is_listed_plainly() {
    use vmbdev_block::RawFile;
    use vmbdev_vhdx::{WriteOptions, write_differencing, write_vhdx};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    std::fs::write(&raw, vec![0u8; 2 << 20]).unwrap();
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let base = dir.path().join("base.vhdx");
    write_vhdx(&RawFile::open(&raw).unwrap(), &base, &opts).unwrap();
    let top = dir.path().join("top.vhdx");
    write_differencing(&base, &top, &[(0, vec![1u8; 512])], &opts).unwrap();
    std::fs::remove_file(&base).unwrap();
    let out = vmbdev_in(dir.path(), &["info", "top.vhdx"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("vmbdev: top.vhdx: parent image not found at "),
        "{err}"
    );
    assert!(
        err.contains("base.vhdx") && !err.contains('[') && !err.contains('"'),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn a_file_that_is_not_vhdx_is_described_in_hex() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.raw"), vec![0xab_u8; 2 << 20]).unwrap();
    let out = vmbdev_in(dir.path(), &["info", "--format", "vhdx", "x.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "vmbdev: x.raw: not a VHDX: the file identifier at offset 0 is ab ab ab ab ab ab ab ab, not \"vhdxfile\"\n"
    );
}

#[test]
fn a_failed_scsi_read_is_told_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let mut child = vmbdev()
        .current_dir(dir.path())
        .args(["dump", "big.raw", "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    // The disk shrinks under the guest: the next reads fail on the device.
    set_file_len(&raw, 1 << 20);
    std::io::copy(&mut stdout, &mut std::io::sink()).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{err}");
    assert!(
        err.starts_with("vmbdev: big.raw: medium error: unrecovered read error (SCSI READ("),
        "{err}"
    );
    assert!(err.contains(") at sectors "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for debug in ["LunAddress", "Some(", "srb 0x"] {
        assert!(!err.contains(debug), "{err}");
    }
}

#[test]
fn pack_counts_with_the_right_plural() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::write(one.join("a.txt"), b"x").unwrap();
    let out = vmbdev_in(dir.path(), &["pack", "one", "one.vhdx"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("one.vhdx: 1 file, 1 directory, 1 byte; disk "),
        "{text}"
    );
    let two = dir.path().join("two");
    std::fs::create_dir_all(two.join("s1")).unwrap();
    std::fs::create_dir_all(two.join("s2")).unwrap();
    std::fs::write(two.join("s1/a"), b"xy").unwrap();
    std::fs::write(two.join("s2/b"), b"z").unwrap();
    let out = vmbdev_in(dir.path(), &["pack", "two", "two.vhdx"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("two.vhdx: 2 files, 3 directories, 3 bytes; disk "),
        "{text}"
    );
    std::os::unix::fs::symlink("s1/a", two.join("link")).unwrap();
    let out = vmbdev_in(dir.path(), &["pack", "two", "three.vhdx"]);
    assert_eq!(
        stderr(&out),
        "vmbdev: warning: left out 1 entry (symbolic links, special files or non-UTF-8 names): two/link\n"
    );
}

#[test]
fn an_image_without_a_file_system_counts_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zeros.img"), vec![0u8; 1 << 20]).unwrap();
    for args in [&["ls", "zeros.img"][..], &["cat", "zeros.img", "/a.txt"]] {
        let out = vmbdev_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            "vmbdev: zeros.img: no partition holds a FAT, NTFS or ext4 file system (1 partition examined)\n",
            "{args:?}"
        );
    }
}

#[test]
fn an_unknown_bench_suite_is_refused_with_the_known_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = vmbdev_in(dir.path(), &["bench", "--quick", "ring", "rnig"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("vmbdev: no benchmark suite named rnig; the suites are ring, "),
        "{err}"
    );
    // Nothing was measured before the refusal.
    assert!(out.stdout.is_empty());
}

#[test]
fn bench_lists_its_suites() {
    let out = vmbdev().args(["bench", "--list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for suite in ["ring", "vhdx", "vmbfs", "storvsp"] {
        assert!(names.contains(&suite), "{suite} missing from {listing}");
    }
    assert!(
        listing.lines().all(|l| l.contains("baseline: ")),
        "{listing}"
    );
}

#[test]
fn demo_refuses_a_throughput_file_size_it_cannot_hold() {
    for size in ["0", "4097", "-1", "many"] {
        let out = vmbdev()
            .args(["demo", &format!("--bench-mib={size}")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--bench-mib {size}");
        assert!(
            stderr(&out).contains("--bench-mib"),
            "--bench-mib {size}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn an_image_cut_short_is_refused_naming_the_block_and_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let vhdx = ext4_vhdx(dir.path(), &[("big.bin", &data)]);
    // Cut in half, as after a failed copy or a full disk: a data block now
    // ends past the end of the file.
    let len = std::fs::metadata(&vhdx).unwrap().len();
    set_file_len(&vhdx, len / 2);
    for args in [
        &["ls", "IMG.vhdx"][..],
        &["cat", "IMG.vhdx", "/big.bin", "-o", "out.bin"],
        &["extract", "IMG.vhdx", "-C", "out"],
        &["dump", "IMG.vhdx", "-o", "out.raw"],
    ] {
        let out = vmbdev_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let text = stderr(&out);
        assert!(
            text.starts_with("vmbdev: IMG.vhdx: BAT entry ")
                && text.contains("extends beyond end of file 0x")
                && text.lines().count() == 1,
            "{args:?}: {text}"
        );
    }
    assert_eq!(names(dir.path()), ["IMG.vhdx"], "no output left behind");
}

/// A FAT32 image made by mkfs.vfat with one file of `len` noise bytes
/// copied in by mtools.
fn fat_image_with(dir: &std::path::Path, len: usize) -> std::path::PathBuf {
    let image = dir.join("fat.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let run = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success());
    run(std::process::Command::new("mkfs.vfat")
        .args(["-F", "32"])
        .arg(&image)
        .stdout(Stdio::null()));
    let data = noise(len, 0x853c_49e6_748f_ea9b);
    let file = dir.join("big.bin");
    std::fs::write(&file, &data).unwrap();
    run(std::process::Command::new("mcopy")
        .arg("-i")
        .arg(&image)
        .arg(&file)
        .arg("::/big.bin"));
    std::fs::remove_file(&file).unwrap();
    image
}

#[test]
fn cat_of_an_image_cut_short_mid_read_names_the_bytes_it_could_not_read() {
    for mode in ["--rdma", "--in-band"] {
        let dir = tempfile::tempdir().unwrap();
        let image = fat_image_with(dir.path(), 24 << 20);
        let mut child = vmbdev()
            .current_dir(dir.path())
            .args(["cat", mode, "fat.img", "/big.bin"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        stdout.read_exact(&mut first).unwrap();
        // The storage loses everything past 2 MiB while the first 4 MiB
        // chunk is still being written out: the next read fails.
        set_file_len(&image, 2 << 20);
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(1), "{mode}: {err}");
        assert_eq!(
            err,
            "vmbdev: fat.img: /big.bin: the device could not read the file's bytes \
             4194304..8388608 (vmbfs status 3, ERROR)\n",
            "{mode}"
        );
        assert_eq!(
            1 + rest.len(),
            4 << 20,
            "{mode}: the first chunk came out whole"
        );
    }
}

/// Every entry of `dir`, names only.
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn extract_of_an_image_cut_short_mid_file_names_the_bytes_and_leaves_nothing() {
    // The cut has to land while the file is being copied; an attempt that
    // finishes first must have extracted the whole file, and is retried.
    let mut cut_mid_file = 0;
    for attempt in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let image = fat_image_with(dir.path(), 32 << 20);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let child = vmbdev()
            .current_dir(dir.path())
            .args(["extract", "fat.img", "/big.bin", "-C", "out"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // As soon as the file is staged (the image is mounted and the
        // copy begins), the storage loses all past 2 MiB.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(30) {
            let staged = entries(&out)
                .iter()
                .any(|name| name.contains(".vmbdev-tmp-"));
            if staged {
                set_file_len(&image, 2 << 20);
                break;
            }
            if !entries(&out).is_empty() {
                break; // already done
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            let got = std::fs::read(out.join("big.bin")).unwrap();
            assert!(
                got == noise(32 << 20, 0x853c_49e6_748f_ea9b),
                "attempt {attempt}: a clean exit wrote the whole file"
            );
            continue;
        }
        cut_mid_file += 1;
        assert_eq!(output.status.code(), Some(1), "attempt {attempt}: {err}");
        // The file's bytes the copy asked for, and where in the image the
        // storage came up short.
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(
                "vmbdev: fat.img: /big.bin: skipped: could not read the file's bytes "
            ) && first.contains(": fat.img: short read at file offset 0x"),
            "attempt {attempt}: the error names the file, its bytes and the image offset: {err}"
        );
        assert!(
            err.ends_with("extracted 0 files, 0 directories, 0 bytes; skipped 1\n"),
            "attempt {attempt}: {err}"
        );
        assert!(
            entries(&out).is_empty(),
            "attempt {attempt}: nothing half-written stays behind: {:?}",
            entries(&out)
        );
        break;
    }
    assert!(cut_mid_file > 0, "no attempt was cut mid-file");
}
