//! Packet wire format: the 16-byte descriptor, the GPA-direct and
//! transfer-page extensions, the incoming and outgoing packet types, the
//! validation of a received descriptor (in spec order) and the encoding of
//! an outgoing one. Pure functions over host bytes; no ring access.

use crate::error::{Result, RingError};
use crate::gpa::GpaRange;
use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Packet type: in-band data.
pub const TYPE_IN_BAND: u16 = 6;
/// Packet type: transfer-page ranges into a pre-established buffer.
pub const TYPE_TRANSFER_PAGES: u16 = 7;
/// Packet type: GPA-direct ranges.
pub const TYPE_GPA_DIRECT: u16 = 9;
/// Packet type: completion.
pub const TYPE_COMPLETION: u16 = 0xB;
/// Descriptor flag bit 0: the sender wants a completion.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;
/// Size of the packet descriptor.
pub const DESCRIPTOR_LEN: usize = 16;
/// Size of the trailer after every packet.
pub const TRAILER_LEN: usize = 8;
/// Header length of GPA-direct and transfer-page packets before their
/// range lists.
pub const EXTENDED_HEADER_LEN: usize = 24;
/// Largest packet (descriptor + extension + payload) `length8: u16` can
/// describe.
pub const MAX_PACKET_LEN: u64 = u16::MAX as u64 * 8;

/// The packet descriptor, as copied out of the ring (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Packet type.
    pub packet_type: u16,
    /// Payload offset in 8-byte units from the packet start.
    pub data_offset8: u16,
    /// Packet length in 8-byte units, excluding the trailer.
    pub length8: u16,
    /// Flags (bit 0: completion requested).
    pub flags: u16,
    /// Transaction id.
    pub transaction_id: u64,
}

/// The descriptor as laid out in the ring (little-endian fields).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct DescriptorWire {
    packet_type: U16,
    data_offset8: U16,
    length8: U16,
    flags: U16,
    transaction_id: U64,
}

/// The fixed part of a GPA-direct or transfer-page header after the
/// descriptor.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct ExtensionWire {
    /// Transfer page set id (type 7); reserved (type 9).
    set_id: U16,
    reserved: U16,
    range_count: zerocopy::little_endian::U32,
}

const _: () = assert!(size_of::<DescriptorWire>() == DESCRIPTOR_LEN);
const _: () = assert!(DESCRIPTOR_LEN + size_of::<ExtensionWire>() == EXTENDED_HEADER_LEN);

impl Descriptor {
    /// Decodes the 16 descriptor bytes.
    pub fn from_bytes(b: &[u8; DESCRIPTOR_LEN]) -> Self {
        let wire: DescriptorWire = zerocopy::transmute!(*b);
        Self {
            packet_type: wire.packet_type.get(),
            data_offset8: wire.data_offset8.get(),
            length8: wire.length8.get(),
            flags: wire.flags.get(),
            transaction_id: wire.transaction_id.get(),
        }
    }

    /// Encodes the descriptor.
    pub fn to_bytes(&self) -> [u8; DESCRIPTOR_LEN] {
        zerocopy::transmute!(DescriptorWire {
            packet_type: U16::new(self.packet_type),
            data_offset8: U16::new(self.data_offset8),
            length8: U16::new(self.length8),
            flags: U16::new(self.flags),
            transaction_id: U64::new(self.transaction_id),
        })
    }

    /// Checks the descriptor of the packet at ring `offset` against the
    /// bytes `available`, in spec order: `2 <= data_offset8 <= length8`;
    /// `length8*8 + 8 <= available`; flags; type; `data_offset8 >= 3` for
    /// types 7 and 9. (`available >= 16` is checked before the copy.)
    pub fn validate(&self, available: u32, offset: u32) -> Result<()> {
        let Self {
            packet_type,
            data_offset8,
            length8,
            flags,
            ..
        } = *self;
        if data_offset8 < 2 {
            return Err(RingError::DataOffsetTooSmall {
                data_offset8,
                offset,
            });
        }
        if data_offset8 > length8 {
            return Err(RingError::DataOffsetBeyondLength {
                data_offset8,
                length8,
                offset,
            });
        }
        if u64::from(length8) * 8 + TRAILER_LEN as u64 > u64::from(available) {
            return Err(RingError::PacketBeyondAvailable {
                length8,
                available,
                offset,
            });
        }
        if flags & !FLAG_COMPLETION_REQUESTED != 0 {
            return Err(RingError::BadFlags { flags, offset });
        }
        match packet_type {
            TYPE_IN_BAND | TYPE_COMPLETION => {}
            TYPE_TRANSFER_PAGES | TYPE_GPA_DIRECT => {
                if data_offset8 < 3 {
                    return Err(RingError::ExtensionHeaderTooShort {
                        packet_type,
                        data_offset8,
                        offset,
                    });
                }
            }
            _ => {
                return Err(RingError::BadType {
                    packet_type,
                    offset,
                });
            }
        }
        Ok(())
    }
}

