//! Why a VHDX image was refused: one variant per check, each naming the
//! offending offset or value.

use std::path::PathBuf;

use crate::format::Guid;
use vmbdev_block::BlockError;

/// An error opening or validating a VHDX image.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// Reading the file failed (I/O error or short read).
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The file is smaller than the 1 MiB fixed header area.
    #[error("file is {len} bytes, smaller than the 1 MiB VHDX header area")]
    FileTooSmall {
        /// File length.
        len: u64,
    },
    /// The file identifier at offset 0 is not `"vhdxfile"`.
    #[error("bad file identifier at offset 0: {found:02x?}")]
    BadIdentifier {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// Neither header at 64 KiB nor at 128 KiB has a valid signature and checksum.
    #[error("no valid header at offset 0x10000 or 0x20000")]
    NoValidHeader,
    /// The current header's version is not 1.
    #[error("header at {offset:#x}: version {version} is not 1")]
    UnsupportedVersion {
        /// Header offset.
        offset: u64,
        /// Version found.
        version: u16,
    },
    /// The current header's log version is not 0.
    #[error("header at {offset:#x}: log version {version} is not 0")]
    UnsupportedLogVersion {
        /// Header offset.
        offset: u64,
        /// Version found.
        version: u16,
    },
    /// Log offset or length is not a MiB multiple, or the offset is below 1 MiB.
    #[error("log at {offset:#x} length {length:#x} is misaligned or inside the first MiB")]
    LogMisaligned {
        /// Log offset.
        offset: u64,
        /// Log length.
        length: u32,
    },
    /// The log extends past the end of the file.
    #[error("log at {offset:#x} length {length:#x} extends beyond end of file {file_len:#x}")]
    LogBeyondEof {
        /// Log offset.
        offset: u64,
        /// Log length.
        length: u32,
        /// File length.
        file_len: u64,
    },
    /// The log overlaps a region.
    #[error(
        "log at {log_offset:#x} length {log_length:#x} overlaps region {region} at {region_offset:#x}"
    )]
    LogOverlapsRegion {
        /// Log offset.
        log_offset: u64,
        /// Log length.
        log_length: u32,
        /// The region.
        region: Guid,
        /// Region offset.
        region_offset: u64,
    },
    /// The dirty log is larger than this reader replays.
    #[error("dirty log of {length:#x} bytes is larger than the {limit:#x}-byte replay limit")]
    LogTooLarge {
        /// Log length.
        length: u32,
        /// Limit.
        limit: u64,
    },
    /// A log descriptor is impossible (bad target or length).
    #[error(
        "log entry at log offset {entry_offset:#x}: impossible descriptor {index}: {reason} (file offset {file_offset:#x}, length {length:#x})"
    )]
    LogImpossibleDescriptor {
        /// Offset of the entry inside the log.
        entry_offset: u64,
        /// Descriptor index in the entry.
        index: u32,
        /// Target file offset.
        file_offset: u64,
        /// Length affected.
        length: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Replaying the log would need more memory than allowed.
    #[error(
        "log replay overlay would exceed {limit:#x} bytes (entry at log offset {entry_offset:#x})"
    )]
    LogOverlayTooLarge {
        /// Offset of the entry inside the log.
        entry_offset: u64,
        /// The limit.
        limit: u64,
    },
    /// Neither region table has a valid signature and checksum.
    #[error("no valid region table at offset 0x30000 or 0x40000")]
    NoValidRegionTable,
    /// The region table declares too many entries.
    #[error("region table at {offset:#x}: entry count {count} exceeds 2047")]
    RegionCountTooLarge {
        /// Table offset.
        offset: u64,
        /// Count found.
        count: u32,
    },
    /// Two region entries have the same GUID.
    #[error("region {guid} appears twice in the region table")]
    DuplicateRegion {
        /// Region GUID.
        guid: Guid,
    },
    /// A region is not MiB aligned, empty, or inside the first MiB.
    #[error(
        "region {guid} at {offset:#x} length {length:#x} is misaligned, empty or inside the first MiB"
    )]
    RegionMisaligned {
        /// Region GUID.
        guid: Guid,
        /// Region offset.
        offset: u64,
        /// Region length.
        length: u32,
    },
    /// A region extends past the end of the file.
    #[error(
        "region {guid} at {offset:#x} length {length:#x} extends beyond end of file {file_len:#x}"
    )]
    RegionBeyondEof {
        /// Region GUID.
        guid: Guid,
        /// Region offset.
        offset: u64,
        /// Region length.
        length: u32,
        /// File length.
        file_len: u64,
    },
    /// Two regions overlap.
    #[error("regions at {first_offset:#x} and {second_offset:#x} overlap")]
    RegionsOverlap {
        /// First region offset.
        first_offset: u64,
        /// Second region offset.
        second_offset: u64,
    },
    /// An unknown region is marked required.
    #[error("unknown region {guid} at {offset:#x} is marked required")]
    UnknownRequiredRegion {
        /// Region GUID.
        guid: Guid,
        /// Region offset.
        offset: u64,
    },
    /// The BAT or metadata region is missing.
    #[error("{name} region is missing from the region table")]
    MissingRegion {
        /// `"BAT"` or `"metadata"`.
        name: &'static str,
    },
    /// The metadata table signature is wrong.
    #[error("metadata table at {offset:#x} has a bad signature")]
    BadMetadataSignature {
        /// Table offset.
        offset: u64,
    },
    /// The metadata table declares too many entries.
    #[error("metadata table at {offset:#x}: entry count {count} exceeds 2047")]
    MetadataCountTooLarge {
        /// Table offset.
        offset: u64,
        /// Count found.
        count: u16,
    },
    /// Two metadata entries have the same item id.
    #[error("metadata item {guid} appears twice")]
    DuplicateMetadataItem {
        /// Item id.
        guid: Guid,
    },
    /// A metadata item lies outside the region, in the table, or is too long.
    #[error(
        "metadata item {guid} at region offset {offset:#x} length {length:#x} is outside the region (length {region_length:#x}) or the item area"
    )]
    MetadataItemOutOfRegion {
        /// Item id.
        guid: Guid,
        /// Offset relative to the region.
        offset: u32,
        /// Item length.
        length: u32,
        /// Region length.
        region_length: u32,
    },
    /// Two metadata items overlap.
    #[error("metadata items {first} and {second} overlap at region offset {offset:#x}")]
    MetadataItemsOverlap {
        /// First item.
        first: Guid,
        /// Second item.
        second: Guid,
        /// Offset of the second item.
        offset: u32,
    },
    /// An unknown metadata item is marked required.
    #[error("unknown metadata item {guid} is marked required")]
    UnknownRequiredMetadata {
        /// Item id.
        guid: Guid,
    },
    /// A required metadata item is missing.
    #[error("metadata item {name} is missing")]
    MissingMetadataItem {
        /// Item name.
        name: &'static str,
    },
    /// A metadata item has the wrong length for its type.
    #[error("metadata item {name} has length {length}, expected {expected}")]
    BadMetadataItemLength {
        /// Item name.
        name: &'static str,
        /// Length found.
        length: u32,
        /// Length expected.
        expected: u32,
    },
    /// Block size is not a power of two in 1–256 MiB.
    #[error("block size {block_size:#x} is not a power of two between 1 and 256 MiB")]
    BadBlockSize {
        /// Block size found.
        block_size: u32,
    },
    /// A sector size is not 512 or 4096.
    #[error("{which} sector size {size} is not 512 or 4096")]
    BadSectorSize {
        /// `"logical"` or `"physical"`.
        which: &'static str,
        /// Size found.
        size: u32,
    },
    /// The virtual disk size is 0.
    #[error("virtual disk size is 0")]
    DiskSizeZero,
    /// The virtual disk size exceeds 64 TiB.
    #[error("virtual disk size {size:#x} exceeds 64 TiB")]
    DiskSizeTooLarge {
        /// Size found.
        size: u64,
    },
    /// The virtual disk size is not a multiple of the logical sector size.
    #[error("virtual disk size {size:#x} is not a multiple of the {sector_size}-byte sector")]
    DiskSizeUnaligned {
        /// Size found.
        size: u64,
        /// Logical sector size.
        sector_size: u32,
    },
    /// The BAT region is smaller than the geometry needs.
    #[error(
        "BAT region of {region_length:#x} bytes holds fewer than the {needed_entries} entries the geometry needs"
    )]
    BatTooSmall {
        /// Entries needed.
        needed_entries: u64,
        /// BAT region length.
        region_length: u32,
    },
    /// A BAT entry has reserved bits set.
    #[error("BAT entry {index} ({entry:#018x}) has reserved bits set")]
    BatReservedBits {
        /// BAT index.
        index: u64,
        /// Raw entry.
        entry: u64,
    },
    /// A BAT entry has an invalid state.
    #[error("BAT entry {index} ({entry:#018x}) has invalid state {state}")]
    BatInvalidState {
        /// BAT index.
        index: u64,
        /// Raw entry.
        entry: u64,
        /// State found.
        state: u8,
    },
    /// An allocated block extends past the end of the file.
    #[error("BAT entry {index}: block at {offset:#x} extends beyond end of file {file_len:#x}")]
    BlockBeyondEof {
        /// BAT index.
        index: u64,
        /// Block file offset.
        offset: u64,
        /// File length.
        file_len: u64,
    },
    /// An allocated block lies at offset 0 or inside the first MiB.
    #[error("BAT entry {index}: block at {offset:#x} is inside the first MiB")]
    BlockInHeaderArea {
        /// BAT index.
        index: u64,
        /// Block file offset.
        offset: u64,
    },
    /// An allocated block overlaps the log, BAT or metadata.
    #[error("BAT entry {index}: block at {offset:#x} overlaps the {structure}")]
    BlockInsideStructure {
        /// BAT index.
        index: u64,
        /// Block file offset.
        offset: u64,
        /// `"log"`, `"BAT"`, `"metadata"` or another region.
        structure: &'static str,
    },
    /// Two allocated blocks share storage.
    #[error("BAT entries {first_index} and {second_index} overlap at file offset {offset:#x}")]
    BlocksOverlap {
        /// First BAT index.
        first_index: u64,
        /// Second BAT index.
        second_index: u64,
        /// Offset of the second block.
        offset: u64,
    },
    /// PARTIALLY_PRESENT in a disk without a parent.
    #[error("BAT entry {index} is PARTIALLY_PRESENT in a disk without a parent")]
    PartialWithoutParent {
        /// BAT index.
        index: u64,
    },
    /// PARTIALLY_PRESENT without a present sector bitmap.
    #[error(
        "BAT entry {index} is PARTIALLY_PRESENT but the sector bitmap of chunk {chunk} is not present"
    )]
    PartialWithoutBitmap {
        /// BAT index.
        index: u64,
        /// Chunk number.
        chunk: u64,
    },
    /// The parent locator item is missing from a differencing disk.
    #[error("differencing disk has no parent locator")]
    MissingParentLocator,
    /// The parent locator is malformed.
    #[error("parent locator: {reason} (at item offset {offset:#x})")]
    BadParentLocator {
        /// What is wrong.
        reason: &'static str,
        /// Offset inside the locator.
        offset: u64,
    },
    /// No candidate parent path exists.
    #[error("parent not found; tried {tried:?}")]
    ParentNotFound {
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// The parent's data write GUID differs from the child's parent_linkage.
    #[error("parent {path}: data_write_guid {found} does not match parent_linkage {expected}")]
    ParentLinkageMismatch {
        /// Parent path.
        path: PathBuf,
        /// parent_linkage.
        expected: Guid,
        /// Parent's data_write_guid.
        found: Guid,
    },
    /// The chain of parents is too deep.
    #[error("differencing chain deeper than {limit} at {path}")]
    ChainTooDeep {
        /// Depth limit.
        limit: usize,
        /// Image at which the limit was reached.
        path: PathBuf,
    },
    /// A parent refers back to an image already in the chain.
    #[error("differencing chain has a cycle at {path}")]
    ParentCycle {
        /// The repeated image.
        path: PathBuf,
    },
    /// Parent and child have different logical sector sizes.
    #[error("parent {path} has {parent}-byte sectors, child has {child}")]
    ParentSectorSizeMismatch {
        /// Parent path.
        path: PathBuf,
        /// Child logical sector size.
        child: u32,
        /// Parent logical sector size.
        parent: u32,
    },
    /// Opening a parent failed.
    #[error("parent {path}: {source}")]
    Parent {
        /// Parent path.
        path: PathBuf,
        /// Why.
        source: Box<VhdxError>,
    },
    /// A file could not be opened or inspected.
    #[error("{path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// [`open_image`](crate::open_image) found a VHD and the VHD reader
    /// refused it.
    #[error("VHD: {0}")]
    Vhd(#[from] vmbdev_vhd::VhdError),
}

impl From<VhdxError> for BlockError {
    fn from(e: VhdxError) -> Self {
        match e {
            VhdxError::Block(b) => b,
            other => BlockError::Corrupt(other.to_string()),
        }
    }
}
