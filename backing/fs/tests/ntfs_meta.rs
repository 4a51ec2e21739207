//! NTFS as mkntfs + wimapply (+ ntfscp for a named stream) write it: the
//! volume label, times to 100 ns, attribute bits, sparse files read as
//! zeros, alternate data streams listed, compressed data refused; checked
//! against the source tree and `ntfsinfo`.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_fs::{FileTree, FsKind, NtfsTree, Timestamp, TreeError, TreePath, details};
use vmbdev_tests::images::*;

/// FILE_ATTRIBUTE_SPARSE_FILE.
const SPARSE: u32 = 0x200;

fn build(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("plain.txt"), b"plain bytes").unwrap();
    fs::write(src.join("sub/streams.txt"), b"main stream").unwrap();
    let sparse = fs::File::create(src.join("sparse.bin")).unwrap();
    sparse.set_len(3 << 20).unwrap();
    sparse.write_all_at(b"island", 2_500_000).unwrap();
    drop(sparse);
    run(Command::new("touch")
        .args(["-d", "2019-05-06 07:08:09.5 UTC"])
        .arg(src.join("plain.txt")));
    let img = dir.join("ntfs.img");
    blank(&img, 16 << 20);
    run(Command::new("mkntfs")
        .args(["-F", "-Q", "-q", "-L", "Données Vol"])
        .arg(&img));
    let wim = dir.join("src.wim");
    run(Command::new("wimcapture")
        .arg(&src)
        .arg(&wim)
        .arg("--no-acls"));
    run(Command::new("wimapply").arg(&wim).arg("1").arg(&img));
    let stream = dir.join("stream.bin");
    fs::write(&stream, b"hidden stream bytes").unwrap();
    run(Command::new("ntfscp")
        .args(["-f", "-N", "Zone.Identifier"])
        .arg(&img)
        .arg(&stream)
        .arg("/sub/streams.txt"));
    img
}

/// The `$STANDARD_INFORMATION` attribute bits `ntfsinfo -F` prints
/// ("File attributes: NAMES (0x...)"; 0 when it prints none).
fn ntfsinfo_attributes(info: &str) -> u32 {
    info.lines()
        .find(|l| l.trim_start().starts_with("File attributes:"))
        .and_then(|l| l.rsplit_once("(0x"))
        .map_or(0, |(_, hex)| {
            u32::from_str_radix(hex.trim_end_matches(')').trim(), 16).unwrap()
        })
}

fn mount(img: &Path) -> NtfsTree {
    let device: Arc<dyn BlockDevice> = Arc::new(RawFile::open(img).unwrap());
    NtfsTree::mount(device).unwrap()
}

fn read(tree: &dyn FileTree, path: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = tree
        .read_at(&TreePath::parse(path), offset, &mut buf)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    buf.truncate(n);
    buf
}

#[test]
fn label_times_attributes_streams_and_sparse_data() {
    let tmp = tempfile::tempdir().unwrap();
    let img = build(tmp.path());
    let device = RawFile::open(&img).unwrap();
    assert_eq!(
        details(&device, FsKind::Ntfs).unwrap().label.as_deref(),
        Some("Données Vol")
    );
    let tree = mount(&img);

    let plain = tree.lookup(&TreePath::parse("/plain.txt")).unwrap();
    // 2019-05-06T07:08:09.5Z, kept to 100 ns by wimlib.
    assert_eq!(
        plain.modified,
        Some(Timestamp::new(1_557_126_489, 500_000_000))
    );
    let info = tool("ntfsinfo", &["-F", "/plain.txt", path_str(&img)]);
    assert!(
        info.contains("File Altered Time:\t Mon May  6 07:08:09 2019 UTC"),
        "{info}"
    );
    assert_eq!(plain.attributes, Some(ntfsinfo_attributes(&info)));
    assert!(plain.streams.is_empty());

    let streams = tree.lookup(&TreePath::parse("/sub/streams.txt")).unwrap();
    assert_eq!(streams.streams, ["Zone.Identifier"]);
    assert_eq!(streams.size, 11, "the unnamed stream's size");
    assert_eq!(read(&tree, "/sub/streams.txt", 0, 64), b"main stream");
    let listed = tree.read_dir(&TreePath::parse("/sub")).unwrap();
    assert_eq!(
        listed.len(),
        1,
        "a stream is not a directory entry: {listed:?}"
    );
    assert_eq!(listed[0].1, streams);

    let sparse = tree.lookup(&TreePath::parse("/sparse.bin")).unwrap();
    assert_eq!(sparse.size, 3 << 20);
    assert_eq!(sparse.attributes.map(|a| a & SPARSE), Some(SPARSE));
    let info = tool("ntfsinfo", &["-F", "/sparse.bin", path_str(&img)]);
    assert_eq!(sparse.attributes, Some(ntfsinfo_attributes(&info)));
    let around = read(&tree, "/sparse.bin", 2_500_000 - 100, 200);
    assert_eq!(&around[..100], &[0u8; 100][..]);
    assert_eq!(&around[100..106], b"island");
    assert!(around[106..].iter().all(|&b| b == 0));
    assert_eq!(read(&tree, "/sparse.bin", 0, 4096), vec![0u8; 4096]);
}

/// Sets the compressed flag on the unnamed `$DATA` attribute of the file
/// record naming `name`.
fn mark_compressed(img: &Path, name: &str) {
    let mut bytes = fs::read(img).unwrap();
    let needle: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut marked = 0;
    for record in (0..bytes.len()).step_by(1024) {
        let r = &bytes[record..record + 1024];
        if &r[..4] != b"FILE" || !r.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        let mut at = usize::from(u16::from_le_bytes([r[0x14], r[0x15]]));
        while at + 16 < 1024 {
            let ty = u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
            let len = u32::from_le_bytes(r[at + 4..at + 8].try_into().unwrap()) as usize;
            if ty == 0xFFFF_FFFF || len == 0 {
                break;
            }
            if ty == 0x80 && r[at + 9] == 0 {
                bytes[record + at + 0x0C] |= 0x01;
                marked += 1;
                break;
            }
            at += len;
        }
    }
    assert_eq!(marked, 1, "one file record for {name}");
    fs::write(img, bytes).unwrap();
}

#[test]
fn compressed_data_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let img = build(tmp.path());
    mark_compressed(&img, "plain.txt");
    let tree = mount(&img);
    let mut buf = [0u8; 16];
    match tree.read_at(&TreePath::parse("/plain.txt"), 0, &mut buf) {
        Err(TreeError::Unsupported { path, what }) => {
            assert_eq!(path, "/plain.txt");
            assert!(what.contains("compressed"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&tree, "/sub/streams.txt", 0, 64), b"main stream");
}