/// One transfer-page range: bytes in a pre-established buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferPageRange {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset into the buffer.
    pub byte_offset: u32,
}

impl TransferPageRange {
    /// Checks that the range lies inside a buffer of `buffer_len` bytes.
    pub fn check_within(&self, buffer_len: u64) -> Result<()> {
        let end = u64::from(self.byte_offset) + u64::from(self.byte_count);
        if end > buffer_len {
            return Err(RingError::TransferRangeOutside {
                byte_offset: self.byte_offset,
                byte_count: self.byte_count,
                buffer_len,
            });
        }
        Ok(())
    }
}

/// What kind of packet arrived, with its validated extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketKind {
    /// In-band data (type 6).
    InBand,
    /// GPA-direct (type 9) with at least one range.
    GpaDirect(Vec<GpaRange>),
    /// Transfer-page ranges (type 7) into buffer `set_id`.
    TransferPages {
        /// The transfer page set id.
        set_id: u16,
        /// The ranges (at least one); check them with
        /// [`TransferPageRange::check_within`] against the buffer.
        ranges: Vec<TransferPageRange>,
    },
    /// A completion (type 0xB).
    Completion,
}

/// A received packet, borrowing its payload from the reader's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketView<'a> {
    /// The kind and its extension.
    pub kind: PacketKind,
    /// The transaction id.
    pub transaction_id: u64,
    /// Whether the sender asked for a completion.
    pub completion_requested: bool,
    /// Payload bytes (from `8 * data_offset8` to `8 * length8`, so rounded
    /// up to 8 by the sender's padding).
    pub payload: &'a [u8],
}

impl PacketView<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> IncomingPacket {
        IncomingPacket {
            kind: self.kind.clone(),
            transaction_id: self.transaction_id,
            completion_requested: self.completion_requested,
            payload: self.payload.to_vec(),
        }
    }
}

/// A received packet, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingPacket {
    /// The kind and its extension.
    pub kind: PacketKind,
    /// The transaction id.
    pub transaction_id: u64,
    /// Whether the sender asked for a completion.
    pub completion_requested: bool,
    /// Payload bytes (padded to 8 by the sender).
    pub payload: Vec<u8>,
}

/// A validated packet kind as offsets into the reader's copy of the
/// packet: what [`parse_packet`] found, before anything is built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParsedKind {
    InBand,
    /// `count` GPA ranges (all checked) in `bytes[list]`.
    GpaDirect {
        list: (usize, usize),
        count: u32,
    },
    /// `count` transfer-page ranges in `bytes[list]`.
    TransferPages {
        set_id: u16,
        list: (usize, usize),
        count: u32,
    },
    Completion,
}

impl ParsedKind {
    /// The borrowed kind over `bytes`, the packet copy it was parsed from.
    #[inline]
    pub(crate) fn borrow<'a>(&self, bytes: &'a [u8]) -> BorrowedKind<'a> {
        match *self {
            Self::InBand => BorrowedKind::InBand,
            Self::Completion => BorrowedKind::Completion,
            Self::GpaDirect {
                list: (from, to),
                count,
            } => BorrowedKind::GpaDirect(GpaRangeList {
                bytes: &bytes[from..to],
                count,
            }),
            Self::TransferPages {
                set_id,
                list: (from, to),
                count,
            } => BorrowedKind::TransferPages {
                set_id,
                ranges: TransferPageList {
                    bytes: &bytes[from..to],
                    count,
                },
            },
        }
    }
}

