//! What the devices serve: block devices and file trees.
//!
//! This crate owns everything below the device state machines:
//!
//! - [`BlockDevice`]: positional sector reads, implemented by a raw image
//!   file ([`RawFile`]) and a VHDX image.
//! - [`FileTree`]: the read-only file tree that vmbfs serves, addressed by a
//!   normalized [`TreePath`].
//!
//! Image bytes are untrusted: a hostile image yields an error naming what is
//! wrong and where, never a panic, an abort or an unbounded allocation.
#![forbid(unsafe_code)]

mod block;
mod tree;
pub mod vhdx;

pub use block::{BlockDevice, BlockError, RawFile, check_request, read_exact_at};
pub use tree::{EntryKind, FileTree, Metadata, TreeError, TreePath};
pub use vhdx::{Vhdx, VhdxError, open_image};
