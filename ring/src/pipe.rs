//! Pipe framing for pipe-mode offers: the 8-byte pipe header in front of
//! every in-band payload, message mode and byte mode, and the
//! SETUP/TEARDOWN_GPA_DIRECT control messages.

use crate::error::RingError;
use crate::gpa::{GpaError, GpaRange};
use crate::packet::{BorrowedKind, IncomingPacket, OutgoingPacket, PacketKind};
use crate::reader::RingReader;
use crate::writer::RingWriter;

/// Pipe header type: data.
pub const PIPE_DATA: u32 = 1;
/// Pipe header type: partial data (host-internal in byte mode; never valid
/// on the wire).
pub const PIPE_PARTIAL: u32 = 2;
/// Pipe header type: set up GPA-direct ranges under a handle.
pub const PIPE_SETUP_GPA_DIRECT: u32 = 3;
/// Pipe header type: tear down a GPA-direct handle.
pub const PIPE_TEARDOWN_GPA_DIRECT: u32 = 4;
/// Size of the pipe header.
pub const PIPE_HEADER_LEN: usize = 8;
/// Largest message-mode payload.
pub const MAX_MESSAGE_LEN: usize = 16384;
/// Largest data chunk per packet in byte mode.
pub const BYTE_MODE_CHUNK: usize = 2048;
/// Fixed part of a SETUP_GPA_DIRECT body: handle u32, is_writable u8,
/// range_count u32, packed.
pub const SETUP_FIXED_LEN: usize = 9;

/// An error framing or unframing a pipe message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// The ring failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A pipe message arrived in a packet that is not in-band.
    #[error("pipe message in a non-in-band packet")]
    NotInBand,
    /// The payload is shorter than the 8-byte pipe header.
    #[error("pipe payload of {len} bytes is shorter than the 8-byte header")]
    HeaderTruncated {
        /// Payload length.
        len: usize,
    },
    /// The header's byte count does not match the payload (which may only
    /// add up to 7 bytes of padding).
    #[error("pipe header claims {claimed} bytes but the packet carries {present} after the header")]
    BadByteCount {
        /// Byte count in the header.
        claimed: u32,
        /// Bytes after the header in the packet.
        present: usize,
    },
    /// An unknown or host-internal pipe type.
    #[error("invalid pipe message type {0}")]
    BadType(u32),
    /// A message larger than the receiver's buffer (never truncated).
    #[error("pipe message of {len} bytes exceeds the receive buffer of {max} bytes")]
    MessageExceedsBuffer {
        /// Message length.
        len: usize,
        /// Receive buffer size.
        max: usize,
    },
    /// A message larger than message mode allows.
    #[error("pipe message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte message-mode limit")]
    MessageTooLarge {
        /// Message length.
        len: usize,
    },
    /// A SETUP_GPA_DIRECT body shorter than its fixed 9 bytes.
    #[error("SETUP_GPA_DIRECT body of {len} bytes is shorter than 9")]
    SetupTruncated {
        /// Body length.
        len: usize,
    },
    /// A SETUP_GPA_DIRECT with no ranges.
    #[error("SETUP_GPA_DIRECT for handle {handle:#x} has range_count 0")]
    NoRanges {
        /// The handle.
        handle: u32,
    },
    /// A bad range list in a SETUP_GPA_DIRECT.
    #[error("SETUP_GPA_DIRECT for handle {handle:#x}: {source}")]
    BadRanges {
        /// The handle.
        handle: u32,
        /// What was wrong.
        source: GpaError,
    },
    /// Bytes after the last range of a SETUP_GPA_DIRECT.
    #[error("SETUP_GPA_DIRECT for handle {handle:#x} has {extra} bytes after its ranges")]
    SetupTrailingBytes {
        /// The handle.
        handle: u32,
        /// Bytes left over.
        extra: usize,
    },
    /// A TEARDOWN_GPA_DIRECT body that is not exactly 4 bytes.
    #[error("TEARDOWN_GPA_DIRECT body of {len} bytes is not 4")]
    BadTeardownLength {
        /// Body length.
        len: usize,
    },
}

/// One pipe message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipeMessage {
    /// Data (zero-length = end of stream in byte mode).
    Data(Vec<u8>),
    /// Register GPA ranges under `handle`.
    SetupGpaDirect {
        /// Handle the guest uses later.
        handle: u32,
        /// Whether the host may write the ranges.
        writable: bool,
        /// The ranges (at least one).
        ranges: Vec<GpaRange>,
    },
    /// Forget `handle`.
    TeardownGpaDirect {
        /// The handle.
        handle: u32,
    },
}

