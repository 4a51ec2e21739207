//! `vmbdev extract` as a user runs it: FAT32, ext4 and NTFS file systems
//! made by the real tools from a random source tree, in a GPT disk
//! (sgdisk) converted to VHDX by `qemu-img`, extract to a tree equal to the
//! source byte for byte; single paths, wildcards and several paths pick
//! what they name; names patched into an image to climb out of DIR are
//! skipped and reported; files and links already in DIR are neither
//! overwritten nor followed; `--partition` picks one partition for
//! `dump`, and a missing one is named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmbdev_tests::images::{
    PART_START, ext4_image, fat_image, gpt_disk, make_source_tree, ntfs_image, run, run_output,
};

fn vmbdev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmbdev"))
        .args(args)
        .output()
        .expect("vmbdev runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a tree holds: relative path → None for a directory, the bytes for
/// a file. Symbolic links fail the test (extraction makes none).
fn contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let child = rel.join(entry.file_name());
            let kind = entry.file_type().unwrap();
            assert!(!kind.is_symlink(), "{}: a symbolic link", child.display());
            if kind.is_dir() {
                out.insert(child.clone(), None);
                stack.push(child);
            } else {
                out.insert(child, Some(std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out
}

/// `diff -r`: the same names, kinds, sizes and bytes. What the file system
/// adds on its own at the root (lost+found, System Volume Information) is
/// left out of `extracted`.
fn assert_same_tree(extracted: &Path, source: &Path) {
    let mut got = contents(extracted);
    got.retain(|p, _| !p.starts_with("lost+found") && !p.starts_with("System Volume Information"));
    let want = contents(source);
    let got_names: Vec<_> = got.keys().collect();
    let want_names: Vec<_> = want.keys().collect();
    assert_eq!(got_names, want_names, "names");
    for (path, data) in &want {
        let ours = &got[path];
        assert_eq!(
            ours.as_ref().map(Vec::len),
            data.as_ref().map(Vec::len),
            "{}: kind or size",
            path.display()
        );
        assert!(ours == data, "{}: bytes differ", path.display());
    }
}

/// `fs_image` in partition 1 of a GPT disk, converted to `NAME.vhdx`.
fn gpt_vhdx(dir: &Path, fs_image: &Path, type_code: &str, name: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    gpt_disk(fs_image, &raw, type_code);
    let vhdx = dir.join(format!("{name}.vhdx"));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vhdx"])
        .arg(&raw)
        .arg(&vhdx));
    std::fs::remove_file(raw).unwrap();
    vhdx
}

/// Extracts everything of `image` into a new directory and checks it
/// against `src`.
fn extract_all_matches(dir: &Path, image: &Path, src: &Path) {
    let out_dir = dir.join("out");
    let out = vmbdev(&["extract", s(image), "-C", s(&out_dir)]);
    assert!(out.status.success(), "extract: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("; skipped 0"), "{err}");
    assert_same_tree(&out_dir, src);
}

#[test]
fn fat32_vhdx_extracts_to_the_source_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 31, 25, true);
    let fs = fat_image(dir.path(), &src, 32, 40);
    let vhdx = gpt_vhdx(dir.path(), &fs, "0700", "fat32");
    extract_all_matches(dir.path(), &vhdx, &src);
}

#[test]
fn ext4_vhdx_extracts_to_the_source_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 32, 25, true);
    let fs = ext4_image(dir.path(), &src, 24);
    let vhdx = gpt_vhdx(dir.path(), &fs, "8300", "ext4");
    extract_all_matches(dir.path(), &vhdx, &src);
}

#[test]
fn ntfs_vhdx_extracts_to_the_source_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 33, 25, true);
    let fs = ntfs_image(dir.path(), &src, 24);
    let vhdx = gpt_vhdx(dir.path(), &fs, "0700", "ntfs");
    extract_all_matches(dir.path(), &vhdx, &src);
}

#[test]
fn host_directory_extracts_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 34, 10, false);
    extract_all_matches(dir.path(), &src, &src);
    // Into the source itself is refused before anything is written.
    let inside = src.join("again");
    let out = vmbdev(&["extract", s(&src), "-C", s(&inside)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("inside the source directory"),
        "{}",
        stderr(&out)
    );
    assert!(!inside.exists());
}

