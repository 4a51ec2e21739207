//! Human output is safe to show: names from an image are escaped (control
//! characters as C-style escapes, a backslash doubled) while `--json`
//! keeps them exact; tracing is uncoloured when stderr is not a terminal;
//! a closed pipe ends the command quietly by SIGPIPE (status 141 in a
//! shell); `-o -` is standard output for `cat` and `dump`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::{ext4_vhdx, names, stderr, vmbdev, vmbdev_in};

#[test]
fn ls_escapes_control_characters_and_json_keeps_names_exact() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = [
        "evil\nfile          9 FAKE",
        "\u{1b}[31mred",
        "del\u{7f}",
        "back\\slash",
        "tab\there",
        "csi\u{9b}2J",
    ];
    let files: Vec<(String, &[u8])> = hostile
        .iter()
        .map(|n| (format!("docs/{n}"), &b"x"[..]))
        .collect();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    ext4_vhdx(dir.path(), &files);
    let out = vmbdev_in(dir.path(), &["ls", "IMG.vhdx", "/docs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        concat!(
            "file            1 /docs/\\033[31mred\n",
            "file            1 /docs/back\\\\slash\n",
            "file            1 /docs/csi\\302\\2332J\n",
            "file            1 /docs/del\\177\n",
            "file            1 /docs/evil\\nfile          9 FAKE\n",
            "file            1 /docs/tab\\there\n",
        )
    );
    let out = vmbdev_in(dir.path(), &["ls", "--json", "IMG.vhdx", "/docs"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<String> = listed
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = hostile.iter().map(|n| format!("/docs/{n}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn not_found_messages_escape_the_path() {
    let dir = tempfile::tempdir().unwrap();
    ext4_vhdx(dir.path(), &[("a.txt", b"a")]);
    for cmd in ["ls", "cat"] {
        let out = vmbdev_in(dir.path(), &[cmd, "IMG.vhdx", "/x\u{1b}]0;owned\u{7}\ny"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            "vmbdev: IMG.vhdx: /x\\033]0;owned\\a\\ny: no such file or directory\n"
        );
    }
}

#[test]
fn tracing_is_not_coloured_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    ext4_vhdx(dir.path(), &[("a.txt", b"a")]);
    let out = vmbdev_in(dir.path(), &["-v", "info", "IMG.vhdx"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("opened image"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    // On a terminal (`script` gives it one) tracing is coloured.
    let out = Command::new("script")
        .current_dir(dir.path())
        .env("VMBDEV", env!("CARGO_BIN_EXE_vmbdev"))
        .args(["-qec", "\"$VMBDEV\" -v info IMG.vhdx", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("opened image") && text.contains("\u{1b}["),
        "{text:?}"
    );
}

/// Runs `script` in bash with pipefail and returns (stdout, stderr).
fn bash(dir: &std::path::Path, script: &str) -> (String, String) {
    let out = Command::new("bash")
        .current_dir(dir)
        .env("VMBDEV", env!("CARGO_BIN_EXE_vmbdev"))
        .args(["-c", &format!("set -o pipefail; {script}")])
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn broken_pipes_end_quietly_with_sigpipe() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7) as u8).collect();
    let many: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| {
            (
                format!("d/a-rather-long-file-name-to-fill-the-pipe-{i:05}.txt"),
                Vec::new(),
            )
        })
        .collect();
    let mut files: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    files.push(("big.bin", &big));
    ext4_vhdx(dir.path(), &files);
    let (out, err) = bash(
        dir.path(),
        r#""$VMBDEV" cat IMG.vhdx /big.bin | head -c 10 | od -An -tx1; echo "status $?""#,
    );
    assert_eq!(out, " 00 07 0e 15 1c 23 2a 31 38 3f\nstatus 141\n");
    assert_eq!(err, "");
    let (out, err) = bash(
        dir.path(),
        r#""$VMBDEV" ls -r IMG.vhdx /d | head -1; echo "status $?""#,
    );
    assert_eq!(
        out,
        "file            0 /d/a-rather-long-file-name-to-fill-the-pipe-00000.txt\nstatus 141\n"
    );
    assert_eq!(err, "");
    let (out, err) = bash(
        dir.path(),
        r#""$VMBDEV" dump IMG.vhdx -o - | head -c 3 | od -An -tx1; echo "status $?""#,
    );
    assert_eq!(out, " 00 00 00\nstatus 141\n");
    assert_eq!(err, "");
    // A pipe whose reader is gone before the first write: the same end,
    // every time.
    for args in [
        &["info", "IMG.vhdx"][..],
        &["ls", "IMG.vhdx"],
        &["cat", "IMG.vhdx", "/big.bin", "-o", "-"],
        &["dump", "--direct", "IMG.vhdx", "-o", "-"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = vmbdev()
            .current_dir(dir.path())
            .args(args)
            .stdout(Stdio::from(writer))
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(13), "{args:?}: {:?}", out.status);
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    assert_eq!(names(dir.path()), ["IMG.vhdx"]);
}

#[test]
fn dash_means_standard_output() {
    let dir = tempfile::tempdir().unwrap();
    ext4_vhdx(dir.path(), &[("docs/a.txt", b"hello")]);
    let out = vmbdev_in(dir.path(), &["cat", "IMG.vhdx", "/docs/a.txt", "-o", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"hello");
    let to_file = vmbdev_in(dir.path(), &["dump", "IMG.vhdx", "-o", "disk.raw"]);
    assert_eq!(to_file.status.code(), Some(0), "{}", stderr(&to_file));
    let file = std::fs::read(dir.path().join("disk.raw")).unwrap();
    assert_eq!(file.len(), 8 << 20);
    for direct in [false, true] {
        let mut args = vec!["dump", "IMG.vhdx", "-o", "-"];
        if direct {
            args.push("--direct");
        }
        let out = vmbdev_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(out.stdout == file, "{args:?}: stdout differs from the file");
    }
    assert_eq!(names(dir.path()), ["IMG.vhdx", "disk.raw"]);
}

#[test]
fn dump_refuses_to_write_a_disk_to_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    ext4_vhdx(dir.path(), &[("a.txt", b"a")]);
    // `script` runs the command with a pseudo-terminal as its stdout.
    let out = Command::new("script")
        .current_dir(dir.path())
        .env("VMBDEV", env!("CARGO_BIN_EXE_vmbdev"))
        .args(["-qec", "\"$VMBDEV\" dump IMG.vhdx -o -", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vmbdev: standard output: is a terminal; refusing to write the disk's bytes to it (redirect it or give -o FILE)\r\n"
    );
}

#[test]
fn a_replaced_output_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    ext4_vhdx(dir.path(), &[("a.txt", b"new")]);
    let old = dir.path().join("old.txt");
    std::fs::write(&old, b"old").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = vmbdev_in(dir.path(), &["cat", "IMG.vhdx", "/a.txt", "-o", "old.txt"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&old).unwrap(), b"new");
    let mode = std::fs::metadata(&old).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
}
