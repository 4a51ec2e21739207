//! `vmbdev` never harms an input: an output that is the image itself (by
//! name, symbolic link or hard link), a parent of its differencing chain,
//! or a file inside the directory `pack` reads is refused before anything
//! is written; outputs appear only when complete, and no temporary is left
//! behind after an error or a signal. Images are shared-locked the way
//! QEMU locks them, so a writing qemu-nbd makes `vmbdev` refuse, and a
//! reading `vmbdev` makes qemu-io refuse to write.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{ext4_vhdx, names, set_file_len, snapshot, stderr, vmbdev, vmbdev_in};

const A_TXT: &[u8] = b"abc";

fn image(dir: &Path) -> std::path::PathBuf {
    ext4_vhdx(dir, &[("docs/a.txt", A_TXT)])
}

#[test]
fn cat_onto_its_own_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let before = snapshot(&img);
    let out = vmbdev_in(
        dir.path(),
        &["cat", "IMG.vhdx", "/docs/a.txt", "-o", "IMG.vhdx"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "vmbdev: IMG.vhdx: is the same file as the input IMG.vhdx; refusing to overwrite it\n"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(snapshot(&img), before);
    assert_eq!(names(dir.path()), ["IMG.vhdx"]);
}

#[test]
fn dump_onto_its_own_image_is_refused_through_links() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    std::os::unix::fs::symlink("IMG.vhdx", dir.path().join("link.vhdx")).unwrap();
    std::fs::hard_link(&img, dir.path().join("hard.vhdx")).unwrap();
    let before = snapshot(&img);
    for target in ["IMG.vhdx", "link.vhdx", "hard.vhdx", "./IMG.vhdx"] {
        for direct in [false, true] {
            let mut args = vec!["dump", "IMG.vhdx", "-o", target];
            if direct {
                args.push("--direct");
            }
            let out = vmbdev_in(dir.path(), &args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert_eq!(
                stderr(&out),
                format!(
                    "vmbdev: {target}: is the same file as the input IMG.vhdx; refusing to overwrite it\n"
                ),
                "{args:?}"
            );
            assert_eq!(snapshot(&img), before, "{args:?}");
        }
    }
    // The image read through a link is refused as an output too.
    let out = vmbdev_in(dir.path(), &["dump", "link.vhdx", "-o", "hard.vhdx"]);
    assert_eq!(
        stderr(&out),
        "vmbdev: hard.vhdx: is the same file as the input link.vhdx; refusing to overwrite it\n"
    );
    assert_eq!(snapshot(&img), before);
    assert_eq!(names(dir.path()), ["IMG.vhdx", "hard.vhdx", "link.vhdx"]);
}

#[test]
fn dump_onto_a_differencing_parent_is_refused() {
    use vmbdev_block::RawFile;
    use vmbdev_vhdx::{WriteOptions, write_differencing, write_vhdx};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    std::fs::write(&raw, vec![0x5a_u8; 4 << 20]).unwrap();
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    let base = dir.path().join("base.vhdx");
    write_vhdx(&RawFile::open(&raw).unwrap(), &base, &opts).unwrap();
    std::fs::remove_file(&raw).unwrap();
    let mid = dir.path().join("mid.vhdx");
    write_differencing(&base, &mid, &[(0, vec![1u8; 512])], &opts).unwrap();
    let top = dir.path().join("top.vhdx");
    write_differencing(&mid, &top, &[(8, vec![2u8; 512])], &opts).unwrap();
    let chain: Vec<String> = {
        let out = vmbdev_in(dir.path(), &["info", "--json", "top.vhdx"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["parent_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(chain.len(), 2);
    let before = [snapshot(&top), snapshot(&mid), snapshot(&base)];
    for (target, parent) in [("mid.vhdx", &chain[0]), ("base.vhdx", &chain[1])] {
        let out = vmbdev_in(dir.path(), &["dump", "--direct", "top.vhdx", "-o", target]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "vmbdev: {target}: is {parent}, a parent of top.vhdx; refusing to overwrite it\n"
            )
        );
    }
    assert_eq!([snapshot(&top), snapshot(&mid), snapshot(&base)], before);
    assert_eq!(names(dir.path()), ["base.vhdx", "mid.vhdx", "top.vhdx"]);
}

#[test]
fn pack_refuses_to_overwrite_a_file_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("keep.txt"), b"precious").unwrap();
    let before = snapshot(&src.join("keep.txt"));
    let out = vmbdev_in(dir.path(), &["pack", "tree", "tree/keep.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "vmbdev: tree/keep.txt: is a file inside tree, the directory being packed; refusing to overwrite it\n"
    );
    assert_eq!(snapshot(&src.join("keep.txt")), before);
    assert_eq!(names(&src), ["keep.txt"]);
    // A new image inside the packed directory is fine.
    let out = vmbdev_in(dir.path(), &["pack", "tree", "tree/new.vhdx"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&src), ["keep.txt", "new.vhdx"]);
}

#[test]
fn outputs_replace_a_file_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    std::fs::write(dir.path().join("old.txt"), b"old contents").unwrap();
    let out = vmbdev_in(
        dir.path(),
        &["cat", "IMG.vhdx", "/docs/a.txt", "-o", "old.txt"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.path().join("old.txt")).unwrap(), A_TXT);
    // A file the image does not hold leaves the old output alone.
    let out = vmbdev_in(
        dir.path(),
        &["cat", "IMG.vhdx", "/docs/missing.txt", "-o", "old.txt"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(dir.path().join("old.txt")).unwrap(), A_TXT);
    assert_eq!(names(dir.path()), ["IMG.vhdx", "old.txt"]);
}

/// A sparse raw disk big enough that a dump is still running when the test
/// acts on it.
fn big_raw(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("big.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(8 << 30).unwrap();
    raw
}

/// Waits until a file whose name starts with `prefix` shows up in `dir`
/// while `child` runs; returns its name.
fn wait_for_temporary(dir: &Path, prefix: &str, child: &mut std::process::Child) -> String {
    loop {
        if let Some(name) = names(dir).into_iter().find(|n| n.starts_with(prefix)) {
            return name;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vmbdev ended ({status}) before its temporary appeared");
        }
        std::thread::yield_now();
    }
}

#[test]
fn a_failed_dump_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let raw = big_raw(dir.path());
    let mut child = vmbdev()
        .current_dir(dir.path())
        .args(["dump", "--direct", "big.raw", "-o", "out.raw"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_temporary(dir.path(), ".out.raw.vmbdev-tmp-", &mut child);
    // The image shrinks under the dump: the next read fails.
    set_file_len(&raw, 1 << 20);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with("vmbdev: big.raw: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(names(dir.path()), ["big.raw"]);
}

#[test]
fn an_interrupted_dump_leaves_no_output() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        big_raw(dir.path());
        let mut child = vmbdev()
            .current_dir(dir.path())
            .args(["dump", "big.raw", "-o", "out.raw"])
            .spawn()
            .unwrap();
        wait_for_temporary(dir.path(), ".out.raw.vmbdev-tmp-", &mut child);
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        let number = if signal == "TERM" { 15 } else { 2 };
        assert_eq!(status.signal(), Some(number), "{signal}: {status:?}");
        assert_eq!(names(dir.path()), ["big.raw"], "{signal}");
    }
}

/// A qemu-nbd serving `image` writable over a unix socket (no kernel nbd
/// device), stopped on drop.
struct QemuNbd {
    pid: i32,
}

impl QemuNbd {
    fn start(dir: &Path, image: &Path, read_only: bool) -> Self {
        let pid_file = dir.join("nbd.pid");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("-k")
            .arg(dir.join("nbd.sock"))
            .arg("--fork")
            .arg("--persistent")
            .arg(format!("--pid-file={}", pid_file.display()))
            .args(["-f", "vhdx"]);
        if read_only {
            cmd.arg("--read-only");
        }
        vmbdev_tests::images::run(cmd.arg(image));
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::remove_file(pid_file).unwrap();
        QemuNbd { pid }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        // Wait until it is gone (its locks go with it).
        while Path::new(&format!("/proc/{}", self.pid)).exists() {
            std::thread::yield_now();
        }
    }
}

#[test]
fn an_image_qemu_nbd_writes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let before = snapshot(&img);
    let nbd = QemuNbd::start(dir.path(), &img, false);
    let refusal = "vmbdev: IMG.vhdx: in use: another process (such as qemu-nbd or a VM) has it open for writing\n";
    for args in [
        &["info", "IMG.vhdx"][..],
        &["ls", "IMG.vhdx"],
        &["cat", "IMG.vhdx", "/docs/a.txt"],
        &["dump", "IMG.vhdx", "-o", "out.raw"],
    ] {
        let out = vmbdev_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out), refusal, "{args:?}");
        assert!(out.stdout.is_empty());
    }
    drop(nbd);
    // A read-only qemu-nbd shares the image with readers.
    let nbd = QemuNbd::start(dir.path(), &img, true);
    let out = vmbdev_in(dir.path(), &["cat", "IMG.vhdx", "/docs/a.txt"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, A_TXT);
    drop(nbd);
    assert_eq!(snapshot(&img), before);
    let left: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n != "nbd.sock")
        .collect();
    assert_eq!(left, ["IMG.vhdx"]);
}

#[test]
fn qemu_cannot_write_an_image_vmbdev_reads() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let before = snapshot(&img);
    // A dump to a pipe nobody drains blocks with the image locked.
    let mut child = vmbdev()
        .current_dir(dir.path())
        .args(["dump", "--direct", "IMG.vhdx", "-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let qemu = Command::new("qemu-io")
        .current_dir(dir.path())
        .args(["-f", "vhdx", "-c", "write 0 512", "IMG.vhdx"])
        .output()
        .unwrap();
    assert_eq!(qemu.status.code(), Some(1));
    let qemu_err = String::from_utf8_lossy(&qemu.stderr);
    assert!(
        qemu_err.contains("Failed to get \"write\" lock"),
        "{qemu_err}"
    );
    // Reading alongside is fine.
    let info = Command::new("qemu-img")
        .current_dir(dir.path())
        .args(["info", "IMG.vhdx"])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(1 + rest.len() as u64, 8 << 20);
    assert_eq!(snapshot(&img), before);
    // Once vmbdev is done, qemu may write.
    let qemu = Command::new("qemu-io")
        .current_dir(dir.path())
        .args(["-f", "vhdx", "-c", "write 0 512", "IMG.vhdx"])
        .output()
        .unwrap();
    assert!(
        qemu.status.success(),
        "{}",
        String::from_utf8_lossy(&qemu.stderr)
    );
}

#[test]
fn cat_from_a_directory_onto_the_file_it_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), A_TXT).unwrap();
    let before = snapshot(&tree.join("a.txt"));
    for path in ["/a.txt", "\\a.txt"] {
        let out = vmbdev_in(dir.path(), &["cat", "tree", path, "-o", "tree/a.txt"]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        assert_eq!(
            stderr(&out),
            "vmbdev: tree/a.txt: is the same file as the input tree/a.txt; refusing to overwrite it\n",
            "{path}"
        );
    }
    assert_eq!(snapshot(&tree.join("a.txt")), before);
    assert_eq!(names(&tree), ["a.txt"]);
}

#[test]
fn an_interrupted_pack_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Big enough that packing is still under way when the signal comes.
    let data: Vec<u8> = (0..256u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("big.bin"), data).unwrap();
    let mut child = vmbdev()
        .current_dir(dir.path())
        .args(["pack", "src", "out.vhdx"])
        .spawn()
        .unwrap();
    while !names(dir.path())
        .iter()
        .any(|n| n.starts_with(".vmbdev-pack-"))
    {
        std::thread::yield_now();
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(child.wait().unwrap().signal(), Some(15));
    assert_eq!(names(dir.path()), ["src"]);
}
