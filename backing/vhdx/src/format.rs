//! On-disk VHDX structures and constants (MS-VHDX v1.0), kept apart from the
//! logic that validates and uses them.

use std::fmt;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One MiB, the alignment unit of regions, the log and payload blocks.
pub const MIB: u64 = 1 << 20;
/// Offset of the first header.
pub const HEADER1_OFFSET: u64 = 64 * 1024;
/// Offset of the second header.
pub const HEADER2_OFFSET: u64 = 128 * 1024;
/// Bytes covered by a header checksum.
pub const HEADER_SIZE: usize = 4096;
/// Offset of the first region table.
pub const REGION_TABLE1_OFFSET: u64 = 192 * 1024;
/// Offset of the second region table.
pub const REGION_TABLE2_OFFSET: u64 = 256 * 1024;
/// Size of a region table (all covered by its checksum).
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// Most region table entries allowed.
pub const MAX_REGION_ENTRIES: u32 = 2047;
/// Most metadata table entries allowed.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Size of the metadata table at the start of the metadata region.
pub const METADATA_TABLE_SIZE: usize = 64 * 1024;
/// Largest metadata item.
pub const MAX_METADATA_ITEM: u32 = 1 << 20;
/// Largest virtual disk.
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Smallest and largest payload block size.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// Largest payload block size.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Log sector size: entries, descriptors areas and data sectors are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;

/// File identifier signature.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Header signature.
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";
/// Region table signature.
pub const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// Metadata table signature.
pub const METADATA_SIGNATURE: &[u8; 8] = b"metadata";
/// Log entry signature.
pub const LOG_ENTRY_SIGNATURE: &[u8; 4] = b"loge";
/// Log zero descriptor signature.
pub const LOG_ZERO_SIGNATURE: &[u8; 4] = b"zero";
/// Log data descriptor signature.
pub const LOG_DESC_SIGNATURE: &[u8; 4] = b"desc";
/// Log data sector signature.
pub const LOG_DATA_SIGNATURE: &[u8; 4] = b"data";

/// A GUID stored in Windows mixed-endian byte order.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
)]
#[repr(transparent)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid([0; 16]);

    /// Builds a GUID from its textual fields (`d1-d2-d3-d4[0..2]-d4[2..8]`).
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Guid {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let hex: Vec<u8> = s
            .bytes()
            .filter(|c| *c != b'-' && *c != b'{' && *c != b'}')
            .collect();
        if hex.len() != 32 {
            return Err(());
        }
        let mut raw = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| ())?;
            raw[i] = u8::from_str_radix(text, 16).map_err(|_| ())?;
        }
        let d1 = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let d2 = u16::from_be_bytes([raw[4], raw[5]]);
        let d3 = u16::from_be_bytes([raw[6], raw[7]]);
        let mut d4 = [0u8; 8];
        d4.copy_from_slice(&raw[8..]);
        Ok(Guid::from_fields(d1, d2, d3, d4))
    }
}

/// BAT region GUID.
pub const BAT_REGION: Guid = Guid::from_fields(
    0x2dc27766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
/// Metadata region GUID.
pub const METADATA_REGION: Guid = Guid::from_fields(
    0x8b7ca206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);
/// File parameters metadata item.
pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xcaa16737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
/// Virtual disk size metadata item.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2fa54224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
/// Page 83 data (disk id) metadata item.
pub const PAGE83_DATA: Guid = Guid::from_fields(
    0xbeca12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
/// Logical sector size metadata item.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0x8141bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);
/// Physical sector size metadata item.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0xcda348c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
/// Parent locator metadata item.
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xa8d35f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);
/// The VHDX parent locator type.
pub const PARENT_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xb04aefb7,
    0xd19e,
    0x4a81,
    [0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13],
);

/// A VHDX header (the first 80 bytes of its 4 KiB).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Header {
    /// `"head"`.
    pub signature: [u8; 4],
    /// CRC-32C over 4 KiB with this field zeroed.
    pub checksum: U32,
    /// Higher sequence wins.
    pub sequence: U64,
    /// Changes on every file open for write.
    pub file_write_guid: Guid,
    /// Changes whenever user-visible data changes (children link to it).
    pub data_write_guid: Guid,
    /// Non-zero when the log holds un-replayed entries.
    pub log_guid: Guid,
    /// Must be 0.
    pub log_version: U16,
    /// Must be 1.
    pub version: U16,
    /// Log length in bytes (MiB multiple).
    pub log_length: U32,
    /// Log offset in bytes (MiB multiple).
    pub log_offset: U64,
}
const _: () = assert!(size_of::<Header>() == 80);

/// The region table header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RegionTableHeader {
    /// `"regi"`.
    pub signature: [u8; 4],
    /// CRC-32C over 64 KiB with this field zeroed.
    pub checksum: U32,
    /// Entries that follow.
    pub entry_count: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<RegionTableHeader>() == 16);

/// One region table entry.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RegionEntry {
    /// Region kind.
    pub guid: Guid,
    /// File offset (MiB multiple).
    pub file_offset: U64,
    /// Length (MiB multiple).
    pub length: U32,
    /// Bit 0: required.
    pub flags: U32,
}
const _: () = assert!(size_of::<RegionEntry>() == 32);

