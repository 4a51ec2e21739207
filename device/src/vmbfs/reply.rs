//! Replies the vmbfs host sends: one message of at most
//! [`MAX_MESSAGE_SIZE`] bytes, built from the protocol structs into a
//! buffer the host hands back and forth ([`VmbfsHost::recycle`]), so a
//! warm request allocates no reply.
//!
//! [`VmbfsHost::recycle`]: super::VmbfsHost::recycle

use vmbdev_protocol::vmbfs::{
    FileInfoFlags, FileStatus, GetFileInfoResponse, MAX_MESSAGE_SIZE, MessageHeader, MessageType,
    ReadFileRdmaResponse, ReadFileResponse, VersionResponse, VersionStatus,
};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

const READ_HEADER: usize = size_of::<ReadFileResponse>();

/// One reply message, at most [`MAX_MESSAGE_SIZE`] bytes: the payload of a
/// pipe DATA packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    bytes: Vec<u8>,
}

impl Reply {
    /// The message bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The message bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// A reply of `message` written into `buffer` (its capacity reused).
    fn from_message(mut buffer: Vec<u8>, message: &[u8]) -> Self {
        buffer.clear();
        buffer.extend_from_slice(message);
        Self { bytes: buffer }
    }

    pub(super) fn version(buffer: Vec<u8>, status: VersionStatus) -> Self {
        let msg = VersionResponse {
            header: MessageHeader::new(MessageType::VERSION_RESPONSE),
            status: U32::new(status.0),
        };
        Self::from_message(buffer, msg.as_bytes())
    }

    pub(super) fn file_info(
        buffer: Vec<u8>,
        status: FileStatus,
        flags: FileInfoFlags,
        size: u64,
    ) -> Self {
        let msg = GetFileInfoResponse {
            header: MessageHeader::new(MessageType::GET_FILE_INFO_RESPONSE),
            status: U32::new(status.0),
            flags: U32::new(flags.into_bits()),
            file_size: U64::new(size),
        };
        Self::from_message(buffer, msg.as_bytes())
    }

    /// A READ_FILE_RESPONSE with no data.
    pub(super) fn read_status(buffer: Vec<u8>, status: FileStatus) -> Self {
        let msg = ReadFileResponse {
            header: MessageHeader::new(MessageType::READ_FILE_RESPONSE),
            status: U32::new(status.0),
        };
        Self::from_message(buffer, msg.as_bytes())
    }

    /// A SUCCESS READ_FILE_RESPONSE with room for `len` data bytes
    /// (`len <= MAX_READ_SIZE`, checked by the caller).
    pub(super) fn read_success(buffer: Vec<u8>, len: usize) -> Self {
        debug_assert!(READ_HEADER + len <= MAX_MESSAGE_SIZE);
        let mut bytes = Self::read_status(buffer, FileStatus::SUCCESS).bytes;
        bytes.resize(READ_HEADER + len, 0);
        Self { bytes }
    }

    pub(super) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[READ_HEADER..]
    }

    pub(super) fn truncate_data(&mut self, len: usize) {
        self.bytes.truncate(READ_HEADER + len);
    }

    pub(super) fn rdma(buffer: Vec<u8>, status: FileStatus, byte_count: u32) -> Self {
        let msg = ReadFileRdmaResponse {
            header: MessageHeader::new(MessageType::READ_FILE_RDMA_RESPONSE),
            status: U32::new(status.0),
            byte_count: U32::new(byte_count),
        };
        Self::from_message(buffer, msg.as_bytes())
    }
}
