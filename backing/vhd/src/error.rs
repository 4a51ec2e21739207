//! Why a VHD image was refused: one variant per check, each naming the
//! structure, field, offset or value at fault.

use std::path::PathBuf;

use vmbdev_block::BlockError;

/// An error opening or validating a VHD image.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    /// Reading the file failed (I/O error or short read).
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The image file could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is too short to hold the structures its type needs.
    #[error("file is {len} bytes; a {what} needs at least {needed}")]
    FileTooSmall {
        /// File length.
        len: u64,
        /// What the bytes were needed for.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
    },
    /// A cookie is not the one the structure must start with.
    #[error("{structure} at offset {offset:#x}: cookie {found:02x?} is not {expected:?}")]
    BadCookie {
        /// `"footer"`, `"footer copy"` or `"dynamic header"`.
        structure: &'static str,
        /// File offset of the structure.
        offset: u64,
        /// The eight bytes found.
        found: [u8; 8],
        /// The cookie expected.
        expected: &'static str,
    },
    /// A checksum does not match the structure's bytes.
    #[error(
        "{structure} at offset {offset:#x}: checksum {stored:#010x}, computed {computed:#010x}"
    )]
    BadChecksum {
        /// `"footer"`, `"footer copy"` or `"dynamic header"`.
        structure: &'static str,
        /// File offset of the structure.
        offset: u64,
        /// Value in the checksum field.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// A version field has a major version other than 1.
    #[error("{structure} at offset {offset:#x}: version {version:#010x} is not 1.x")]
    UnsupportedVersion {
        /// `"footer"` or `"dynamic header"`.
        structure: &'static str,
        /// File offset of the structure.
        offset: u64,
        /// The version field.
        version: u32,
    },
    /// The footer's disk type is not fixed (2), dynamic (3) or differencing (4).
    #[error("footer at offset {offset:#x}: disk type {disk_type} is not 2, 3 or 4")]
    BadDiskType {
        /// File offset of the footer.
        offset: u64,
        /// The disk type field.
        disk_type: u32,
    },
    /// The footer copy at offset 0 of a dynamic disk differs from the footer.
    #[error("footer copy at offset 0 differs from the footer at offset {footer_offset:#x}")]
    FooterCopyMismatch {
        /// File offset of the footer.
        footer_offset: u64,
    },
    /// The current size is zero or not a multiple of 512.
    #[error("footer: current size {size:#x} is zero or not a multiple of 512")]
    BadSize {
        /// The current size field.
        size: u64,
    },
    /// The current size is larger than this reader accepts for the type.
    #[error("footer: current size {size:#x} exceeds the limit {limit:#x}")]
    SizeTooLarge {
        /// The current size field.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A fixed disk's file does not hold its current size plus the footer.
    #[error("fixed disk of {size:#x} bytes needs a file of {needed:#x} bytes, found {file_len:#x}")]
    FixedTruncated {
        /// Current size.
        size: u64,
        /// File length needed.
        needed: u64,
        /// File length.
        file_len: u64,
    },
    /// The footer's data offset (the dynamic header's place) is not valid.
    #[error("footer: dynamic header offset {offset:#x} is {reason}")]
    BadHeaderOffset {
        /// The data offset field.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The block size is zero, not a power of two, or outside 512 B..=256 MiB.
    #[error(
        "dynamic header at {offset:#x}: block size {block_size:#x} is not a power of two in 512 B..=256 MiB"
    )]
    BadBlockSize {
        /// File offset of the dynamic header.
        offset: u64,
        /// The block size field.
        block_size: u32,
    },
    /// The BAT has fewer entries than the disk has blocks.
    #[error("dynamic header at {offset:#x}: {entries} BAT entries, the disk needs {needed}")]
    TableTooSmall {
        /// File offset of the dynamic header.
        offset: u64,
        /// The max table entries field.
        entries: u32,
        /// Blocks the current size needs.
        needed: u64,
    },
    /// The BAT has more entries than this reader accepts.
    #[error("dynamic header at {offset:#x}: {entries} BAT entries exceed the limit {limit}")]
    TableTooLarge {
        /// File offset of the dynamic header.
        offset: u64,
        /// The max table entries field.
        entries: u32,
        /// The limit.
        limit: u32,
    },
    /// A metadata structure (BAT, locator data) lies outside the file's
    /// metadata area (after the footer copy, before the footer).
    #[error(
        "{what} at offset {offset:#x}, length {length:#x}, is outside the file (metadata ends at {limit:#x})"
    )]
    OutsideFile {
        /// What the structure is.
        what: &'static str,
        /// Its file offset.
        offset: u64,
        /// Its length.
        length: u64,
        /// Where the file's usable area ends.
        limit: u64,
    },
    /// Two metadata structures share bytes.
    #[error("{first} at offset {first_offset:#x} overlaps {second} at offset {second_offset:#x}")]
    MetadataOverlap {
        /// The first structure.
        first: &'static str,
        /// Its offset.
        first_offset: u64,
        /// The second structure.
        second: &'static str,
        /// Its offset.
        second_offset: u64,
    },
    /// An allocated block (bitmap plus data) reaches past the footer.
    #[error(
        "BAT entry {block}: block at offset {offset:#x} ends at {end:#x}, past the footer at {limit:#x}"
    )]
    BlockBeyondEof {
        /// Block number (BAT index).
        block: u64,
        /// File offset of the block's bitmap.
        offset: u64,
        /// Where the block ends.
        end: u64,
        /// Offset of the footer.
        limit: u64,
    },
    /// An allocated block overlaps the footer copy, the dynamic header, the
    /// BAT or parent locator data.
    #[error(
        "BAT entry {block}: block at offset {offset:#x} overlaps the {what} at {what_offset:#x}"
    )]
    BlockOverlapsMetadata {
        /// Block number.
        block: u64,
        /// File offset of the block's bitmap.
        offset: u64,
        /// The structure it overlaps.
        what: &'static str,
        /// That structure's offset.
        what_offset: u64,
    },
    /// Two allocated blocks share file bytes.
    #[error(
        "BAT entries {first} and {second} overlap: blocks at offsets {first_offset:#x} and {second_offset:#x}"
    )]
    BlocksOverlap {
        /// One block.
        first: u64,
        /// Its offset.
        first_offset: u64,
        /// The other block.
        second: u64,
        /// Its offset.
        second_offset: u64,
    },
    /// A parent locator entry is malformed.
    #[error("parent locator {index} ({platform:?}): {reason}")]
    BadParentLocator {
        /// Entry index (0–7).
        index: usize,
        /// Its platform code, as text.
        platform: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A differencing disk's parent was not found at any located path.
    #[error("parent image not found; tried {tried:?}")]
    ParentNotFound {
        /// Paths tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The parent's unique id is not the one the child names.
    #[error(
        "parent {path}: unique id {found:02x?} is not the child's parent unique id {expected:02x?}"
    )]
    ParentIdMismatch {
        /// The parent file.
        path: PathBuf,
        /// The child's parent unique id.
        expected: [u8; 16],
        /// The parent's footer unique id.
        found: [u8; 16],
    },
    /// Opening the parent failed.
    #[error("parent {path}: {source}")]
    Parent {
        /// The parent file.
        path: PathBuf,
        /// Why.
        source: Box<VhdError>,
    },
    /// The parent chain returns to an image already in it.
    #[error("parent chain returns to {path}")]
    ParentCycle {
        /// The image met twice.
        path: PathBuf,
    },
    /// The parent chain is deeper than the limit.
    #[error("parent chain deeper than {limit} images at {path}")]
    ChainTooDeep {
        /// Images allowed in a chain.
        limit: usize,
        /// The image past the limit.
        path: PathBuf,
    },
}
