//! The host-directory tree (confinement, symlinks, special files) and the
//! in-memory tree.

use std::os::unix::fs::symlink;

use vmbdev_fs::{EntryKind, FileTree, HostDirTree, MemoryTree, TreeError, TreePath};
use vmbdev_tests::images::*;
use vmbdev_tests::trees::*;

#[test]
fn host_dir_serves_the_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source_tree(&src, 11, 10, true);
    let tree = HostDirTree::open(&src).unwrap();
    assert!(assert_tree_matches(&tree, &src) > 10);
    assert_case_behaviour(&tree, false);
}

#[test]
fn host_dir_stays_inside_its_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
    std::fs::write(root.join("inside.txt"), b"inside").unwrap();
    symlink(tmp.path().join("secret"), root.join("link-out")).unwrap();
    symlink("../secret", root.join("sub/relative-out")).unwrap();
    symlink(tmp.path(), root.join("dir-out")).unwrap();
    symlink("inside.txt", root.join("link-in")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let tree = HostDirTree::open(&root).unwrap();

    // `..` never leaves the root: it is resolved inside the path.
    let mut buf = [0u8; 16];
    assert!(matches!(
        tree.read_at(&TreePath::parse("../secret"), 0, &mut buf),
        Err(TreeError::NotFound(_))
    ));
    // Symbolic links are refused wherever they point, and so are FIFOs.
    for name in [
        "link-out",
        "sub/relative-out",
        "dir-out/secret",
        "link-in",
        "fifo",
    ] {
        let path = TreePath::parse(name);
        assert!(
            matches!(tree.lookup(&path), Err(TreeError::NotFound(_))),
            "{name}"
        );
        assert!(tree.read_at(&path, 0, &mut buf).is_err(), "{name}");
    }
    assert!(tree.read_dir(&TreePath::parse("dir-out")).is_err());
    let names: Vec<String> = tree
        .read_dir(&TreePath::root())
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["inside.txt", "sub"]);
    assert_eq!(
        tree.read_at(&TreePath::parse("inside.txt"), 2, &mut buf)
            .unwrap(),
        4
    );
    assert_eq!(&buf[..4], b"side");
}

#[test]
fn memory_tree_builder() {
    let mut builder = MemoryTree::builder();
    builder
        .add_file("a/b/c.txt", b"hello".to_vec())
        .unwrap()
        .add_dir("empty")
        .unwrap()
        .add_file("top", Vec::new())
        .unwrap();
    assert!(builder.add_file("top/x", b"no".to_vec()).is_err());
    assert!(builder.add_file("a/b", b"no".to_vec()).is_err());
    let tree = builder.build();
    let root: Vec<(String, EntryKind)> = tree
        .read_dir(&TreePath::root())
        .unwrap()
        .into_iter()
        .map(|(n, m)| (n, m.kind))
        .collect();
    assert_eq!(
        root,
        [
            ("a".to_owned(), EntryKind::Directory),
            ("empty".to_owned(), EntryKind::Directory),
            ("top".to_owned(), EntryKind::File)
        ]
    );
    let path = TreePath::parse("a/b/c.txt");
    assert_eq!(tree.lookup(&path).unwrap().size, 5);
    let mut buf = [0u8; 8];
    assert_eq!(tree.read_at(&path, 1, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"ello");
    assert_eq!(tree.read_at(&path, 99, &mut buf).unwrap(), 0);
    assert!(matches!(
        tree.lookup(&TreePath::parse("A/b/c.txt")),
        Err(TreeError::NotFound(_))
    ));
    assert!(matches!(
        tree.read_at(&TreePath::parse("a"), 0, &mut buf),
        Err(TreeError::IsADirectory(_))
    ));
    assert!(matches!(
        tree.read_dir(&TreePath::parse("top")),
        Err(TreeError::NotADirectory(_))
    ));
}
