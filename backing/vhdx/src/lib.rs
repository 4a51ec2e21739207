//! VHDX images (MS-VHDX v1.0): a hardened read-only reader with in-memory log
//! replay and differencing chains, and a writer for fixed, dynamic and
//! differencing images.
//!
//! The reader parses through [`ReadAt`], so an image
//! is read the same from a host file ([`Vhdx::open`]) or from memory
//! ([`Vhdx::from_source`]); it implements
//! [`BlockDevice`]. Image bytes are untrusted:
//! every field is checked before it is used, a bad one is a [`VhdxError`]
//! naming the field and offset, and the image file is never written (a dirty
//! log is replayed in memory only).
//!
//! This crate must not know partitions or file systems: it only turns an
//! image file into sectors.
#![forbid(unsafe_code)]

mod bat;
mod error;
mod file;
mod format;
mod header;
mod log;
mod metadata;
mod parent;
mod reader;
mod writer;

use std::path::Path;

pub use bat::BatCounts;
pub use error::VhdxError;
pub use format::Guid;
pub use log::LogState;
pub use parent::ParentLocator;
pub use reader::{MAX_CHAIN_DEPTH, Vhdx, VhdxInfo};
pub use writer::{WriteError, WriteOptions, write_differencing, write_vhdx};

use vmbdev_block::{BlockDevice, RawFile, ReadAt};

/// Opens any disk image read-only, choosing the reader by signature: VHDX
/// when the file starts with `"vhdxfile"`, VHD when it holds the
/// `"conectix"` footer cookie at its end or at offset 0 (a malformed VHDX or
/// VHD is an error, never treated as raw), else a raw image with 512-byte
/// sectors.
///
/// This dispatch lives here because VHDX was the first format; it only
/// chooses a reader and could move to a crate of its own above the format
/// readers.
pub fn open_image(path: impl AsRef<Path>) -> Result<Box<dyn BlockDevice>, VhdxError> {
    let path = path.as_ref();
    let open_err = |source| VhdxError::Open {
        path: path.to_owned(),
        source,
    };
    let file = vmbdev_block::open_image_file(path).map_err(open_err)?;
    let mut ident = [0u8; 8];
    let is_vhdx =
        matches!(ReadAt::read_at(&file, 0, &mut ident), Ok(8)) && &ident == format::FILE_SIGNATURE;
    let is_vhd = !is_vhdx && vmbdev_vhd::has_vhd_cookie(&file);
    drop(file);
    if is_vhdx {
        Ok(Box::new(Vhdx::open(path)?))
    } else if is_vhd {
        Ok(Box::new(vmbdev_vhd::Vhd::open(path)?))
    } else {
        Ok(Box::new(RawFile::open(path)?))
    }
}