/// A packet kind borrowing its validated range list from the reader.
#[derive(Debug, Clone, Copy)]
pub enum BorrowedKind<'a> {
    /// In-band data (type 6).
    InBand,
    /// GPA-direct (type 9) with at least one range.
    GpaDirect(GpaRangeList<'a>),
    /// Transfer-page ranges (type 7) into buffer `set_id`.
    TransferPages {
        /// The transfer page set id.
        set_id: u16,
        /// The ranges (at least one).
        ranges: TransferPageList<'a>,
    },
    /// A completion (type 0xB).
    Completion,
}

impl BorrowedKind<'_> {
    /// The owned kind (allocates the range lists).
    pub fn to_owned(&self) -> PacketKind {
        match self {
            Self::InBand => PacketKind::InBand,
            Self::Completion => PacketKind::Completion,
            Self::GpaDirect(list) => PacketKind::GpaDirect(list.iter().collect()),
            Self::TransferPages { set_id, ranges } => PacketKind::TransferPages {
                set_id: *set_id,
                ranges: ranges.iter().collect(),
            },
        }
    }
}

/// The validated GPA ranges of a received GPA-direct packet, decoded one
/// at a time (a range of up to [`INLINE_PAGES`](crate::gpa::INLINE_PAGES)
/// pages needs no heap).
#[derive(Debug, Clone, Copy)]
pub struct GpaRangeList<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> GpaRangeList<'a> {
    /// Number of ranges (at least 1).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the list is empty (never, for a validated packet).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ranges in order, into `out`, reusing the ranges and page lists
    /// already there ([`GpaRange::parse_list_into`]): a loop that parses
    /// every packet's list into one vector allocates nothing once it has
    /// seen its longest list.
    pub fn parse_into(&self, out: &mut Vec<GpaRange>) {
        GpaRange::parse_checked_list_into(self.bytes, self.count, out);
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = GpaRange> + 'a {
        let mut rest = self.bytes;
        (0..self.count).map_while(move |_| {
            // Checked when the packet was parsed, so this cannot fail.
            let (range, used) = GpaRange::parse_one(rest).ok()?;
            rest = &rest[used..];
            Some(range)
        })
    }
}

/// The transfer-page ranges of a received type-7 packet.
#[derive(Debug, Clone, Copy)]
pub struct TransferPageList<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> TransferPageList<'a> {
    /// Number of ranges (at least 1).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the list is empty (never, for a validated packet).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = TransferPageRange> + 'a {
        self.bytes
            .chunks_exact(8)
            .take(self.count as usize)
            .map(|c| TransferPageRange {
                byte_count: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                byte_offset: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
    }
}

/// A received packet borrowing everything from the reader's buffer; what
/// a device loop reads without allocating.
#[derive(Debug, Clone, Copy)]
pub struct BorrowedPacket<'a> {
    /// The kind and its extension.
    pub kind: BorrowedKind<'a>,
    /// The transaction id.
    pub transaction_id: u64,
    /// Whether the sender asked for a completion.
    pub completion_requested: bool,
    /// Payload bytes (padded to 8 by the sender).
    pub payload: &'a [u8],
}

impl<'a> BorrowedPacket<'a> {
    /// The view with owned range lists.
    pub fn to_view(&self) -> PacketView<'a> {
        PacketView {
            kind: self.kind.to_owned(),
            transaction_id: self.transaction_id,
            completion_requested: self.completion_requested,
            payload: self.payload,
        }
    }
}

/// Parses the validated packet `bytes` (a host copy of `8 * length8` bytes,
/// descriptor included) into its kind and payload range.
pub fn parse_packet(
    desc: &Descriptor,
    bytes: &[u8],
    offset: u32,
) -> Result<(PacketKind, std::ops::Range<usize>)> {
    let (kind, payload) = parse_packet_kind(desc, bytes, offset)?;
    Ok((kind.borrow(bytes).to_owned(), payload))
}

