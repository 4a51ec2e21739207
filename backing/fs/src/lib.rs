//! File systems on a partition, mounted read-only as [`FileTree`]s, and the
//! trees vmbfs serves.
//!
//! This crate owns:
//!
//! - [`FileTree`] and [`TreePath`]: the read-only tree contract (lookups by
//!   normalized path, positional reads);
//! - the readers: FAT12/16/32 ([`FatTree`], our own), NTFS ([`NtfsTree`],
//!   the `ntfs` crate) and ext4 ([`Ext4Tree`], the `ext4-view` crate), with
//!   [`detect`], [`details`] (label, size) and [`open_tree`], which picks the
//!   partition to serve;
//! - [`trees`]: a confined host directory and an in-memory tree.
//!
//! Image bytes are untrusted. Crate-backed file systems are wrapped so a
//! hostile image cannot take the host down: boot sectors and superblocks
//! are validated against the partition size before a crate sees them, crate
//! calls run under `catch_unwind` (a panic becomes [`TreeError::Corrupt`]),
//! file data is read at an offset in bounded chunks, and non-`Send` file
//! systems live on a thread of their own behind a channel.
//!
//! This crate must not parse image formats or partition tables itself (it
//! reads through `vmbdev-block` and `vmbdev-partition`) and never writes.
#![forbid(unsafe_code)]

mod codepage;
mod detect;
mod ext4;
mod fat;
pub mod fat_format;
mod label;
mod ntfs;
mod open;
mod tree;
pub mod trees;
mod worker;

pub use codepage::{CodePage, UnknownCodePage};
pub use detect::{FsKind, detect};
pub use ext4::Ext4Tree;
pub use fat::FatTree;
pub use fat_format::FatType;
pub use label::{FsDetails, FsUsage, details, details_with, usage};
pub use ntfs::NtfsTree;
pub use open::{
    MountOptions, OpenTreeError, PartitionSummary, mount, mount_with, open_tree, open_tree_with,
    survey,
};
pub use tree::{EntryKind, FileExtent, FileTree, Metadata, Timestamp, TreeError, TreePath};
pub use trees::{HostDirTree, MemoryTree, MemoryTreeBuilder};

use open::{contain_panic, names_equal_ignore_case};
