//! ext4 as `mke2fs -d` writes it: symbolic links (fast and slow, dangling,
//! to directories) reported and never followed, FIFOs, sockets and device
//! nodes listed with their kind, times with nanoseconds, a sparse file past
//! 4 GiB, a file with a deep extent tree and a 10,000-entry directory, all
//! compared with the source tree.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_fs::{EntryKind, Ext4Tree, FileTree, Timestamp, TreeError, TreePath};
use vmbdev_tests::images::*;

const GIB: u64 = 1 << 30;

fn mount(img: &Path) -> Ext4Tree {
    let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open(img).unwrap());
    Ext4Tree::mount(device).unwrap()
}

fn lookup(tree: &dyn FileTree, path: &str) -> vmbdev_fs::Metadata {
    tree.lookup(&TreePath::parse(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A slow link's target: longer than the 60 bytes an inode holds inline.
fn long_target() -> String {
    format!("{}/file.txt", "a-directory-with-a-long-name".repeat(3))
}

fn make_source(src: &Path) -> bool {
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/file.txt"), b"the real file").unwrap();
    std::os::unix::fs::symlink("dir/file.txt", src.join("fast-link")).unwrap();
    std::os::unix::fs::symlink(long_target(), src.join("slow-link")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("dir", src.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("host-link")).unwrap();
    run(Command::new("mkfifo").arg(src.join("pipe")));
    let socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    drop(socket);
    // Device nodes need privilege; without it the rest is still checked.
    let nodes = Command::new("mknod")
        .arg(src.join("chardev"))
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mknod")
            .arg(src.join("blockdev"))
            .args(["b", "7", "0"])
            .status()
            .is_ok_and(|s| s.success());
    fs::write(src.join("stamped"), b"t").unwrap();
    run(Command::new("touch")
        .args(["-d", "2020-01-02 03:04:05.123456789 UTC"])
        .arg(src.join("stamped")));
    fs::set_permissions(src.join("stamped"), fs::Permissions::from_mode(0o640)).unwrap();
    nodes
}

#[test]
fn links_and_special_files_are_listed_with_their_kind_and_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let nodes = make_source(&src);
    let img = ext4_image(tmp.path(), &src, 32);
    let tree = mount(&img);

    let listing = tree.read_dir(&TreePath::root()).unwrap();
    for (name, meta) in &listing {
        if name == "lost+found" {
            continue;
        }
        let host = fs::symlink_metadata(src.join(name)).unwrap();
        let ft = host.file_type();
        use std::os::unix::fs::FileTypeExt;
        let want = if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_dir() {
            EntryKind::Directory
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else {
            EntryKind::File
        };
        assert_eq!(meta.kind, want, "{name}");
        assert_eq!(
            *meta,
            lookup(&tree, name),
            "{name}: listing and lookup agree"
        );
        assert_eq!(meta.mode, Some(host.mode() & 0o7777), "{name}: mode");
        if want == EntryKind::Symlink {
            let target = fs::read_link(src.join(name)).unwrap();
            assert_eq!(
                meta.link_target.as_deref(),
                Some(target.to_str().unwrap()),
                "{name}"
            );
            assert_eq!(meta.size, target.as_os_str().len() as u64, "{name}");
        } else {
            assert_eq!(meta.link_target, None, "{name}");
        }
    }
    let mut names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected = vec![
        "dangling",
        "dir",
        "dir-link",
        "fast-link",
        "host-link",
        "lost+found",
        "pipe",
        "slow-link",
        "socket",
        "stamped",
    ];
    if nodes {
        expected.extend(["blockdev", "chardev"]);
    }
    expected.sort_unstable();
    assert_eq!(names, expected);

    // Reading a link or a special file is refused, never followed.
    let mut buf = [0u8; 64];
    for name in [
        "fast-link",
        "slow-link",
        "dangling",
        "dir-link",
        "host-link",
        "pipe",
        "socket",
    ] {
        match tree.read_at(&TreePath::parse(name), 0, &mut buf) {
            Err(TreeError::Unsupported { path, what }) => {
                assert_eq!(path, format!("/{name}"));
                assert!(!what.is_empty());
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let n = tree
        .read_at(&TreePath::parse("/dir/file.txt"), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"the real file");
}

#[test]
fn times_keep_nanoseconds_and_match_debugfs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let img = ext4_image(tmp.path(), &src, 32);
    // mke2fs -d keeps whole seconds only; store nanoseconds with debugfs
    // (the extra field holds them shifted left by 2 above the epoch bits).
    let extra = format!("{:#x}", 123_456_789u32 << 2);
    tool(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("sif /stamped mtime_extra {extra}"),
            path_str(&img),
        ],
    );
    let tree = mount(&img);
    let meta = lookup(&tree, "/stamped");
    // debugfs prints "mtime: 0x5e0d5d35:1d6f3454 -- ..." (seconds, then
    // nanoseconds shifted left by 2 with the epoch bits).
    let stat = tool("debugfs", &["-R", "stat /stamped", path_str(&img)]);
    let line = stat
        .lines()
        .find(|l| l.trim_start().starts_with("mtime:"))
        .unwrap_or_else(|| panic!("no mtime in {stat}"));
    let hex = line.split_whitespace().nth(1).unwrap();
    let (secs, extra) = hex.trim_start_matches("0x").split_once(':').unwrap();
    let seconds = i64::from(u32::from_str_radix(secs, 16).unwrap());
    let nanos = u32::from_str_radix(extra, 16).unwrap() >> 2;
    assert_eq!(meta.modified, Some(Timestamp::new(seconds, nanos)));
    // The source time: 2020-01-02T03:04:05.123456789Z.
    assert_eq!(
        meta.modified.unwrap().to_string(),
        "2020-01-02T03:04:05.123456789Z"
    );
    assert_eq!(meta.mode.map(|m| m & 0o7777), Some(0o640));
    assert!(meta.created.is_some() && meta.accessed.is_some());
}

#[test]
fn a_sparse_file_past_4_gib_and_a_deep_extent_tree_read_like_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // 5 GiB, data only at 1 MiB and just past 4 GiB.
    let big = fs::File::create(src.join("big.sparse")).unwrap();
    big.set_len(5 * GIB).unwrap();
    big.write_all_at(b"early bytes", 1 << 20).unwrap();
    big.write_all_at(b"bytes past four gibibytes", 4 * GIB + 12345)
        .unwrap();
    drop(big);
    // 2,000 one-block extents separated by holes: more than one leaf
    // block of extents, so the tree has index nodes.
    let frag = fs::File::create(src.join("fragmented")).unwrap();
    for i in 0..2000u64 {
        frag.write_all_at(&[(i % 251) as u8 + 1; 4096], i * 8192)
            .unwrap();
    }
    drop(frag);
    let img = ext4_image(tmp.path(), &src, 64);
    let depth = tool("debugfs", &["-R", "stat /fragmented", path_str(&img)]);
    assert!(
        depth.contains("(ETB1)") || depth.contains("ETB"),
        "the fragmented file should need extent index blocks:\n{depth}"
    );
    let tree = mount(&img);

    let meta = lookup(&tree, "/big.sparse");
    assert_eq!((meta.kind, meta.size), (EntryKind::File, 5 * GIB));
    let mut buf = vec![0u8; 64];
    let at = 4 * GIB + 12345 - 7;
    let n = tree
        .read_at(&TreePath::parse("/big.sparse"), at, &mut buf)
        .unwrap();
    assert_eq!(n, 64);
    assert_eq!(&buf[..7], &[0u8; 7], "hole before the data");
    assert_eq!(&buf[7..32], b"bytes past four gibibytes");
    assert!(buf[32..].iter().all(|&b| b == 0));
    let n = tree
        .read_at(&TreePath::parse("/big.sparse"), 1 << 20, &mut buf)
        .unwrap();
    assert_eq!((&buf[..11], n), (&b"early bytes"[..], 64));
    let n = tree
        .read_at(&TreePath::parse("/big.sparse"), 5 * GIB - 10, &mut buf)
        .unwrap();
    assert_eq!(n, 10, "read ends at the file size");

    let want = fs::read(src.join("fragmented")).unwrap();
    let meta = lookup(&tree, "/fragmented");
    assert_eq!(meta.size, want.len() as u64);
    let mut got = vec![0u8; want.len()];
    let mut done = 0;
    while done < got.len() {
        let n = tree
            .read_at(
                &TreePath::parse("/fragmented"),
                done as u64,
                &mut got[done..],
            )
            .unwrap();
        assert!(n > 0);
        done += n;
    }
    assert!(got == want, "fragmented file differs");
}

#[test]
fn a_directory_of_10000_entries_lists_every_name_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let many = src.join("many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..10_000 {
        fs::write(many.join(format!("entry-{i:05}")), &b"0123456789"[..i % 10]).unwrap();
    }
    let img = ext4_image(tmp.path(), &src, 64);
    let tree = mount(&img);
    let listing = tree.read_dir(&TreePath::parse("/many")).unwrap();
    assert_eq!(listing.len(), 10_000);
    for (i, (name, meta)) in listing.iter().enumerate() {
        assert_eq!(*name, format!("entry-{i:05}"));
        assert_eq!(meta.size, (i % 10) as u64, "{name}");
    }
}

#[test]
fn a_link_whose_target_has_a_component_over_255_bytes_is_still_listed() {
    // Linux stores any target up to 4095 bytes; the ext4 crate refuses
    // targets with a component longer than a file name may be.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let long = format!("../{}", "x".repeat(300));
    std::os::unix::fs::symlink(&long, src.join("long-link")).unwrap();
    std::os::unix::fs::symlink("short/target", src.join("short-link")).unwrap();
    fs::write(src.join("file.txt"), b"next to the links").unwrap();
    let img = ext4_image(tmp.path(), &src, 16);
    // The target is stored whole, as debugfs shows.
    let stat = tool("debugfs", &["-R", "stat /long-link", path_str(&img)]);
    assert!(stat.contains("Size: 303"), "{stat}");
    let tree = mount(&img);
    let listing = tree.read_dir(&TreePath::root()).unwrap();
    let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"long-link") && names.contains(&"file.txt"),
        "{names:?}"
    );
    let meta = lookup(&tree, "/long-link");
    assert_eq!((meta.kind, meta.size), (EntryKind::Symlink, 303));
    assert_eq!(
        lookup(&tree, "/short-link").link_target.as_deref(),
        Some("short/target")
    );
    let mut buf = [0u8; 64];
    let n = tree
        .read_at(&TreePath::parse("/file.txt"), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"next to the links");
}

/// Links in the middle of a path, resolved as the Linux kernel resolves
/// them on the source tree: relative, absolute (from the volume's root),
/// through `..`, chained, and the kernel's limit of 40 links per path
/// (one more is a loop, read as absent).
#[test]
fn links_in_the_middle_of_a_path_resolve_as_linux_resolves_them() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("dir/sub/file.txt"), b"reached through links").unwrap();
    symlink("dir", src.join("rel")).unwrap();
    symlink("rel/sub", src.join("chain")).unwrap();
    symlink("dir/sub/..", src.join("up")).unwrap();
    symlink("dir/sub/file.txt", src.join("file-link")).unwrap();
    symlink("loop-b", src.join("loop-a")).unwrap();
    symlink("loop-a", src.join("loop-b")).unwrap();
    symlink("dir", src.join("l0")).unwrap();
    for i in 1..=40 {
        symlink(format!("l{}", i - 1), src.join(format!("l{i}"))).unwrap();
    }
    // Absolute targets resolve from the volume's root, not the host's.
    symlink("/dir/sub", src.join("abs")).unwrap();
    let img = ext4_image(tmp.path(), &src, 8);
    let tree = mount(&img);

    let want = fs::read(src.join("dir/sub/file.txt")).unwrap();
    let mut buf = [0u8; 64];
    for path in [
        "rel/sub/file.txt",
        "chain/file.txt",
        "up/sub/file.txt",
        "abs/file.txt",
        "l39/sub/file.txt",
    ] {
        if !path.starts_with("abs") {
            assert_eq!(fs::read(src.join(path)).unwrap(), want, "host: {path}");
        }
        let n = tree
            .read_at(&TreePath::parse(path), 0, &mut buf)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(&buf[..n], want.as_slice(), "{path}");
        assert_eq!(lookup(&tree, path).kind, EntryKind::File, "{path}");
    }
    // One link more than the kernel follows, and a loop: ELOOP there,
    // absent here.
    for path in ["l40/sub/file.txt", "loop-a/file.txt"] {
        let host = fs::read(src.join(path)).unwrap_err();
        assert_eq!(host.raw_os_error(), Some(40), "host ELOOP: {path}");
        match tree.lookup(&TreePath::parse(path)) {
            Err(TreeError::NotFound(p)) => assert_eq!(p, format!("/{path}")),
            other => panic!("{path}: {other:?}"),
        }
    }
    // A final link is described, not followed; a file is no directory.
    let meta = lookup(&tree, "chain/file.txt/..");
    assert_eq!(meta.kind, EntryKind::Symlink, "`..` is taken lexically");
    assert_eq!(lookup(&tree, "file-link").kind, EntryKind::Symlink);
    assert!(matches!(
        tree.read_at(&TreePath::parse("file-link"), 0, &mut buf),
        Err(TreeError::Unsupported { .. })
    ));
    assert!(matches!(
        tree.lookup(&TreePath::parse("rel/sub/file.txt/x")),
        Err(TreeError::NotADirectory(_))
    ));
    // A directory is listed through links, its own links described.
    let names = |list: Vec<(String, vmbdev_fs::Metadata)>| -> Vec<String> {
        list.into_iter().map(|(name, _)| name).collect()
    };
    let listed = names(tree.read_dir(&TreePath::parse("chain")).unwrap());
    assert_eq!(listed, ["file.txt"]);
    let root = tree.read_dir(&TreePath::parse("up")).unwrap();
    let (_, rel) = root.iter().find(|(name, _)| name == "sub").unwrap();
    assert_eq!(rel.kind, EntryKind::Directory);
    let top = tree.read_dir(&TreePath::parse("l40/..")).unwrap();
    let (_, chain) = top.iter().find(|(name, _)| name == "chain").unwrap();
    assert_eq!(chain.link_target.as_deref(), Some("rel/sub"));
}
