//! The read-only file tree that vmbfs serves, and the normalized paths that
//! address it.

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link; its target is in [`Metadata::link_target`]. Links
    /// are reported, never followed.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix-domain socket.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

impl EntryKind {
    /// Whether entries of this kind have bytes to read.
    pub fn is_file(self) -> bool {
        self == Self::File
    }

    /// Whether entries of this kind can be listed.
    pub fn is_dir(self) -> bool {
        self == Self::Directory
    }

    /// The kind in words, with its article: "a symbolic link".
    pub fn description(self) -> &'static str {
        match self {
            Self::File => "a regular file",
            Self::Directory => "a directory",
            Self::Symlink => "a symbolic link",
            Self::Fifo => "a named pipe (FIFO)",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device node",
            Self::BlockDevice => "a block device node",
        }
    }
}

/// A moment as a file system records it: seconds and nanoseconds since
/// 1970-01-01 00:00:00 UTC. FAT stores local time without a zone; its
/// times are taken as UTC, as the tools that write it in tests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch (negative before it).
    pub seconds: i64,
    /// Nanoseconds within the second, below 1,000,000,000.
    pub nanoseconds: u32,
}

impl Timestamp {
    /// A timestamp, the nanoseconds folded into the seconds when they
    /// reach a whole second.
    pub fn new(seconds: i64, nanoseconds: u32) -> Self {
        let carry = i64::from(nanoseconds / 1_000_000_000);
        Self {
            seconds: seconds.saturating_add(carry),
            nanoseconds: nanoseconds % 1_000_000_000,
        }
    }

    /// The moment of a UTC calendar date and time; `None` when a field is
    /// out of range (February 30th, month 13, hour 24, ...).
    pub fn from_utc(
        year: i64,
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
        second: u32,
    ) -> Option<Self> {
        if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day)?;
        Some(Self::new(
            days * 86_400 + i64::from(hour * 3600 + minute * 60 + second),
            0,
        ))
    }

    /// The calendar date and time in UTC: (year, month, day, hour, minute,
    /// second).
    pub fn to_utc(self) -> (i64, u32, u32, u32, u32, u32) {
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// ISO 8601 in UTC, to the second, with nanoseconds when there are any:
/// `2024-02-29T13:05:09Z`, `2024-02-29T13:05:09.123456789Z`.
impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, mo, d, h, mi, s) = self.to_utc();
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")?;
        if self.nanoseconds != 0 {
            write!(f, ".{:09}", self.nanoseconds)?;
        }
        f.write_str("Z")
    }
}

/// The proleptic Gregorian date of a day count from 1970-01-01, by
/// 400-year eras (each exactly 146,097 days) starting on March 1 so the
/// leap day ends a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to a proleptic Gregorian date; `None` for a day
/// the month does not have.
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day == 0 || day > month_days[(month - 1) as usize] {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// What a lookup tells about an entry. Fields a file system does not keep
/// are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// What the entry is.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories; the target length for links).
    pub size: u64,
    /// Last modification of the contents.
    pub modified: Option<Timestamp>,
    /// Last access (FAT keeps only the date).
    pub accessed: Option<Timestamp>,
    /// Creation.
    pub created: Option<Timestamp>,
    /// Unix permission bits (`st_mode & 0o7777`: setuid, setgid, sticky,
    /// rwx for owner, group, others), where the file system keeps them
    /// (ext4); the type is [`Metadata::kind`].
    pub mode: Option<u32>,
    /// DOS/Windows attribute bits (read-only 0x1, hidden 0x2, system 0x4,
    /// directory 0x10, archive 0x20, ...), where the file system keeps them
    /// (FAT, NTFS).
    pub attributes: Option<u32>,
    /// Where a symbolic link points, as stored (never resolved); `None`
    /// for a link when the reader cannot decode its target.
    pub link_target: Option<String>,
    /// Names of alternate data streams (NTFS), listed but not served.
    pub streams: Vec<String>,
}

impl Metadata {
    /// An entry of `kind` and `size` with nothing else known.
    pub fn new(kind: EntryKind, size: u64) -> Self {
        Self {
            kind,
            size,
            modified: None,
            accessed: None,
            created: None,
            mode: None,
            attributes: None,
            link_target: None,
            streams: Vec::new(),
        }
    }

    /// A regular file of `size` bytes.
    pub fn file(size: u64) -> Self {
        Self::new(EntryKind::File, size)
    }

    /// A directory.
    pub fn directory() -> Self {
        Self::new(EntryKind::Directory, 0)
    }
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
    /// The entry exists but cannot be served: a symbolic link (never
    /// followed), a special file, or data stored in a way this reader
    /// does not decode (NTFS compression, encryption).
    #[error("{path}: {what}")]
    Unsupported {
        /// Path being accessed.
        path: String,
        /// What it is, in words.
        what: String,
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
    /// Bytes the tree holds in memory: copied straight to their
    /// destination, with no bounce buffer between.
    Bytes(&'a [u8]),
}

impl FileExtent<'_> {
    /// Bytes in the run.
    pub fn len(&self) -> u64 {
        match *self {
            FileExtent::Shared { len, .. }
            | FileExtent::Borrowed { len, .. }
            | FileExtent::Zero { len } => len,
            FileExtent::Bytes(bytes) => bytes.len() as u64,
        }
    }

    /// Whether the run is empty (end of file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::{Timestamp, TreePath};

    #[test]
    fn timestamps_print_as_utc_calendar_dates() {
        // Reference values from `date -u -d @SECONDS`.
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_211_909, "2024-02-29T13:05:09Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (315_532_800, "1980-01-01T00:00:00Z"),
        ];
        for (seconds, text) in cases {
            assert_eq!(Timestamp::new(seconds, 0).to_string(), text, "{seconds}");
        }
        for (seconds, _) in cases {
            let (y, mo, d, h, mi, s) = Timestamp::new(seconds, 0).to_utc();
            assert_eq!(
                Timestamp::from_utc(y, mo, d, h, mi, s),
                Some(Timestamp::new(seconds, 0))
            );
        }
        assert_eq!(Timestamp::from_utc(2023, 2, 29, 0, 0, 0), None);
        assert_eq!(Timestamp::from_utc(2023, 4, 31, 0, 0, 0), None);
        assert_eq!(
            Timestamp::new(0, 1_500_000_000).to_string(),
            "1970-01-01T00:00:01.500000000Z"
        );
    }

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
