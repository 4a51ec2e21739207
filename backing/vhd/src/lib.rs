//! VHD images (Virtual PC / Hyper-V "Virtual Hard Disk Image Format
//! Specification" 1.0): a hardened read-only reader for fixed, dynamic and
//! differencing disks.
//!
//! The reader parses through [`ReadAt`](vmbdev_block::ReadAt), so an image
//! is read the same from a host file ([`Vhd::open`]) or from memory
//! ([`Vhd::from_source`]), and implements
//! [`BlockDevice`](vmbdev_block::BlockDevice). Image bytes are untrusted:
//! every field is checked before it is used and a bad one is a [`VhdError`]
//! naming the structure, field and offset. The file is never written.
//!
//! This crate must not know partitions or file systems: it only turns an
//! image file into sectors.
//!
//! # Format facts
//!
//! All integers are big-endian; checksums are the one's complement of the
//! byte sum of the structure with its checksum field counted as zero.
//!
//! | structure | where | size | checked |
//! |---|---|---|---|
//! | footer | last 512 bytes | 512 | `"conectix"`, checksum @64, version 1.x @12, disk type @60 (2 fixed, 3 dynamic, 4 differencing), current size @48 |
//! | footer copy | offset 0 (dynamic, differencing) | 512 | same checks, and byte-equal to the footer |
//! | dynamic header | footer data offset @16 | 1024 | `"cxsparse"`, checksum @36, version 1.x @24, BAT offset @16, entries @28, block size @32, parent id @40, name @64 (UTF-16BE), 8 locators @576 |
//! | BAT | header table offset | 4 × entries | u32 sector of each block's bitmap; `0xFFFFFFFF` unallocated |
//! | block | BAT entry × 512 | bitmap + block size | bitmap: one bit per sector, bit 7 of byte 0 first, rounded up to 512 bytes; then the data |
//!
//! Parent locators (24 bytes: platform code, data space, data length,
//! reserved, data offset u64): `W2ru` (relative Windows path, UTF-16LE) and
//! `W2ku` (absolute, UTF-16LE), the deprecated ANSI `Wi2r`/`Wi2k`, `MacX` (a
//! `file://` URL, UTF-8); `Mac ` alias records are recognised and skipped.
//!
//! # Rules this reader follows
//!
//! - **Size**: the footer's current size, never the CHS geometry (what
//!   Hyper-V does). qemu-img without `force_size` rounds the size up to a
//!   whole CHS geometry and stores that product as the current size, so the
//!   two agree; with `force_size=on` it stores the requested size, writes
//!   the creator `"qem2"` and the geometry only approximates it. qemu itself
//!   reads the current size only for some creators (`"win "`, `"qem2"`,
//!   `"d2v "`, `"CTXS"`) or a maximal geometry and the CHS product
//!   otherwise; for a fixed disk it exposes the whole file, footer sector
//!   included. Images by other tools whose current size disagrees with
//!   their geometry therefore read larger or smaller here than in qemu.
//! - **Sector bitmaps**: in a differencing disk a set bit means the sector
//!   is in this file, a clear bit means the parent's. In a dynamic disk a
//!   clear bit means the sector was never written and reads as zeros. qemu
//!   ignores the bitmap of dynamic disks (it reads an allocated block's data
//!   whatever the bitmap says, and sets every bit when it allocates one), so
//!   on qemu's images the two readings agree.
//! - **Parents**: a differencing disk's parent is a VHD found through the
//!   relative locators (against the child's directory), then the absolute
//!   ones, then the parent's file name from the header beside the child. Its
//!   footer unique id must equal the child's parent unique id. The chain is
//!   at most [`MAX_CHAIN_DEPTH`] images and may not revisit an image. The
//!   parent time stamp is not compared (writers disagree on it). Reads past
//!   the parent's size are zeros.
//!
//! # Reject list
//!
//! Each is its own [`VhdError`] variant:
//!
//! - file shorter than a footer, or than footer copy + header + footer for
//!   a dynamic disk ([`VhdError::FileTooSmall`]);
//! - a bad cookie in the footer, its copy or the dynamic header
//!   ([`VhdError::BadCookie`]); a bad checksum in any of them
//!   ([`VhdError::BadChecksum`]); a major version other than 1
//!   ([`VhdError::UnsupportedVersion`]); an unknown disk type
//!   ([`VhdError::BadDiskType`]); a footer copy that differs from the
//!   footer ([`VhdError::FooterCopyMismatch`]);
//! - a current size of zero or not a multiple of 512 ([`VhdError::BadSize`]),
//!   over [`MAX_SPARSE_SIZE`] for a sparse disk or overflowing with the
//!   footer ([`VhdError::SizeTooLarge`]); a fixed disk whose file is shorter
//!   than its size plus the footer ([`VhdError::FixedTruncated`]);
//! - a dynamic header offset unset, inside the footer copy or past the
//!   footer ([`VhdError::BadHeaderOffset`]);
//! - a block size of zero, not a power of two, or outside 512 B..=256 MiB
//!   ([`VhdError::BadBlockSize`]);
//! - fewer BAT entries than the disk needs ([`VhdError::TableTooSmall`]) or
//!   more than [`MAX_TABLE_ENTRIES`] ([`VhdError::TableTooLarge`]);
//! - a BAT or locator data outside the file's metadata area
//!   ([`VhdError::OutsideFile`]); header, BAT and locator data sharing bytes
//!   ([`VhdError::MetadataOverlap`]);
//! - an allocated block reaching past the footer
//!   ([`VhdError::BlockBeyondEof`]), overlapping the footer copy, the
//!   header, the BAT or locator data ([`VhdError::BlockOverlapsMetadata`]),
//!   or sharing bytes with another block ([`VhdError::BlocksOverlap`]);
//! - locator data over 64 KiB, of odd length for UTF-16, or not decodable
//!   ([`VhdError::BadParentLocator`]);
//! - no parent at any located path ([`VhdError::ParentNotFound`]), a parent
//!   with another unique id ([`VhdError::ParentIdMismatch`]), a chain that
//!   revisits an image ([`VhdError::ParentCycle`]) or is deeper than
//!   [`MAX_CHAIN_DEPTH`] ([`VhdError::ChainTooDeep`]); any error of a parent
//!   is wrapped in [`VhdError::Parent`].
//!
//! Short reads of the underlying file surface as errors, never as zeros.
#![forbid(unsafe_code)]

mod error;
mod format;
mod parent;
mod reader;

pub use error::VhdError;
pub use format::{FOOTER_COOKIE, FOOTER_SIZE};
pub use parent::ParentLocator;
pub use reader::{
    Chs, DiskType, MAX_BLOCK_SIZE, MAX_CHAIN_DEPTH, MAX_SPARSE_SIZE, MAX_TABLE_ENTRIES,
    MIN_BLOCK_SIZE, Vhd, VhdInfo,
};

/// Whether `file` holds a VHD footer cookie at its end or at offset 0 (the
/// copy of a dynamic disk): what a caller checks before choosing this reader.
pub fn has_vhd_cookie(file: &dyn vmbdev_block::ReadAt) -> bool {
    let len = file.len().unwrap_or(0);
    let cookie_at = |offset: u64| {
        let mut found = [0u8; 8];
        matches!(file.read_at(offset, &mut found), Ok(8)) && &found == FOOTER_COOKIE
    };
    (len >= FOOTER_SIZE as u64 && cookie_at(len - FOOTER_SIZE as u64)) || cookie_at(0)
}