/// [`parse_packet`] without building anything: the kind as offsets into
/// `bytes`, every range checked.
#[inline]
pub(crate) fn parse_packet_kind(
    desc: &Descriptor,
    bytes: &[u8],
    offset: u32,
) -> Result<(ParsedKind, std::ops::Range<usize>)> {
    let header_len = usize::from(desc.data_offset8) * 8;
    let total = usize::from(desc.length8) * 8;
    // `validate` established 16 <= header_len <= total == bytes.len(); the
    // `get`s keep that local instead of trusting it.
    let header = bytes
        .get(..header_len)
        .ok_or(RingError::DataOffsetBeyondLength {
            data_offset8: desc.data_offset8,
            length8: desc.length8,
            offset,
        })?;
    let kind = match desc.packet_type {
        TYPE_IN_BAND => ParsedKind::InBand,
        TYPE_COMPLETION => ParsedKind::Completion,
        TYPE_GPA_DIRECT => {
            let (_, count) = extension(desc, header, offset)?;
            let list = &header[EXTENDED_HEADER_LEN..];
            let used = GpaRange::check_list(list, count)
                .map_err(|source| RingError::BadRanges { offset, source })?;
            ParsedKind::GpaDirect {
                list: (EXTENDED_HEADER_LEN, EXTENDED_HEADER_LEN + used),
                count,
            }
        }
        TYPE_TRANSFER_PAGES => {
            let (set_id, count) = extension(desc, header, offset)?;
            let list = &header[EXTENDED_HEADER_LEN..];
            if (count as usize) > list.len() / 8 {
                return Err(RingError::TransferRangesTruncated {
                    range_count: count,
                    header_len,
                    offset,
                });
            }
            ParsedKind::TransferPages {
                set_id,
                list: (
                    EXTENDED_HEADER_LEN,
                    EXTENDED_HEADER_LEN + count as usize * 8,
                ),
                count,
            }
        }
        packet_type => {
            return Err(RingError::BadType {
                packet_type,
                offset,
            });
        }
    };
    Ok((kind, header_len..total.min(bytes.len())))
}

/// The `(set_id, range_count)` of a type 7/9 header (at least 24 bytes,
/// checked); the count is at least 1.
fn extension(desc: &Descriptor, header: &[u8], offset: u32) -> Result<(u16, u32)> {
    let wire = header
        .get(DESCRIPTOR_LEN..EXTENDED_HEADER_LEN)
        .and_then(|b| ExtensionWire::read_from_bytes(b).ok())
        .ok_or(RingError::ExtensionHeaderTooShort {
            packet_type: desc.packet_type,
            data_offset8: desc.data_offset8,
            offset,
        })?;
    let count = wire.range_count.get();
    if count == 0 {
        return Err(RingError::NoRanges {
            packet_type: desc.packet_type,
            offset,
        });
    }
    Ok((wire.set_id.get(), count))
}

/// The kind of an outgoing packet.
#[derive(Debug, Clone, Copy)]
pub enum OutgoingKind<'a> {
    /// In-band data.
    InBand,
    /// GPA-direct with these ranges (at least one).
    GpaDirect(&'a [GpaRange]),
    /// Transfer-page ranges into buffer `set_id`.
    TransferPages {
        /// The transfer page set id.
        set_id: u16,
        /// The ranges.
        ranges: &'a [TransferPageRange],
    },
    /// A completion.
    Completion,
}

/// A packet to send. The payload is `prefix` followed by `payload`, so a
/// framing header needs no extra copy.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPacket<'a> {
    /// Kind and extension.
    pub kind: OutgoingKind<'a>,
    /// Transaction id.
    pub transaction_id: u64,
    /// Ask the receiver for a completion.
    pub completion_requested: bool,
    /// First part of the payload.
    pub prefix: &'a [u8],
    /// Rest of the payload.
    pub payload: &'a [u8],
}

impl<'a> OutgoingPacket<'a> {
    /// An in-band packet without completion request.
    pub fn in_band(payload: &'a [u8]) -> Self {
        Self {
            kind: OutgoingKind::InBand,
            transaction_id: 0,
            completion_requested: false,
            prefix: &[],
            payload,
        }
    }

    /// An in-band packet asking for a completion of `transaction_id`.
    pub fn request(transaction_id: u64, payload: &'a [u8]) -> Self {
        Self {
            transaction_id,
            completion_requested: true,
            ..Self::in_band(payload)
        }
    }