/// An ext4 VHDX of a fresh source tree: (tempdir, source, image).
fn ext4_fixture(seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, seed, 5, false);
    let fs = ext4_image(dir.path(), &src, 16);
    let vhdx = gpt_vhdx(dir.path(), &fs, "8300", "disk");
    (dir, src, vhdx)
}

/// Relative paths of the files and directories under `root`.
fn names(root: &Path) -> Vec<String> {
    contents(root)
        .keys()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn one_path_a_glob_and_several_paths_pick_what_they_name() {
    let (dir, src, image) = ext4_fixture(40);
    let one = dir.path().join("one");
    let out = vmbdev(&["extract", s(&image), "/docs/block.bin", "-C", s(&one)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(names(&one), ["docs", "docs/block.bin"]);
    assert_eq!(
        std::fs::read(one.join("docs/block.bin")).unwrap(),
        std::fs::read(src.join("docs/block.bin")).unwrap()
    );
    assert!(stderr(&out).contains("extracted 1 file, 0 directories, 4096 bytes; skipped 0"));

    let glob = dir.path().join("glob");
    let out = vmbdev(&["extract", s(&image), "/docs/block*.bin", "-C", s(&glob)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        names(&glob),
        [
            "docs",
            "docs/block-minus-one.bin",
            "docs/block-plus-one.bin",
            "docs/block.bin"
        ]
    );
    // Wildcards are case-sensitive and work on directory components too.
    let none = dir.path().join("none");
    let out = vmbdev(&["extract", s(&image), "/DOCS/*.bin", "-C", s(&none)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/DOCS/*.bin: skipped: no such file or directory"));
    let deep = dir.path().join("deep");
    let out = vmbdev(&["extract", s(&image), "/d?cs/[A-Z]*/deeper", "-C", s(&deep)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = "docs/A directory with spaces";
    let mut want = vec!["docs".to_owned(), root.to_owned(), format!("{root}/deeper")];
    want.extend(
        names(&src.join(root).join("deeper"))
            .into_iter()
            .map(|n| format!("{root}/deeper/{n}")),
    );
    assert_eq!(names(&deep), want);

    let several = dir.path().join("several");
    let out = vmbdev(&[
        "extract",
        s(&image),
        "/README",
        "empty.txt",
        "/docs/A directory with spaces",
        // Inside the directory above: extracted once, with it.
        "/docs/A directory with spaces/deeper",
        "-C",
        s(&several),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut want = vec![
        "README".to_owned(),
        "docs".to_owned(),
        "empty.txt".to_owned(),
    ];
    want.extend(
        names(&src.join("docs/A directory with spaces"))
            .into_iter()
            .map(|n| format!("{root}/{n}")),
    );
    want.push(root.to_owned());
    want.sort();
    assert_eq!(names(&several), want);
    assert_same_tree(
        &several.join("docs/A directory with spaces"),
        &src.join("docs/A directory with spaces"),
    );
}

/// Replaces every occurrence of `from` in the file at `path` by `to` (same
/// length); returns how many there were.
fn patch_bytes(path: &Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
        bytes[at + i..at + i + from.len()].copy_from_slice(to);
        at += i + from.len();
        found += 1;
    }
    std::fs::write(path, bytes).unwrap();
    found
}

/// UTF-16LE bytes of `text`, as a FAT long name stores it.
fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[test]
fn hostile_names_are_skipped_and_nothing_lands_outside_dir() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("hsl1x+dir")).unwrap();
    std::fs::write(src.join("hsl1x+dir/inner"), b"inner").unwrap();
    // `+` has no short-name form, so each of these gets a long name.
    for name in ["q+", "abs01+x", "ctl01+x", "bks01+x", "dup01+a", "dup02+a"] {
        std::fs::write(src.join(name), name.as_bytes()).unwrap();
    }
    std::fs::write(src.join("fine"), b"kept").unwrap();
    let fs = fat_image(dir.path(), &src, 16, 16);
    // Long names rewritten in the directory entries (the first five
    // characters of an entry lie together; the short-name checksum stays
    // right).
    let patches = [
        ("q+\0", "..\0"),
        ("hsl1x", "../.."),
        ("abs01", "/tmp/"),
        ("ctl01", "\u{1b}/../"),
        ("bks01", "..\\.."),
        ("dup02", "dup01"),
    ];
    for (from, to) in patches {
        assert_eq!(patch_bytes(&fs, &utf16(from), &utf16(to)), 1, "{from}");
    }
    let image = gpt_vhdx(dir.path(), &fs, "0700", "hostile");
    // DIR two levels down, so `../..` would land in the temp dir.
    let out_dir = dir.path().join("a/b");
    let before = names(dir.path());
    let out = vmbdev(&["extract", s(&image), "-C", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for skipped in [
        "/..: skipped: name refused: the name is \"..\"",
        "/../..+dir: skipped: name refused: the name contains \"/\"",
        "//tmp/+x: skipped: name refused: the name contains \"/\"",
        // The escape character reaches the terminal escaped.
        "/\\033/../+x: skipped: name refused: the name contains \"/\"",
        "/dup01+a: skipped: the directory lists this name more than once",
        "; skipped 5",
    ] {
        assert!(err.contains(skipped), "{skipped} in {err}");
    }
    assert!(!err.contains('\u{1b}'), "{err}");
    assert!(!Path::new("/tmp/+x").exists());
    // Nothing appeared anywhere but below DIR.
    let mut after = names(dir.path());
    after.retain(|n| !n.starts_with("a/b/"));
    let mut want = before;
    want.extend(["a".to_owned(), "a/b".to_owned()]);
    want.sort();
    assert_eq!(after, want);
    // A backslash is an ordinary character in a Linux name: that file is
    // extracted under its own name, inside DIR.
    assert_eq!(names(&out_dir), ["..\\..+x", "dup01+a", "fine"]);
    assert_eq!(std::fs::read(out_dir.join("fine")).unwrap(), b"kept");
    assert_eq!(std::fs::read(out_dir.join("..\\..+x")).unwrap(), b"bks01+x");
}

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let (dir, src, image) = ext4_fixture(41);
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(out_dir.join("docs")).unwrap();
    std::fs::write(out_dir.join("README"), b"mine").unwrap();
    let out = vmbdev(&["extract", s(&image), "-C", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("/README: skipped: ")
            && err.contains("exists; not overwritten (use --overwrite"),
        "{err}"
    );
    assert!(err.contains("; skipped 1"), "{err}");
    assert_eq!(std::fs::read(out_dir.join("README")).unwrap(), b"mine");
    // Everything else is there, the existing directory merged into.
    assert_eq!(
        std::fs::read(out_dir.join("docs/block.bin")).unwrap(),
        std::fs::read(src.join("docs/block.bin")).unwrap()
    );
    // No temporary is left behind.
    assert!(!names(&out_dir).iter().any(|n| n.contains("vmbdev-tmp")));

    let out = vmbdev(&["extract", s(&image), "--overwrite", "-C", s(&out_dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&out_dir, &src);
}

#[test]
fn the_image_read_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // The tree holds a file named like the image, which sits in DIR.
    std::fs::write(src.join("disk.vhdx"), b"not the image").unwrap();
    std::fs::write(src.join("other"), b"other").unwrap();
    let fs = ext4_image(dir.path(), &src, 8);
    let image = gpt_vhdx(dir.path(), &fs, "8300", "disk");
    let before = std::fs::read(&image).unwrap();
    let out = vmbdev(&["extract", s(&image), "--overwrite", "-C", s(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("/disk.vhdx: skipped: ") && err.contains("is the image being read"),
        "{err}"
    );
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image changed"
    );
    assert_eq!(std::fs::read(dir.path().join("other")).unwrap(), b"other");
}

#[test]
fn symbolic_links_in_dir_are_not_followed() {
    let (dir, src, image) = ext4_fixture(42);
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("target"), b"precious").unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::os::unix::fs::symlink(&outside, out_dir.join("docs")).unwrap();
    std::os::unix::fs::symlink(outside.join("target"), out_dir.join("README")).unwrap();
    // A link to where a file would go, dangling.
    std::os::unix::fs::symlink(outside.join("new"), out_dir.join("one.bin")).unwrap();

    for overwrite in [false, true] {
        let mut args = vec!["extract", s(&image), "-C", s(&out_dir)];
        if overwrite {
            args.push("--overwrite");
        }
        let out = vmbdev(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("/docs: skipped: ") && err.contains("is a symbolic link; not followed"),
            "{err}"
        );
        assert_eq!(names(&outside), ["target"], "overwrite: {overwrite}");
        assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"precious");
        if !overwrite {
            assert!(err.contains("; skipped 3"), "{err}");
        } else {
            assert!(err.contains("; skipped 1"), "{err}");
        }
    }
    // With --overwrite the links to files were replaced by the files.
    for name in ["README", "one.bin"] {
        let meta = std::fs::symlink_metadata(out_dir.join(name)).unwrap();
        assert!(meta.is_file(), "{name}");
        assert_eq!(
            std::fs::read(out_dir.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap()
        );
    }
}

#[test]
fn dump_partition_writes_that_partitions_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source_tree(&src, 43, 3, false);
    let fs = ext4_image(dir.path(), &src, 8);
    let raw = dir.path().join("disk.raw");
    let sectors = gpt_disk(&fs, &raw, "8300");
    // Where sgdisk says partition 1 lies.
    let info = run_output(Command::new("sgdisk").arg("-i").arg("1").arg(&raw));
    let sector_of = |label: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} in {info}"));
        line[label.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (first, last) = (sector_of("First sector:"), sector_of("Last sector:"));
    assert_eq!((first, last), (PART_START, PART_START + sectors - 1));
    let disk = std::fs::read(&raw).unwrap();
    let want = &disk[(first * 512) as usize..((last + 1) * 512) as usize];
    let vhdx = dir.path().join("disk.vhdx");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vhdx"])
        .arg(&raw)
        .arg(&vhdx));
    for image in [&raw, &vhdx] {
        for direct in [true, false] {
            let part = dir.path().join("part.bin");
            let mut args = vec!["dump", s(image), "--partition", "1", "-o", s(&part)];
            if direct {
                args.push("--direct");
            }
            let out = vmbdev(&args);
            assert!(out.status.success(), "{}", stderr(&out));
            let got = std::fs::read(&part).unwrap();
            assert_eq!(got.len(), want.len(), "{}", image.display());
            assert!(
                got == want,
                "{} (direct: {direct}): bytes differ",
                image.display()
            );
            std::fs::remove_file(part).unwrap();
        }
    }
}

#[test]
fn a_missing_partition_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let fs = ext4_image(dir.path(), &src, 8);
    let image = gpt_vhdx(dir.path(), &fs, "8300", "disk");
    let want = format!(
        "vmbdev: {}: no partition 3 (the disk has 1 partition)\n",
        image.display()
    );
    let part = dir.path().join("part.bin");
    let out_dir = dir.path().join("out");
    let commands: [Vec<&str>; 4] = [
        vec!["dump", s(&image), "--partition", "3", "-o", s(&part)],
        vec!["ls", s(&image), "--partition", "3"],
        vec!["cat", s(&image), "/f", "--partition", "3"],
        vec!["extract", s(&image), "--partition", "3", "-C", s(&out_dir)],
    ];
    for args in commands {
        let out = vmbdev(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out), want, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(!part.exists());
    assert!(!out_dir.exists());
    // The partition that exists works for all of them.
    let out = vmbdev(&["cat", s(&image), "/f", "--partition", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"x");
}

#[test]
fn partition_on_a_host_directory_is_a_usage_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let out_dir = dir.path().join("out");
    let want = format!(
        "error: {}: --partition only applies to disk images\n",
        src.display()
    );
    let commands: [Vec<&str>; 3] = [
        vec!["ls", s(&src), "--partition", "1"],
        vec!["cat", s(&src), "/f", "--partition", "1"],
        vec!["extract", s(&src), "--partition", "1", "-C", s(&out_dir)],
    ];
    for args in commands {
        let out = vmbdev(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out), want, "{args:?}");
    }
    assert!(!out_dir.exists());
}