fn header(kind: u32, len: usize) -> [u8; PIPE_HEADER_LEN] {
    let mut h = [0u8; PIPE_HEADER_LEN];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[4..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl PipeMessage {
    /// Encodes header + body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Data(data) => {
                let mut out = header(PIPE_DATA, data.len()).to_vec();
                out.extend_from_slice(data);
                out
            }
            Self::SetupGpaDirect {
                handle,
                writable,
                ranges,
            } => {
                let mut out = Vec::new();
                Self::encode_setup_into(*handle, *writable, ranges, &mut out);
                out
            }
            Self::TeardownGpaDirect { handle } => Self::encode_teardown(*handle).to_vec(),
        }
    }

    /// The SETUP_GPA_DIRECT of `ranges` under `handle`, header and body,
    /// written into `out` (cleared first; its capacity reused).
    pub fn encode_setup_into(handle: u32, writable: bool, ranges: &[GpaRange], out: &mut Vec<u8>) {
        let body_len = SETUP_FIXED_LEN + ranges.iter().map(GpaRange::encoded_len).sum::<usize>();
        out.clear();
        out.extend_from_slice(&header(PIPE_SETUP_GPA_DIRECT, body_len));
        out.extend_from_slice(&handle.to_le_bytes());
        out.push(u8::from(writable));
        out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        for range in ranges {
            range.encode_into(out);
        }
    }

    /// The TEARDOWN_GPA_DIRECT of `handle`, header and body.
    pub fn encode_teardown(handle: u32) -> [u8; PIPE_HEADER_LEN + 4] {
        let mut out = [0u8; PIPE_HEADER_LEN + 4];
        out[..PIPE_HEADER_LEN].copy_from_slice(&header(PIPE_TEARDOWN_GPA_DIRECT, 4));
        out[PIPE_HEADER_LEN..].copy_from_slice(&handle.to_le_bytes());
        out
    }

    /// Decodes an in-band payload (header + body + up to 7 padding bytes).
    /// Data longer than `max_data` is an error.
    pub fn decode(payload: &[u8], max_data: usize) -> Result<Self, PipeError> {
        Ok(match PipeMessageRef::decode(payload, max_data)? {
            PipeMessageRef::Data(data) => Self::Data(data.to_vec()),
            PipeMessageRef::SetupGpaDirect {
                handle,
                writable,
                ranges,
            } => Self::SetupGpaDirect {
                handle,
                writable,
                ranges: ranges.to_vec(),
            },
            PipeMessageRef::TeardownGpaDirect { handle } => Self::TeardownGpaDirect { handle },
        })
    }

    /// Decodes a received packet's payload; the packet must be in-band.
    pub fn from_packet(packet: &IncomingPacket, max_data: usize) -> Result<Self, PipeError> {
        if packet.kind != PacketKind::InBand {
            return Err(PipeError::NotInBand);
        }
        Self::decode(&packet.payload, max_data)
    }
}

/// A pipe message borrowed from a host copy of its payload: what
/// [`PipeMessage`] holds, decoded without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeMessageRef<'a> {
    /// Data (zero-length = end of stream in byte mode).
    Data(&'a [u8]),
    /// Register GPA ranges under `handle`.
    SetupGpaDirect {
        /// Handle the guest uses later.
        handle: u32,
        /// Whether the host may write the ranges.
        writable: bool,
        /// The ranges (at least one), checked but still in wire form.
        ranges: WireRanges<'a>,
    },
    /// Forget `handle`.
    TeardownGpaDirect {
        /// The handle.
        handle: u32,
    },
}

/// A SETUP_GPA_DIRECT range list already checked by
/// [`GpaRange::check_list`], still in wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRanges<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl WireRanges<'_> {
    /// Number of ranges (at least one).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The ranges, parsed into `out` reusing what it holds (see
    /// [`GpaRange::parse_list_into`]).
    pub fn parse_into(&self, out: &mut Vec<GpaRange>) {
        GpaRange::parse_checked_list_into(self.bytes, self.count, out);
    }

    /// The ranges, owned.
    pub fn to_vec(&self) -> Vec<GpaRange> {
        let mut out = Vec::new();
        self.parse_into(&mut out);
        out
    }
}