    /// A completion of `transaction_id`.
    pub fn completion(transaction_id: u64, payload: &'a [u8]) -> Self {
        Self {
            kind: OutgoingKind::Completion,
            transaction_id,
            ..Self::in_band(payload)
        }
    }

    /// A GPA-direct packet asking for a completion of `transaction_id`.
    pub fn gpa_direct(transaction_id: u64, ranges: &'a [GpaRange], payload: &'a [u8]) -> Self {
        Self {
            kind: OutgoingKind::GpaDirect(ranges),
            transaction_id,
            completion_requested: true,
            prefix: &[],
            payload,
        }
    }

    /// The same packet with `prefix` before the payload.
    pub fn with_prefix(self, prefix: &'a [u8]) -> Self {
        Self { prefix, ..self }
    }

    /// Header length (descriptor + extension), a multiple of 8.
    pub fn header_len(&self) -> usize {
        match self.kind {
            OutgoingKind::InBand | OutgoingKind::Completion => DESCRIPTOR_LEN,
            OutgoingKind::GpaDirect(ranges) => {
                EXTENDED_HEADER_LEN + ranges.iter().map(GpaRange::encoded_len).sum::<usize>()
            }
            OutgoingKind::TransferPages { ranges, .. } => EXTENDED_HEADER_LEN + 8 * ranges.len(),
        }
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> usize {
        self.prefix.len() + self.payload.len()
    }

    /// Ring bytes the packet takes: descriptor + extension + payload,
    /// padded to 8, plus the 8-byte trailer. Fails if `length8` would not
    /// fit u16 (never narrowed silently).
    pub fn ring_len(&self) -> Result<u32> {
        let bytes = (self.header_len() as u64 + self.payload_len() as u64).next_multiple_of(8);
        if bytes > MAX_PACKET_LEN {
            return Err(RingError::PacketTooLarge {
                bytes,
                limit: MAX_PACKET_LEN,
            });
        }
        Ok(bytes as u32 + TRAILER_LEN as u32)
    }

    /// Appends the descriptor and extension to `out` (the payload, padding
    /// and trailer are written by the ring writer).
    pub fn encode_header(&self, out: &mut Vec<u8>) -> Result<()> {
        let ring_len = self.ring_len()?;
        let start = out.len();
        out.resize(start + self.header_len(), 0);
        self.encode_header_into(ring_len, &mut out[start..]);
        Ok(())
    }

    /// Writes the descriptor and extension at the start of `out`, which
    /// holds at least [`header_len`](Self::header_len) bytes, for a packet
    /// whose [`ring_len`](Self::ring_len) is `ring_len`; returns the header
    /// length. The writer encodes small packets straight into the array it
    /// copies into the ring, with the length it has already checked.
    pub(crate) fn encode_header_into(&self, ring_len: u32, out: &mut [u8]) -> usize {
        // `ring_len` passed `ring_len()`'s check: at most MAX_PACKET_LEN
        // bytes before the trailer, so `length8` fits u16.
        let length8 = ((ring_len as usize - TRAILER_LEN) / 8) as u16;
        // header_len <= packet length, which fits u16 units.
        let data_offset8 = (self.header_len() / 8) as u16;
        let packet_type = match self.kind {
            OutgoingKind::InBand => TYPE_IN_BAND,
            OutgoingKind::GpaDirect(_) => TYPE_GPA_DIRECT,
            OutgoingKind::TransferPages { .. } => TYPE_TRANSFER_PAGES,
            OutgoingKind::Completion => TYPE_COMPLETION,
        };
        let desc = Descriptor {
            packet_type,
            data_offset8,
            length8,
            flags: if self.completion_requested {
                FLAG_COMPLETION_REQUESTED
            } else {
                0
            },
            transaction_id: self.transaction_id,
        };
        out[..DESCRIPTOR_LEN].copy_from_slice(&desc.to_bytes());
        let mut at = DESCRIPTOR_LEN;
        match self.kind {
            OutgoingKind::InBand | OutgoingKind::Completion => {}
            OutgoingKind::GpaDirect(ranges) => {
                put(out, &mut at, &0u32.to_le_bytes());
                put(out, &mut at, &(ranges.len() as u32).to_le_bytes());
                for range in ranges {
                    at += range.encode_to_slice(&mut out[at..]);
                }
            }
            OutgoingKind::TransferPages { set_id, ranges } => {
                put(out, &mut at, &set_id.to_le_bytes());
                put(out, &mut at, &0u16.to_le_bytes());
                put(out, &mut at, &(ranges.len() as u32).to_le_bytes());
                for r in ranges {
                    put(out, &mut at, &r.byte_count.to_le_bytes());
                    put(out, &mut at, &r.byte_offset.to_le_bytes());
                }
            }
        }
        at
    }
}

/// Copies `bytes` into `out` at `*at` and moves `*at` past them.
fn put(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
    out[*at..*at + bytes.len()].copy_from_slice(bytes);
    *at += bytes.len();
}

/// Ring bytes (packet + trailer) an in-band packet or completion with
/// `payload_len` payload bytes takes; reserve this much with
/// `wait_write_ready` before consuming a request.
pub const fn in_band_ring_len(payload_len: usize) -> usize {
    (DESCRIPTOR_LEN + payload_len).next_multiple_of(8) + TRAILER_LEN
}

/// Ring bytes a pipe DATA message of `data_len` bytes takes (8-byte pipe
/// header + data in an in-band packet).
pub const fn pipe_data_ring_len(data_len: usize) -> usize {
    in_band_ring_len(8 + data_len)
}

/// Ring bytes a GPA-direct packet with `ranges` and `payload_len` payload
/// bytes takes.
pub fn gpa_direct_ring_len(ranges: &[GpaRange], payload_len: usize) -> usize {
    let header: usize =
        EXTENDED_HEADER_LEN + ranges.iter().map(GpaRange::encoded_len).sum::<usize>();
    (header + payload_len).next_multiple_of(8) + TRAILER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_roundtrip_and_size_helpers_agree() {
        let d = Descriptor {
            packet_type: 9,
            data_offset8: 5,
            length8: 7,
            flags: 1,
            transaction_id: 0x1122_3344_5566_7788,
        };
        assert_eq!(Descriptor::from_bytes(&d.to_bytes()), d);
        let pkt = OutgoingPacket::in_band(&[0; 13]);
        assert_eq!(pkt.ring_len().unwrap() as usize, in_band_ring_len(13));
        assert_eq!(in_band_ring_len(13), 16 + 16 + 8);
        let range = GpaRange::new(5000, 0, vec![1, 2]).unwrap();
        let ranges = [range];
        let pkt = OutgoingPacket::gpa_direct(1, &ranges, &[0; 3]);
        assert_eq!(
            pkt.ring_len().unwrap() as usize,
            gpa_direct_ring_len(&ranges, 3)
        );
    }

    #[test]
    fn a_range_list_parsed_into_reused_ranges_matches_its_iterator_and_keeps_their_pages() {
        let long = GpaRange::new(256 * 4096, 0, (100..356).collect()).unwrap();
        let short = GpaRange::new(512, 8, vec![7]).unwrap();
        let mut wire = Vec::new();
        long.encode_into(&mut wire);
        short.encode_into(&mut wire);
        let list = GpaRangeList {
            bytes: &wire,
            count: 2,
        };
        let mut out = Vec::new();
        list.parse_into(&mut out);
        assert_eq!(out, list.iter().collect::<Vec<_>>());
        assert_eq!(out, [long.clone(), short]);
        // A second parse of a list no longer than the first reuses the
        // long range's page list rather than building a new one.
        let pages = out[0].gpns().as_ptr();
        let one = GpaRangeList {
            bytes: &wire[..long.encoded_len()],
            count: 1,
        };
        one.parse_into(&mut out);
        assert_eq!(out, [long]);
        assert_eq!(out[0].gpns().as_ptr(), pages);
    }

    #[test]
    fn oversized_packet_is_an_error_not_narrowed() {
        let big = vec![0u8; MAX_PACKET_LEN as usize];
        let err = OutgoingPacket::in_band(&big).ring_len().unwrap_err();
        assert_eq!(
            err,
            RingError::PacketTooLarge {
                bytes: MAX_PACKET_LEN + 16,
                limit: MAX_PACKET_LEN
            }
        );
        let fits = vec![0u8; MAX_PACKET_LEN as usize - 16];
        assert!(OutgoingPacket::in_band(&fits).ring_len().is_ok());
    }
}
