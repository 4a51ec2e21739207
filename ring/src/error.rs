//! The ring's error type: every rule a peer or caller can break, named.

use crate::gpa::GpaError;
use crate::memory::MemoryError;

/// An error opening, reading or writing a ring, naming the violated rule and
/// where (ring offset, field, value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring half with a control page but no data page.
    #[error("ring half of {pages} pages has no data page (1 control page + at least 1 data page)")]
    NoDataPages {
        /// Pages in the half, including the control page.
        pages: usize,
    },
    /// The data area does not fit a `u32` byte count.
    #[error("ring data area of {bytes:#x} bytes does not fit u32")]
    DataSizeTooLarge {
        /// Data area size in bytes.
        bytes: u64,
    },
    /// The downstream page offset does not split the GPADL into two halves
    /// of at least two pages each.
    #[error(
        "downstream ring page offset {offset} cannot split a {pages}-page GPADL into two halves of >= 2 pages"
    )]
    BadDownstreamOffset {
        /// The guest's downstream ring buffer page offset.
        offset: u32,
        /// Pages in the GPADL.
        pages: usize,
    },
    /// A shared index is not below the data size.
    #[error("{which} index {value:#x} is not below the ring data size {size:#x}")]
    IndexOutOfRange {
        /// Which index ("write" or "read").
        which: &'static str,
        /// The value loaded.
        value: u32,
        /// The ring data size.
        size: u32,
    },
    /// A shared index is not 8-byte aligned.
    #[error("{which} index {value:#x} is not 8-byte aligned")]
    IndexUnaligned {
        /// Which index ("write" or "read").
        which: &'static str,
        /// The value loaded.
        value: u32,
    },
    /// Bytes are available but fewer than a packet descriptor.
    #[error(
        "only {available} bytes available at ring offset {offset:#x}, fewer than a 16-byte descriptor"
    )]
    AvailableTooSmall {
        /// Bytes available.
        available: u32,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// `data_offset8 < 2`: the payload would start inside the descriptor.
    #[error("packet at ring offset {offset:#x}: data_offset8 {data_offset8} is below 2")]
    DataOffsetTooSmall {
        /// The field value.
        data_offset8: u16,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// `data_offset8 > length8`: the payload would start past the packet.
    #[error(
        "packet at ring offset {offset:#x}: data_offset8 {data_offset8} exceeds length8 {length8}"
    )]
    DataOffsetBeyondLength {
        /// The data offset field.
        data_offset8: u16,
        /// The length field.
        length8: u16,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// The packet plus its 8-byte trailer is longer than the bytes available.
    #[error(
        "packet at ring offset {offset:#x}: length8 {length8} (+8-byte trailer) exceeds the {available} bytes available"
    )]
    PacketBeyondAvailable {
        /// The length field.
        length8: u16,
        /// Bytes available.
        available: u32,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// Flag bits other than bit 0 (completion requested).
    #[error("packet at ring offset {offset:#x}: invalid flags {flags:#x}")]
    BadFlags {
        /// The flags field.
        flags: u16,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// A packet type other than 6, 7, 9 and 0xB.
    #[error("packet at ring offset {offset:#x}: invalid type {packet_type:#x}")]
    BadType {
        /// The type field.
        packet_type: u16,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// A GPA-direct or transfer-page packet whose header is shorter than 24
    /// bytes.
    #[error(
        "packet at ring offset {offset:#x}: type {packet_type:#x} needs data_offset8 >= 3, got {data_offset8}"
    )]
    ExtensionHeaderTooShort {
        /// The type field.
        packet_type: u16,
        /// The data offset field.
        data_offset8: u16,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// A GPA-direct or transfer-page packet with `range_count == 0`.
    #[error("packet at ring offset {offset:#x}: type {packet_type:#x} has range_count 0")]
    NoRanges {
        /// The type field.
        packet_type: u16,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// A malformed GPA range list in a GPA-direct packet.
    #[error("packet at ring offset {offset:#x}: bad GPA range list: {source}")]
    BadRanges {
        /// Ring offset of the packet.
        offset: u32,
        /// What was wrong with the ranges.
        source: GpaError,
    },
    /// A transfer-page range list longer than the packet header holds.
    #[error(
        "packet at ring offset {offset:#x}: {range_count} transfer-page ranges do not fit a {header_len}-byte header"
    )]
    TransferRangesTruncated {
        /// The range count field.
        range_count: u32,
        /// Header length (`8 * data_offset8`).
        header_len: usize,
        /// Ring offset of the packet.
        offset: u32,
    },
    /// A transfer-page range that does not lie inside its buffer.
    #[error(
        "transfer-page range {byte_offset:#x}+{byte_count:#x} is outside the {buffer_len:#x}-byte buffer"
    )]
    TransferRangeOutside {
        /// Range offset.
        byte_offset: u32,
        /// Range length.
        byte_count: u32,
        /// Length of the pre-established buffer.
        buffer_len: u64,
    },
    /// An outgoing packet whose length in 8-byte units does not fit `u16`.
    #[error("packet of {bytes} bytes exceeds the largest encodable packet ({limit} bytes)")]
    PacketTooLarge {
        /// Packet length in bytes (descriptor + extension + payload).
        bytes: u64,
        /// Largest packet `length8: u16` can describe.
        limit: u64,
    },
    /// An outgoing packet that can never fit the ring (an error, not a wait).
    #[error("packet needing {needed} ring bytes can never fit a ring of {ring_size} bytes")]
    PacketExceedsRing {
        /// Ring bytes the packet needs (packet + trailer).
        needed: u64,
        /// Ring data size.
        ring_size: u32,
    },
    /// A guest-memory access failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A GPADL or GPA range error.
    #[error(transparent)]
    Gpa(#[from] GpaError),
}

/// Result alias for ring operations.
pub type Result<T, E = RingError> = std::result::Result<T, E>;
