//! `vmbdev pack` and `vmbdev ls`: a packed tree lists exactly the source
//! tree (compared with a walk of the source directory), also for an image
//! made by mkfs.vfat + mcopy and converted by qemu-img; hostile images and
//! missing paths exit 1 with one message line, usage errors exit 2. A
//! 1 TiB pack of a small tree takes little host storage and lists right;
//! disk and block sizes it cannot honour are refused before anything is
//! written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use vmbdev_tests::cli::{path_str, qemu_img, run_vmbdev, tool};
use vmbdev_tests::random_trees::{Listed, source_listing};

fn vmbdev(args: &[&str]) -> Output {
    run_vmbdev(env!("CARGO_BIN_EXE_vmbdev"), args)
}

const MIB: u64 = 1 << 20;

/// A small tree with nested, spaced and Unicode names, an empty file and
/// an empty directory.
fn make_tree(root: &Path) {
    let files: [(&str, usize); 7] = [
        ("README", 10),
        ("empty.txt", 0),
        ("docs/A long name with spaces.txt", 700),
        ("docs/deeper/deepest/leaf.bin", 5000),
        ("Ünïcødé ディレクトリ/Grüße – 日本語.txt", 33),
        ("docs/deeper/x.y.z", 1),
        ("big.bin", 300_000),
    ];
    for (name, size) in files {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            (0..size).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>(),
        )
        .unwrap();
    }
    fs::create_dir_all(root.join("empty dir")).unwrap();
}

/// (absolute path, type, size) of everything under `root`, by walking it.
fn walk(root: &Path) -> Vec<(String, String, u64)> {
    triples(source_listing(root))
}

fn ls_json(source: &Path, extra: &[&str]) -> Vec<(String, String, u64)> {
    triples(vmbdev_tests::cli::ls_json(
        env!("CARGO_BIN_EXE_vmbdev"),
        source,
        extra,
    ))
}

fn triples(listing: Vec<Listed>) -> Vec<(String, String, u64)> {
    listing
        .into_iter()
        .map(|e| (e.path, e.kind, e.size))
        .collect()
}

fn assert_fails_with_one_line(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    assert!(!err.trim().is_empty());
}

