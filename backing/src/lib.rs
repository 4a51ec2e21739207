//! What the devices serve: block devices and file trees.
//!
//! This crate owns everything below the device state machines:
//!
//! - [`BlockDevice`]: positional sector reads, implemented by a raw image
//!   file ([`RawFile`]) and a VHDX image.
//! - [`FileTree`]: the read-only file tree that vmbfs serves, addressed by a
//!   normalized [`TreePath`].
//! - [`partition`]: GPT and MBR tables and bounded partition views;
//!   [`fs`]: FAT, NTFS and ext4 mounted as file trees; [`open_tree`] picks
//!   the partition to serve; [`trees`]: host-directory and in-memory trees;
//!   [`pack`]: a directory tree packed into a FAT32 partition of a VHDX.
//!
//! Image bytes are untrusted: a hostile image yields an error naming what is
//! wrong and where, never a panic, an abort or an unbounded allocation.
#![forbid(unsafe_code)]

mod block;
pub mod fs;
pub mod pack;
pub mod partition;
mod tree;
pub mod trees;
pub mod vhdx;

pub use block::{BlockDevice, BlockError, RawFile, check_request, read_exact_at};
pub use fs::{OpenTreeError, open_tree};
pub use pack::{PackError, PackOptions, PackReport, pack_directory, pack_tree};
pub use partition::{PartitionDevice, PartitionInfo, list_partitions};
pub use tree::{EntryKind, FileTree, Metadata, TreeError, TreePath};
pub use trees::{HostDirTree, MemoryTree};
pub use vhdx::{Vhdx, VhdxError, open_image};
