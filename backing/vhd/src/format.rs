//! On-disk VHD structures and constants (Microsoft's Virtual Hard Disk Image
//! Format Specification, version 1.0), kept apart from the logic that
//! validates and uses them. Every integer is big-endian.

use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The sector size of every VHD: offsets in the BAT and the geometry count
/// 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Size of the footer (and of its copy at offset 0 of dynamic disks).
pub const FOOTER_SIZE: usize = 512;
/// Size of the dynamic disk header.
pub const DYNAMIC_HEADER_SIZE: usize = 1024;
/// Footer cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// Dynamic header cookie.
pub const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// The only major version defined (1.0, stored as 0x0001_0000); minor
/// versions are accepted.
pub const VERSION_MAJOR: u16 = 1;
/// `data_offset` of a fixed disk's footer and of the dynamic header: "none".
pub const NO_OFFSET: u64 = u64::MAX;
/// A BAT entry for a block that is not allocated.
pub const UNALLOCATED: u32 = u32::MAX;
/// Number of parent locator entries in the dynamic header.
pub const PARENT_LOCATORS: usize = 8;
/// Bytes of the parent's UTF-16BE name field.
pub const PARENT_NAME_SIZE: usize = 512;

/// Disk type codes of the footer.
pub mod disk_type {
    /// Fixed: the disk's bytes, then the footer.
    pub const FIXED: u32 = 2;
    /// Dynamic: sparse blocks located through the BAT.
    pub const DYNAMIC: u32 = 3;
    /// Differencing: sparse blocks over a parent image.
    pub const DIFFERENCING: u32 = 4;
}

/// Parent locator platform codes.
pub mod platform {
    /// An unused locator entry.
    pub const NONE: [u8; 4] = [0; 4];
    /// Relative Windows path in UTF-16LE.
    pub const W2RU: [u8; 4] = *b"W2ru";
    /// Absolute Windows path in UTF-16LE.
    pub const W2KU: [u8; 4] = *b"W2ku";
    /// Deprecated relative Windows path (ANSI); recognised, not resolved.
    pub const WI2R: [u8; 4] = *b"Wi2r";
    /// Deprecated absolute Windows path (ANSI); recognised, not resolved.
    pub const WI2K: [u8; 4] = *b"Wi2k";
    /// Mac OS alias record; recognised, not resolved.
    pub const MAC: [u8; 4] = *b"Mac ";
    /// Mac OS X `file://` URL in UTF-8.
    pub const MACX: [u8; 4] = *b"MacX";
}

/// The 512-byte footer at the end of every VHD.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Footer {
    /// `"conectix"`.
    pub cookie: [u8; 8],
    /// Feature flags (bit 1 "reserved", always set by writers).
    pub features: U32,
    /// Format version, major in the high 16 bits.
    pub version: U32,
    /// Offset of the dynamic header; all ones for fixed disks.
    pub data_offset: U64,
    /// Seconds since 2000-01-01 00:00:00 UTC when the image was created.
    pub timestamp: U32,
    /// Four-character code of the program that created the image.
    pub creator_app: [u8; 4],
    /// That program's version.
    pub creator_version: U32,
    /// Four-character code of the host OS (`"Wi2k"`, `"Mac "`).
    pub creator_host_os: [u8; 4],
    /// Size at creation in bytes.
    pub original_size: U64,
    /// Current size in bytes: the size this reader exposes.
    pub current_size: U64,
    /// Cylinders of the CHS geometry.
    pub cylinders: U16,
    /// Heads of the CHS geometry.
    pub heads: u8,
    /// Sectors per track of the CHS geometry.
    pub sectors_per_track: u8,
    /// Fixed, dynamic or differencing.
    pub disk_type: U32,
    /// One's complement of the byte sum of the footer without this field.
    pub checksum: U32,
    /// Identity of the image (what a child's parent unique id names).
    pub unique_id: [u8; 16],
    /// Whether the image holds a saved state.
    pub saved_state: u8,
    /// Zeros.
    pub reserved: [u8; 427],
}

/// Offset of the checksum field in the footer.
pub const FOOTER_CHECKSUM_AT: usize = 64;

/// One parent locator entry of the dynamic header.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// Platform code (see [`platform`]).
    pub platform_code: [u8; 4],
    /// Sectors reserved for the locator data.
    pub platform_data_space: U32,
    /// Bytes of locator data.
    pub platform_data_length: U32,
    /// Zero.
    pub reserved: U32,
    /// File offset of the locator data.
    pub platform_data_offset: U64,
}

/// The 1024-byte header of dynamic and differencing disks.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DynamicHeader {
    /// `"cxsparse"`.
    pub cookie: [u8; 8],
    /// Unused: all ones.
    pub data_offset: U64,
    /// File offset of the BAT.
    pub table_offset: U64,
    /// Header version, major in the high 16 bits.
    pub header_version: U32,
    /// BAT entries.
    pub max_table_entries: U32,
    /// Bytes of data per block (a power of two; 2 MiB by default).
    pub block_size: U32,
    /// One's complement of the byte sum of the header without this field.
    pub checksum: U32,
    /// The parent's footer unique id (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// The parent's modification time (differencing disks).
    pub parent_timestamp: U32,
    /// Zero.
    pub reserved1: U32,
    /// The parent's file name, UTF-16BE, NUL padded.
    pub parent_name: [u8; PARENT_NAME_SIZE],
    /// Where to find the parent.
    pub parent_locators: [ParentLocatorEntry; PARENT_LOCATORS],
    /// Zeros.
    pub reserved2: [u8; 256],
}

/// Offset of the checksum field in the dynamic header.
pub const HEADER_CHECKSUM_AT: usize = 36;

const _: () = assert!(size_of::<Footer>() == FOOTER_SIZE);
const _: () = assert!(size_of::<DynamicHeader>() == DYNAMIC_HEADER_SIZE);

/// The VHD checksum of `bytes`: the one's complement of the sum of every
/// byte, with the four checksum bytes at `checksum_at` counted as zero.
pub fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}