impl<'a> PipeMessageRef<'a> {
    /// Decodes an in-band payload (header + body + up to 7 padding bytes)
    /// like [`PipeMessage::decode`], borrowing from `payload`.
    pub fn decode(payload: &'a [u8], max_data: usize) -> Result<Self, PipeError> {
        let (kind, count) = match (u32_at(payload, 0), u32_at(payload, 4)) {
            (Some(k), Some(c)) => (k, c),
            _ => return Err(PipeError::HeaderTruncated { len: payload.len() }),
        };
        let present = payload.len() - PIPE_HEADER_LEN;
        let len = count as usize;
        if len > present || present - len >= 8 {
            return Err(PipeError::BadByteCount {
                claimed: count,
                present,
            });
        }
        let body = &payload[PIPE_HEADER_LEN..PIPE_HEADER_LEN + len];
        match kind {
            PIPE_DATA => {
                if len > max_data {
                    return Err(PipeError::MessageExceedsBuffer { len, max: max_data });
                }
                Ok(Self::Data(body))
            }
            PIPE_SETUP_GPA_DIRECT => Self::decode_setup(body),
            PIPE_TEARDOWN_GPA_DIRECT => match u32_at(body, 0) {
                Some(handle) if len == 4 => Ok(Self::TeardownGpaDirect { handle }),
                _ => Err(PipeError::BadTeardownLength { len }),
            },
            other => Err(PipeError::BadType(other)),
        }
    }

    fn decode_setup(body: &'a [u8]) -> Result<Self, PipeError> {
        let (handle, count) = match (u32_at(body, 0), u32_at(body, 5)) {
            (Some(h), Some(c)) => (h, c),
            _ => return Err(PipeError::SetupTruncated { len: body.len() }),
        };
        let writable = body[4] != 0;
        if count == 0 {
            return Err(PipeError::NoRanges { handle });
        }
        let list = &body[SETUP_FIXED_LEN..];
        let used = GpaRange::check_list(list, count)
            .map_err(|source| PipeError::BadRanges { handle, source })?;
        if used != list.len() {
            return Err(PipeError::SetupTrailingBytes {
                handle,
                extra: list.len() - used,
            });
        }
        Ok(Self::SetupGpaDirect {
            handle,
            writable,
            ranges: WireRanges {
                bytes: &list[..used],
                count,
            },
        })
    }
}

impl RingReader {
    /// Receives one pipe message; data longer than `max_data` is an error.
    pub async fn recv_pipe(&mut self, max_data: usize) -> Result<PipeMessage, PipeError> {
        let packet = self.read().await?;
        PipeMessage::from_packet(&packet, max_data)
    }

    /// Receives the payload of one in-band packet into `payload` (reusing
    /// its capacity: nothing is allocated once it has held the largest
    /// packet), sleeping while the ring is empty. Decode it with
    /// [`PipeMessageRef::decode`]. A packet of another kind is consumed and
    /// refused.
    pub async fn recv_pipe_into(&mut self, payload: &mut Vec<u8>) -> Result<(), PipeError> {
        loop {
            let mut in_band = None;
            self.try_read_batch_borrowed(1, |packet| {
                in_band = Some(matches!(packet.kind, BorrowedKind::InBand));
                payload.clear();
                payload.extend_from_slice(packet.payload);
            })?;
            match in_band {
                Some(true) => return Ok(()),
                Some(false) => return Err(PipeError::NotInBand),
                None => self.wait_readable().await?,
            }
        }
    }

    /// Receives one pipe message if one is ready.
    pub fn try_recv_pipe(&mut self, max_data: usize) -> Result<Option<PipeMessage>, PipeError> {
        match self.try_read()? {
            Some(packet) => PipeMessage::from_packet(&packet, max_data).map(Some),
            None => Ok(None),
        }
    }
}

impl RingWriter {
    /// Sends one message-mode DATA message (at most 16384 bytes).
    pub async fn send_data(&mut self, data: &[u8]) -> Result<(), PipeError> {
        if data.len() > MAX_MESSAGE_LEN {
            return Err(PipeError::MessageTooLarge { len: data.len() });
        }
        let h = header(PIPE_DATA, data.len());
        self.write(&OutgoingPacket::in_band(data).with_prefix(&h))
            .await?;
        Ok(())
    }

    /// Sends a byte-mode stream chunk by chunk (<= 2048 bytes per packet),
    /// publishing once at the end (or whenever the ring fills).
    pub async fn send_bytes(&mut self, data: &[u8]) -> Result<(), PipeError> {
        for chunk in data.chunks(BYTE_MODE_CHUNK) {
            let h = header(PIPE_DATA, chunk.len());
            let packet = OutgoingPacket::in_band(chunk).with_prefix(&h);
            while !self.try_write_unpublished(&packet)? {
                self.wait_write_ready(packet.ring_len()? as usize).await?;
            }
        }
        self.publish()?;
        Ok(())
    }

    /// Sends byte-mode end of stream (a zero-length DATA packet).
    pub async fn send_end_of_stream(&mut self) -> Result<(), PipeError> {
        let h = header(PIPE_DATA, 0);
        self.write(&OutgoingPacket::in_band(&h)).await?;
        Ok(())
    }

