//! The packets the channel state machine takes and gives back: a received
//! request, the completion or notification to send, and the violation
//! reported for a packet that is not a vstor request at all.

use vmbdev_protocol::vstor::{self, NtStatus, Operation, PacketHeader};
use vmbdev_ring::GpaRange;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

/// A packet from the guest the host cannot treat as a vstor request at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// Shorter than the 12-byte vstor header.
    #[error("vstor packet of {len} bytes is shorter than the 12-byte header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
}

impl crate::violation::Violation for ProtocolViolation {
    fn kind(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "vstor packet shorter than its header",
        }
    }
}

/// One packet received on a channel.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The packet payload (vstor header and body).
    pub payload: &'a [u8],
    /// GPA ranges of a GPA-direct packet (empty for in-band).
    pub ranges: &'a [GpaRange],
    /// Transaction id to echo in the completion.
    pub transaction_id: u64,
}

/// The payload of a completion: at most [`vstor::PACKET_SIZE_WIN8`] bytes,
/// held inline so a completion needs no heap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CompletionBytes {
    len: u8,
    bytes: [u8; vstor::PACKET_SIZE_WIN8],
}

impl CompletionBytes {
    /// `bytes` as a completion payload; `None` if longer than
    /// [`vstor::PACKET_SIZE_WIN8`].
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut out = [0u8; vstor::PACKET_SIZE_WIN8];
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self {
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    /// Mutable access to the payload bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..usize::from(self.len)]
    }
}

impl std::ops::Deref for CompletionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for CompletionBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A completion packet to send on the request's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Transaction id of the request.
    pub transaction_id: u64,
    /// Payload bytes (never more than 0x40).
    pub bytes: CompletionBytes,
}

impl Completion {
    /// The vstor header of the payload.
    pub fn header(&self) -> Option<PacketHeader> {
        PacketHeader::read_from_prefix(&self.bytes)
            .ok()
            .map(|(h, _)| h)
    }
}

/// An unsolicited packet to send to the guest (transaction id 0, no
/// completion requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Payload bytes.
    pub bytes: Vec<u8>,
}

/// Builds a completion: header + body, cut (or zero-padded) to `len`.
pub(super) fn completion_bytes(len: usize, status: NtStatus, body: &[u8]) -> CompletionBytes {
    let mut bytes = [0u8; vstor::PACKET_SIZE_WIN8];
    let header = PacketHeader {
        operation: Operation::COMPLETE_IO,
        flags: U32::new(0),
        status,
    };
    bytes[..vstor::HEADER_SIZE].copy_from_slice(header.as_bytes());
    let body_len = body.len().min(vstor::MAX_BODY_SIZE);
    bytes[vstor::HEADER_SIZE..vstor::HEADER_SIZE + body_len].copy_from_slice(&body[..body_len]);
    CompletionBytes {
        len: len.min(vstor::PACKET_SIZE_WIN8) as u8,
        bytes,
    }
}