/// The metadata table header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MetadataTableHeader {
    /// `"metadata"`.
    pub signature: [u8; 8],
    /// Reserved.
    pub reserved: U16,
    /// Entries that follow (from offset 32).
    pub entry_count: U16,
    /// Reserved.
    pub reserved2: [u8; 20],
}
const _: () = assert!(size_of::<MetadataTableHeader>() == 32);

/// One metadata table entry.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MetadataEntry {
    /// Item kind.
    pub item_id: Guid,
    /// Offset relative to the metadata region (≥ 64 KiB).
    pub offset: U32,
    /// Length (≤ 1 MiB).
    pub length: U32,
    /// Bit 0 user, bit 1 virtual disk, bit 2 required.
    pub flags: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<MetadataEntry>() == 32);

/// Metadata entry flag: the item must be understood.
pub const METADATA_REQUIRED: u32 = 1 << 2;
/// Metadata entry flag: virtual-disk item.
pub const METADATA_VIRTUAL_DISK: u32 = 1 << 1;
/// Region entry flag: the region must be understood.
pub const REGION_REQUIRED: u32 = 1;

/// The file parameters item.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FileParameters {
    /// Payload block size.
    pub block_size: U32,
    /// Bit 0 leave blocks allocated, bit 1 has parent.
    pub flags: U32,
}
const _: () = assert!(size_of::<FileParameters>() == 8);

/// File parameters flag: the disk is differencing.
pub const HAS_PARENT: u32 = 1 << 1;
/// File parameters flag: blocks stay allocated (fixed disk).
pub const LEAVE_BLOCKS_ALLOCATED: u32 = 1;

/// The parent locator header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ParentLocatorHeader {
    /// Locator type.
    pub locator_type: Guid,
    /// Reserved.
    pub reserved: U16,
    /// Key/value entries that follow.
    pub key_value_count: U16,
}
const _: () = assert!(size_of::<ParentLocatorHeader>() == 20);

/// One parent locator key/value entry.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// Key offset relative to the item.
    pub key_offset: U32,
    /// Value offset relative to the item.
    pub value_offset: U32,
    /// Key length in bytes.
    pub key_length: U16,
    /// Value length in bytes.
    pub value_length: U16,
}
const _: () = assert!(size_of::<ParentLocatorEntry>() == 12);

/// A log entry header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LogEntryHeader {
    /// `"loge"`.
    pub signature: [u8; 4],
    /// CRC-32C over the entry with this field zeroed.
    pub checksum: U32,
    /// Entry length (4 KiB multiple).
    pub entry_length: U32,
    /// Log offset of the oldest entry of the active sequence.
    pub tail: U32,
    /// Entry sequence number.
    pub sequence: U64,
    /// Descriptors that follow.
    pub descriptor_count: U32,
    /// Reserved.
    pub reserved: U32,
    /// Must equal the header's log GUID.
    pub log_guid: Guid,
    /// File size known flushed.
    pub flushed_file_offset: U64,
    /// File size after the entry is applied.
    pub last_file_offset: U64,
}
const _: () = assert!(size_of::<LogEntryHeader>() == 64);

/// A log descriptor (zero or data; the meaning of the middle fields depends
/// on the signature).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LogDescriptor {
    /// `"zero"` or `"desc"`.
    pub signature: [u8; 4],
    /// Data: trailing 4 bytes of the sector; zero: reserved.
    pub trailing_bytes: [u8; 4],
    /// Data: leading 8 bytes of the sector; zero: length (u64).
    pub leading_bytes: [u8; 8],
    /// Target file offset.
    pub file_offset: U64,
    /// Must equal the entry's sequence.
    pub sequence: U64,
}
const _: () = assert!(size_of::<LogDescriptor>() == 32);

/// BAT entry states.
pub mod bat_state {
    /// Payload: not present (differencing: read the parent).
    pub const NOT_PRESENT: u8 = 0;
    /// Payload: undefined contents.
    pub const UNDEFINED: u8 = 1;
    /// Payload: zeros.
    pub const ZERO: u8 = 2;
    /// Payload: unmapped (trimmed).
    pub const UNMAPPED: u8 = 3;
    /// Payload: stored in the file; sector bitmap: present.
    pub const FULLY_PRESENT: u8 = 6;
    /// Payload: some sectors here, some in the parent.
    pub const PARTIALLY_PRESENT: u8 = 7;
}

/// Mask of the reserved bits 3–19 of a BAT entry.
pub const BAT_RESERVED_MASK: u64 = 0x000F_FFF8;

/// CRC-32C of `bytes` with the 4-byte checksum field at `field` taken as zero.
pub fn checksum_with_zeroed_field(bytes: &[u8], field: usize) -> u32 {
    let head = bytes.get(..field).unwrap_or(bytes);
    let crc = crc32c::crc32c(head);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, bytes.get(field + 4..).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trips_in_mixed_endian() {
        assert_eq!(
            BAT_REGION.to_string(),
            "2dc27766-f623-4200-9d64-115e9bfd4a08"
        );
        assert_eq!(&BAT_REGION.0[..4], &[0x66, 0x77, 0xc2, 0x2d]);
        let parsed: Guid = "{8B7CA206-4790-4B9A-B8FE-575F050F886E}".parse().unwrap();
        assert_eq!(parsed, METADATA_REGION);
        assert!("not-a-guid".parse::<Guid>().is_err());
    }
}