    /// Sends SETUP_GPA_DIRECT.
    pub async fn send_setup(
        &mut self,
        handle: u32,
        writable: bool,
        ranges: &[GpaRange],
    ) -> Result<(), PipeError> {
        self.send_setup_with(handle, writable, ranges, &mut Vec::new())
            .await
    }

    /// [`send_setup`](Self::send_setup) encoding into `scratch` (its
    /// capacity reused), so a warm setup allocates nothing.
    pub async fn send_setup_with(
        &mut self,
        handle: u32,
        writable: bool,
        ranges: &[GpaRange],
        scratch: &mut Vec<u8>,
    ) -> Result<(), PipeError> {
        PipeMessage::encode_setup_into(handle, writable, ranges, scratch);
        self.write(&OutgoingPacket::in_band(scratch)).await?;
        Ok(())
    }

    /// Sends TEARDOWN_GPA_DIRECT.
    pub async fn send_teardown(&mut self, handle: u32) -> Result<(), PipeError> {
        let message = PipeMessage::encode_teardown(handle);
        self.write(&OutgoingPacket::in_band(&message)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_into_a_used_buffer_replaces_its_bytes_and_round_trips() {
        let ranges = vec![
            GpaRange::new(100, 6, vec![0x1234]).unwrap(),
            GpaRange::new(5 * 4096, 0, (10..15).collect()).unwrap(),
        ];
        let mut out = vec![0xEE; 3];
        PipeMessage::encode_setup_into(7, true, &ranges, &mut out);
        let owned = PipeMessage::SetupGpaDirect {
            handle: 7,
            writable: true,
            ranges: ranges.clone(),
        };
        // The buffer's old bytes are gone: header, fixed part, two ranges
        // of one and five pages.
        assert_eq!(
            out.len(),
            PIPE_HEADER_LEN + SETUP_FIXED_LEN + (8 + 8) + (8 + 40)
        );
        assert_eq!(out, owned.encode());
        assert_eq!(PipeMessage::decode(&out, 0), Ok(owned));
        let teardown = PipeMessage::encode_teardown(0xA1B2);
        assert_eq!(
            PipeMessage::decode(&teardown, 0),
            Ok(PipeMessage::TeardownGpaDirect { handle: 0xA1B2 })
        );
    }

    #[test]
    fn setup_layout_is_packed() {
        let range = GpaRange::new(100, 6, vec![0x1234]).unwrap();
        let bytes = PipeMessage::SetupGpaDirect {
            handle: 0xAABB_CCDD,
            writable: true,
            ranges: vec![range],
        }
        .encode();
        let expected: Vec<u8> = [
            &3u32.to_le_bytes()[..],
            &(9u32 + 16).to_le_bytes(),
            &0xAABB_CCDDu32.to_le_bytes(),
            &[1],
            &1u32.to_le_bytes(),
            &100u32.to_le_bytes(),
            &6u32.to_le_bytes(),
            &0x1234u64.to_le_bytes(),
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(
            PipeMessage::decode(&expected, 0).unwrap(),
            PipeMessage::SetupGpaDirect {
                handle: 0xAABB_CCDD,
                writable: true,
                ranges: vec![GpaRange::new(100, 6, vec![0x1234]).unwrap()]
            }
        );
    }

    #[test]
    fn decode_rejects_bad_frames() {
        assert_eq!(
            PipeMessage::decode(&[1, 0, 0], 10),
            Err(PipeError::HeaderTruncated { len: 3 })
        );
        let mut msg = PipeMessage::Data(vec![7; 20]).encode();
        assert_eq!(
            PipeMessage::decode(&msg, 19),
            Err(PipeError::MessageExceedsBuffer { len: 20, max: 19 })
        );
        msg.extend_from_slice(&[0; 4]);
        assert_eq!(
            PipeMessage::decode(&msg, 20).unwrap(),
            PipeMessage::Data(vec![7; 20])
        );
        msg.extend_from_slice(&[0; 4]);
        assert_eq!(
            PipeMessage::decode(&msg, 20),
            Err(PipeError::BadByteCount {
                claimed: 20,
                present: 28
            })
        );
        assert_eq!(
            PipeMessage::decode(&header(PIPE_PARTIAL, 0), 20),
            Err(PipeError::BadType(2))
        );
        let teardown = [&header(4, 3)[..], &[1, 2, 3]].concat();
        assert_eq!(
            PipeMessage::decode(&teardown, 0),
            Err(PipeError::BadTeardownLength { len: 3 })
        );
        let setup = [&header(3, 9)[..], &[1, 0, 0, 0, 0, 0, 0, 0, 0]].concat();
        assert_eq!(
            PipeMessage::decode(&setup, 0),
            Err(PipeError::NoRanges { handle: 1 })
        );
    }
}
