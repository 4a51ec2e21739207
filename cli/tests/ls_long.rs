//! `vmbdev ls -l`, `--codepage`, `cat` of a link and `info` free space, as
//! a user would run them on images made by mke2fs, mkfs.vfat and mtools.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{stderr, vmbdev_in};
use vmbdev_tests::images::*;

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn ext4_source(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/notes.txt"), b"twelve bytes").unwrap();
    std::os::unix::fs::symlink("dir/notes.txt", src.join("link")).unwrap();
    run(Command::new("mkfifo").arg(src.join("pipe")));
    for path in ["dir/notes.txt", "pipe", "dir"] {
        run(Command::new("touch")
            .args(["-h", "-d", "2022-07-08 09:10:11 UTC"])
            .arg(src.join(path)));
    }
    run(Command::new("chmod")
        .arg("640")
        .arg(src.join("dir/notes.txt")));
    run(Command::new("chmod").arg("750").arg(src.join("dir")));
    run(Command::new("chmod").arg("600").arg(src.join("pipe")));
    src
}

#[test]
fn ls_long_shows_type_mode_size_time_and_link_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let src = ext4_source(tmp.path());
    let img = ext4_image(tmp.path(), &src, 16);
    // The link's own time is whatever mke2fs gave it; set it to a known one.
    tool(
        "debugfs",
        &["-w", "-R", "sif /link mtime 20220708091011", path_str(&img)],
    );
    let text = stdout(&vmbdev_in(tmp.path(), &["ls", "-l", "ext4.img", "/", "-r"]));
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("lost+found")).collect();
    assert_eq!(
        lines,
        [
            "drwxr-x---            0 2022-07-08T09:10:11Z /dir",
            "-rw-r-----           12 2022-07-08T09:10:11Z /dir/notes.txt",
            "lrwxrwxrwx           13 2022-07-08T09:10:11Z /link -> dir/notes.txt",
            "prw-------            0 2022-07-08T09:10:11Z /pipe",
        ],
        "{text}"
    );
    // Without -l the listing keeps its format, with the new kinds named.
    let short = stdout(&vmbdev_in(tmp.path(), &["ls", "ext4.img", "/link"]));
    assert_eq!(short, "link           13 /link\n");
    let json = stdout(&vmbdev_in(
        tmp.path(),
        &["ls", "--json", "ext4.img", "/link"],
    ));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value[0]["type"], "link");
    assert_eq!(value[0]["target"], "dir/notes.txt");
    assert_eq!(value[0]["modified"], "2022-07-08T09:10:11Z");
}

#[test]
fn cat_of_a_link_or_fifo_is_refused_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let src = ext4_source(tmp.path());
    ext4_image(tmp.path(), &src, 16);
    for (path, words) in [("/link", "symbolic link"), ("/pipe", "named pipe")] {
        let out = vmbdev_in(tmp.path(), &["cat", "ext4.img", path]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        assert!(out.stdout.is_empty(), "{path}: nothing written");
        let err = stderr(&out);
        assert!(err.contains(words) && err.contains(path), "{path}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let out = vmbdev_in(tmp.path(), &["cat", "ext4.img", "/dir/notes.txt"]);
    assert_eq!(out.stdout, b"twelve bytes");
}

#[test]
fn codepage_option_picks_how_fat_short_names_read() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("Õ.TXT"), b"o tilde").unwrap();
    fat_image_in_code_page(tmp.path(), "fat.img", &src, 12, 1440, 850);
    let cp850 = stdout(&vmbdev_in(
        tmp.path(),
        &["ls", "--codepage", "850", "fat.img"],
    ));
    assert_eq!(cp850, "file            7 /Õ.TXT\n");
    // The default is 437, where the same byte (0xE5) is σ.
    let cp437 = stdout(&vmbdev_in(tmp.path(), &["ls", "fat.img"]));
    assert_eq!(cp437, "file            7 /σ.TXT\n");
    let out = vmbdev_in(
        tmp.path(),
        &["cat", "--codepage", "850", "fat.img", "/õ.txt"],
    );
    assert_eq!(out.stdout, b"o tilde", "{}", stderr(&out));
    let bad = vmbdev_in(tmp.path(), &["ls", "--codepage", "1252", "fat.img"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(stderr(&bad).contains("1252"));
}

#[test]
fn info_names_the_fat_type_and_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data.bin"), vec![1u8; 100_000]).unwrap();
    let img = fat_image_in_code_page(tmp.path(), "floppy.img", &src, 12, 1440, 437);
    let conf = mtools_config(tmp.path(), 437);
    let mdir = run_output(mtools("mdir", &conf).arg("-i").arg(&img).arg("::/"));
    let free: String = mdir
        .lines()
        .find(|l| l.contains("bytes free"))
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let text = stdout(&vmbdev_in(tmp.path(), &["info", "floppy.img"]));
    assert!(text.contains("FAT12"), "{text}");
    assert!(text.contains("512-byte clusters"), "{text}");
    let json = stdout(&vmbdev_in(tmp.path(), &["info", "--json", "floppy.img"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let fs_report = &value["partitions"][0]["file_system"];
    assert_eq!(fs_report["fat_type"], "FAT12", "{json}");
    assert_eq!(
        fs_report["free"].as_u64(),
        Some(free.parse().unwrap()),
        "{json}"
    );
}

/// The label `mlabel -s` reads with mtools set to `code_page`.
fn mlabel_label(img: &Path, conf: &Path) -> String {
    let text = run_output(
        mtools("mlabel", conf)
            .arg("-s")
            .arg("-i")
            .arg(img)
            .arg("::"),
    );
    text.trim()
        .strip_prefix("Volume label is ")
        .unwrap_or_else(|| panic!("no label in {text:?}"))
        .trim_end()
        .to_owned()
}

#[test]
fn info_codepage_reads_the_fat_label_like_mlabel() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let img = fat_image_in_code_page(tmp.path(), "label.img", &src, 12, 1440, 850);
    let conf = mtools_config(tmp.path(), 850);
    // Õ is byte 0xE5 in code page 850 (σ in 437); É is 0x90 in both.
    run(mtools("mlabel", &conf).arg("-i").arg(&img).arg("::ÉTÉ Õ"));
    for (code_page, args) in [
        (850, &["--codepage", "850"][..]),
        (437, &["--codepage", "437"][..]),
        (437, &[][..]),
    ] {
        let want = mlabel_label(&img, &mtools_config(tmp.path(), code_page));
        let mut argv = vec!["info", "--json", "label.img"];
        argv.extend_from_slice(args);
        let json = stdout(&vmbdev_in(tmp.path(), &argv));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let label = &value["partitions"][0]["file_system"]["label"];
        assert_eq!(label.as_str(), Some(want.as_str()), "{args:?}: {json}");
        argv.remove(1);
        let text = stdout(&vmbdev_in(tmp.path(), &argv));
        assert!(
            text.contains(&format!("label \"{want}\"")),
            "{args:?}: {text}"
        );
    }
    assert_eq!(
        mlabel_label(&img, &mtools_config(tmp.path(), 437)),
        "ÉTÉ σ",
        "the two pages differ for this label"
    );
    let bad = vmbdev_in(tmp.path(), &["info", "--codepage", "1252", "label.img"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
}
