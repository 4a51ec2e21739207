//! The read-only file tree that vmbfs serves, and the normalized paths that
//! address it.

/// Whether a tree entry is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

/// What a lookup tells about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// An error from a [`FileTree`].
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// No entry at this path.
    #[error("{0}: not found")]
    NotFound(String),
    /// A file was needed but the path names a directory.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// A directory was needed but the path names a file.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// The backing store failed.
    #[error("{path}: I/O error: {message}")]
    Io {
        /// Path being accessed.
        path: String,
        /// What failed.
        message: String,
    },
    /// The file system on the image is damaged.
    #[error("corrupt file system: {0}")]
    Corrupt(String),
}

/// A path inside a [`FileTree`], normalized: no empty, `.` or `..`
/// components. The root is the empty path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TreePath {
    components: Vec<String>,
}

impl TreePath {
    /// The root directory.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses a path with `/` or `\` separators. Empty and `.` components
    /// are dropped; `..` removes the previous component and stays at the
    /// root when there is none, so a path can never leave the tree.
    pub fn parse(path: &str) -> Self {
        let mut components: Vec<String> = Vec::new();
        for part in path.split(['/', '\\']) {
            match part {
                "" | "." => {}
                ".." => {
                    components.pop();
                }
                name => components.push(name.to_owned()),
            }
        }
        Self { components }
    }

    /// The components from the root down.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &str) -> Self {
        let mut components = self.components.clone();
        components.push(name.to_owned());
        Self { components }
    }
}

impl std::fmt::Display for TreePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// A read-only tree of files and directories.
///
/// Calls may block on I/O; async callers run them on a blocking pool so one
/// slow read does not stall other channels. Implementations are shared
/// between threads.
pub trait FileTree: Send + Sync {
    /// Looks up the entry at `path`.
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError>;

    /// Reads file bytes at `offset` into `buf`; returns how many were read,
    /// fewer than `buf.len()` only at end of file (0 at or past it).
    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError>;

    /// Lists a directory: each entry's name and metadata, in a stable order.
    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError>;

    /// Where the file's bytes at `offset` live, for a reader that moves
    /// them to their destination without a copy: the first run of at most
    /// `len` bytes (`None`: the tree cannot say; read with
    /// [`read_at`](Self::read_at), which is the default). A run shorter
    /// than asked ends at a change of place or at end of file (length 0 at
    /// or past it).
    fn locate(
        &self,
        path: &TreePath,
        offset: u64,
        len: u64,
    ) -> Result<Option<FileExtent<'_>>, TreeError> {
        let _ = (path, offset, len);
        Ok(None)
    }
}

/// Where a run of a file's bytes lives, from [`FileTree::locate`].
#[derive(Debug)]
pub enum FileExtent<'a> {
    /// `len` bytes of a host file at byte `offset`, the file shared with
    /// the tree's own handle cache.
    Shared {
        /// The open host file.
        file: std::sync::Arc<std::fs::File>,
        /// Byte offset in it.
        offset: u64,
        /// Bytes in the run.
        len: u64,
    },
    /// `len` bytes of a file the tree holds open (for example the image
    /// file under a file system) at byte `offset`.
    Borrowed {
        /// The open file.
        fd: std::os::fd::BorrowedFd<'a>,
        /// Byte offset in it.
        offset: u64,
        /// Bytes in the run.
        len: u64,
    },
    /// `len` bytes that read as zeros (a hole).
    Zero {
        /// Bytes in the run.
        len: u64,
    },
}

impl FileExtent<'_> {
    /// Bytes in the run.
    pub fn len(&self) -> u64 {
        match *self {
            FileExtent::Shared { len, .. }
            | FileExtent::Borrowed { len, .. }
            | FileExtent::Zero { len } => len,
        }
    }

    /// Whether the run is empty (end of file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::TreePath;

    #[test]
    fn parse_normalizes_separators_dots_and_root_escape() {
        assert_eq!(
            TreePath::parse("\\EFI\\BOOT\\x.efi").components(),
            ["EFI", "BOOT", "x.efi"]
        );
        assert_eq!(TreePath::parse("a//b/./c/..").components(), ["a", "b"]);
        assert!(TreePath::parse("../../..").is_root());
        assert_eq!(
            TreePath::parse("/../etc/passwd").components(),
            ["etc", "passwd"]
        );
        assert!(TreePath::parse("").is_root());
        assert_eq!(TreePath::parse("a/b").to_string(), "/a/b");
    }
}