#[test]
fn packed_image_lists_the_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let vhdx = tmp.path().join("out.vhdx");
    let out = vmbdev(&["pack", path_str(&src), path_str(&vhdx), "--fs", "fat32"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    qemu_img(&["check", path_str(&vhdx)]);

    let expected = walk(&src);
    assert_eq!(ls_json(&vhdx, &[]), expected);
    assert_eq!(ls_json(&vhdx, &["--partition", "1"]), expected);
    assert_eq!(ls_json(&src, &[]), expected);

    // Plain output: one line per entry with type, size and path.
    let plain = vmbdev(&["ls", path_str(&vhdx), "/docs"]);
    assert!(plain.status.success());
    let text = String::from_utf8(plain.stdout).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.splitn(3, ' ').filter(|f| !f.is_empty()).collect())
        .collect();
    let mut want: Vec<(String, String, u64)> = expected
        .iter()
        .filter(|(p, _, _)| p.starts_with("/docs/") && p.matches('/').count() == 2)
        .cloned()
        .collect();
    want.sort();
    assert_eq!(lines.len(), want.len(), "{text}");
    for (line, (path, kind, size)) in text.lines().zip(&want) {
        let mut fields = line.split_whitespace();
        assert_eq!(fields.next(), Some(kind.as_str()), "{line}");
        assert_eq!(fields.next(), Some(size.to_string().as_str()), "{line}");
        assert!(line.ends_with(path.as_str()), "{line}");
    }
    // A file names itself; a lookup in another case finds it (FAT).
    let one = vmbdev(&[
        "ls",
        path_str(&vhdx),
        "/DOCS/deeper/DEEPEST/LEAF.BIN",
        "--json",
    ]);
    assert!(one.status.success());
    let value: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(value[0]["size"], 5000);
    assert_eq!(value[0]["type"], "file");

    // With a size and block size: the disk qemu-img sees.
    let sized = tmp.path().join("sized.vhdx");
    let out = vmbdev(&[
        "pack",
        path_str(&src),
        path_str(&sized),
        "--size",
        "48M",
        "--block-size",
        "4M",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = qemu_img(&["info", "--output=json", path_str(&sized)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 48 * MIB);
    assert_eq!(info["cluster-size"], 4 * MIB);
    assert_eq!(ls_json(&sized, &[]), expected);
}

#[test]
fn mkfs_vfat_image_converted_by_qemu_lists_the_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let raw = tmp.path().join("fat16.img");
    fs::File::create(&raw).unwrap().set_len(16 * MIB).unwrap();
    tool("mkfs.vfat", &["-F", "16", path_str(&raw)]);
    let mut args = vec!["-i", path_str(&raw), "-s"];
    let entries: Vec<PathBuf> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    args.extend(entries.iter().map(|p| path_str(p)));
    args.push("::/");
    tool("mcopy", &args);
    let vhdx = tmp.path().join("fat16.vhdx");
    qemu_img(&["convert", "-O", "vhdx", path_str(&raw), path_str(&vhdx)]);
    assert_eq!(ls_json(&vhdx, &[]), walk(&src));
    assert_eq!(ls_json(&raw, &[]), walk(&src));
}

/// Position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the image", String::from_utf8_lossy(needle)))
}

#[test]
fn a_directory_loop_in_an_image_ends_the_listing_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("loop.img");
    fs::File::create(&raw).unwrap().set_len(16 * MIB).unwrap();
    tool("mkfs.vfat", &["-F", "16", path_str(&raw)]);
    tool("mmd", &["-i", path_str(&raw), "::/LOOP", "::/LOOP/SUB"]);
    let mut bytes = fs::read(&raw).unwrap();
    // LOOP/SUB points back at LOOP's own cluster.
    let lp = find(&bytes, b"LOOP       \x10");
    let cluster = [bytes[lp + 26], bytes[lp + 27]];
    let sub = find(&bytes, b"SUB        \x10");
    bytes[sub + 26..sub + 28].copy_from_slice(&cluster);
    fs::write(&raw, &bytes).unwrap();
    let out = vmbdev(&["ls", path_str(&raw), "/", "-r"]);
    assert_fails_with_one_line(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/LOOP/SUB/SUB"));
    // Without -r the listing is fine.
    assert!(
        vmbdev(&["ls", path_str(&raw), "/LOOP/SUB/SUB"])
            .status
            .success()
    );
}

#[test]
fn bad_sources_and_paths_exit_1_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let vhdx = tmp.path().join("ok.vhdx");
    assert!(
        vmbdev(&["pack", path_str(&src), path_str(&vhdx)])
            .status
            .success()
    );
    let bytes = fs::read(&vhdx).unwrap();

    let truncated = tmp.path().join("truncated.vhdx");
    fs::write(
        &truncated,
        &bytes[..(bytes.len() / 2).min(3 * MIB as usize)],
    )
    .unwrap();
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&truncated)]), 1);

    let tiny = tmp.path().join("tiny.vhdx");
    fs::write(&tiny, b"vhdxfile and nothing else").unwrap();
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&tiny), "-r"]), 1);

    let garbage = tmp.path().join("garbage.vhdx");
    let mut g = b"vhdxfile".to_vec();
    g.resize(4 * MIB as usize, 0x5A);
    fs::write(&garbage, &g).unwrap();
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&garbage), "--json"]), 1);

    let zeros = tmp.path().join("zeros.img");
    fs::write(&zeros, vec![0u8; MIB as usize]).unwrap();
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&zeros)]), 1);

    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&vhdx), "/no/such/path"]), 1);
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&vhdx), "--partition", "2"]), 1);
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&tmp.path().join("missing"))]), 1);
    assert_fails_with_one_line(&vmbdev(&["ls", path_str(&src), "/nope"]), 1);

    let out = tmp.path().join("x.vhdx");
    // A link is left out with a warning; packing still succeeds.
    let linked = tmp.path().join("linked");
    fs::create_dir(&linked).unwrap();
    fs::write(linked.join("kept"), b"k").unwrap();
    std::os::unix::fs::symlink("kept", linked.join("link")).unwrap();
    let packed = vmbdev(&["pack", path_str(&linked), path_str(&out)]);
    assert!(packed.status.success());
    let warning = String::from_utf8_lossy(&packed.stderr);
    assert!(
        warning.contains("left out 1") && warning.contains("link"),
        "{warning}"
    );
    assert_eq!(
        ls_json(&out, &[]),
        [("/kept".to_owned(), "file".to_owned(), 1)]
    );
    assert_fails_with_one_line(
        &vmbdev(&[
            "pack",
            path_str(&tmp.path().join("missing")),
            path_str(&out),
        ]),
        1,
    );
    assert_fails_with_one_line(
        &vmbdev(&["pack", path_str(&src), path_str(&out), "--size", "8M"]),
        1,
    );

    assert_eq!(vmbdev(&["ls"]).status.code(), Some(2));
    assert_eq!(
        vmbdev(&["ls", path_str(&vhdx), "--bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(
        vmbdev(&["ls", path_str(&src), "--partition", "1"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        vmbdev(&["pack", path_str(&src), path_str(&out), "--size", "12Q"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        vmbdev(&["pack", path_str(&src), path_str(&out), "--block-size", "3M"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        vmbdev(&["pack", path_str(&src), path_str(&out), "--fs", "ntfs"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn a_one_tib_pack_of_a_small_tree_is_small_and_lists_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let vhdx = tmp.path().join("big.vhdx");
    let out = vmbdev(&["pack", path_str(&src), path_str(&vhdx), "--size", "1T"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", path_str(&vhdx)])).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(1 << 40));
    qemu_img(&["check", path_str(&vhdx)]);
    // Boot sector, the used heads of both FATs, the root directory, the
    // files and the two GPTs: a few MiB at most, not the FATs' 2 x 128 MiB
    // nor the disk's terabyte.
    let taken = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&vhdx).unwrap()) * 512;
    assert!(taken < 8 * MIB, "the image takes {taken} bytes");
    assert_eq!(ls_json(&vhdx, &[]), walk(&src));
}

#[test]
fn sizes_pack_cannot_honour_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let out = tmp.path().join("o.vhdx");
    let pack = |extra: &[&str]| {
        let mut args = vec!["pack", path_str(&src), path_str(&out)];
        args.extend_from_slice(extra);
        vmbdev(&args)
    };
    for (extra, says) in [
        (&["--size", "3T"][..], "too large"),
        (&["--size", "100000001"], "not a multiple of 512"),
        (&["--size", "1K"], "too small"),
        (&["--size", "64M", "--block-size", "128M"], "larger than"),
    ] {
        let run = pack(extra);
        assert_fails_with_one_line(&run, 1);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} left an output");
    }
    for extra in [
        &["--size", "1.5G"][..],
        &["--size", "99999999999T"],
        &["--block-size", "0"],
        &["--block-size", "512M"],
    ] {
        assert_eq!(pack(extra).status.code(), Some(2), "{extra:?}");
    }
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["src"], "scratch files were left behind");
}
