//! vmbfs wire format: the read-only file-system protocol a host serves to
//! Hyper-V UEFI firmware and the Windows boot loader.
//!
//! Owns the message layouts, message types, status codes, limits and the
//! offer GUIDs. All integers are little-endian; every struct is
//! `Unaligned` because READ_FILE carries a `u64` at byte 12. Paths are
//! UTF-16LE code units that fill the rest of a message after the fixed part
//! (no length field, no terminator required).

use bitfield_struct::bitfield;
use open_enum::open_enum;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID in its Windows memory layout (`data1..data3` little-endian).
#[repr(C)]
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct Guid {
    /// First group (8 hex digits).
    pub data1: U32,
    /// Second group (4 hex digits), little-endian.
    pub data2: zerocopy::little_endian::U16,
    /// Third group (4 hex digits), little-endian.
    pub data3: zerocopy::little_endian::U16,
    /// Last two groups (4 + 12 hex digits), in text order.
    pub data4: [u8; 8],
}

impl Guid {
    /// Builds a GUID from the 128-bit number its text form spells
    /// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` read as one hex number).
    pub const fn from_u128(value: u128) -> Self {
        let low = (value as u64).to_be_bytes();
        Self {
            data1: U32::new((value >> 96) as u32),
            data2: zerocopy::little_endian::U16::new((value >> 80) as u16),
            data3: zerocopy::little_endian::U16::new((value >> 64) as u16),
            data4: low,
        }
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1.get(),
            self.data2.get(),
            self.data3.get(),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            d[7]
        )
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Interface (class) GUID of the vmbfs offer.
pub const INTERFACE_ID: Guid = Guid::from_u128(0xc376c1c3_d276_48d2_90a9_c04748072c60);
/// Instance GUID of the initial-machine-configuration (IMC) share.
pub const IMC_INSTANCE_ID: Guid = Guid::from_u128(0xc4e5e7d1_d748_4afc_979d_683167910a55);
/// Instance GUID of the boot share.
pub const BOOT_INSTANCE_ID: Guid = Guid::from_u128(0xc63c9bdf_5fa5_4208_b03f_6b458b365592);

/// Protocol version of Windows 10 and later hosts (`major << 16 | minor`),
/// the only one UEFI sends.
pub const VERSION_WIN10: u32 = 0x0001_0000;
/// Largest message in either direction, header included.
pub const MAX_MESSAGE_SIZE: usize = 12288;
/// Largest `byte_count` of an in-band READ_FILE: a full response
/// (12-byte header + data) fits in [`MAX_MESSAGE_SIZE`].
pub const MAX_READ_SIZE: u32 = (MAX_MESSAGE_SIZE - size_of::<ReadFileResponse>()) as u32;
/// Largest `byte_count` of a READ_FILE_RDMA (7 MiB).
pub const MAX_RDMA_READ_SIZE: u32 = 7 * 1024 * 1024;

#[open_enum]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The `type` field of every message.
pub enum MessageType {
    /// Guest → host: propose a protocol version.
    VERSION_REQUEST = 1,
    /// Host → guest: [`VersionStatus`] of the proposal.
    VERSION_RESPONSE = 2,
    /// Guest → host: metadata of a path.
    GET_FILE_INFO = 3,
    /// Host → guest: status, flags and size.
    GET_FILE_INFO_RESPONSE = 4,
    /// Guest → host: read file bytes in-band.
    READ_FILE = 5,
    /// Host → guest: status and the bytes read.
    READ_FILE_RESPONSE = 6,
    /// Guest → host: read file bytes into a registered GPA-direct buffer.
    READ_FILE_RDMA = 7,
    /// Host → guest: status and the byte count written.
    READ_FILE_RDMA_RESPONSE = 8,
}

#[open_enum]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The status of a VERSION_RESPONSE.
pub enum VersionStatus {
    /// The proposed version is supported; the channel is ready.
    SUPPORTED = 0,
    /// The proposed version is not supported.
    UNSUPPORTED = 1,
}

#[open_enum]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The status of file responses.
pub enum FileStatus {
    /// The request succeeded.
    SUCCESS = 0,
    /// No entry at the path.
    NOT_FOUND = 1,
    /// The read starts at or past the end of the file.
    END_OF_FILE = 2,
    /// Any other failure.
    ERROR = 3,
}

/// The `flags` field of GET_FILE_INFO_RESPONSE.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct FileInfoFlags {
    /// The path names a directory.
    pub directory: bool,
    /// The file may be read with READ_FILE_RDMA.
    pub rdma_capable: bool,
    #[bits(30)]
    _reserved: u32,
}

/// The 8 bytes every message starts with.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MessageHeader {
    /// A [`MessageType`] value.
    pub message_type: U32,
    /// Zero when sent, ignored when received.
    pub reserved: U32,
}

impl MessageHeader {
    /// A header of the given type with `reserved` zero.
    pub fn new(message_type: MessageType) -> Self {
        Self {
            message_type: U32::new(message_type.0),
            reserved: U32::ZERO,
        }
    }

    /// The message type (possibly unknown).
    pub fn message_type(&self) -> MessageType {
        MessageType(self.message_type.get())
    }
}

/// VERSION_REQUEST.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct VersionRequest {
    /// Type [`MessageType::VERSION_REQUEST`].
    pub header: MessageHeader,
    /// The proposed version, `major << 16 | minor`.
    pub requested_version: U32,
}

/// VERSION_RESPONSE (exactly 12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct VersionResponse {
    /// Type [`MessageType::VERSION_RESPONSE`].
    pub header: MessageHeader,
    /// A [`VersionStatus`] value.
    pub status: U32,
}

/// GET_FILE_INFO fixed part; the UTF-16LE path follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GetFileInfo {
    /// Type [`MessageType::GET_FILE_INFO`].
    pub header: MessageHeader,
}

/// GET_FILE_INFO_RESPONSE (exactly 24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GetFileInfoResponse {
    /// Type [`MessageType::GET_FILE_INFO_RESPONSE`].
    pub header: MessageHeader,
    /// A [`FileStatus`] value.
    pub status: U32,
    /// [`FileInfoFlags`] bits.
    pub flags: U32,
    /// File size in bytes (0 for directories).
    pub file_size: U64,
}

/// READ_FILE fixed part (20 bytes); the UTF-16LE path follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReadFile {
    /// Type [`MessageType::READ_FILE`].
    pub header: MessageHeader,
    /// Bytes to read, at most [`MAX_READ_SIZE`].
    pub byte_count: U32,
    /// File offset of the first byte (unaligned on the wire).
    pub offset: U64,
}

/// READ_FILE_RESPONSE fixed part (12 bytes); the data follows, its length
/// being the message length minus 12.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReadFileResponse {
    /// Type [`MessageType::READ_FILE_RESPONSE`].
    pub header: MessageHeader,
    /// A [`FileStatus`] value.
    pub status: U32,
}

/// READ_FILE_RDMA fixed part (32 bytes); the UTF-16LE path follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReadFileRdma {
    /// Type [`MessageType::READ_FILE_RDMA`].
    pub header: MessageHeader,
    /// Handle of a GPA-direct buffer registered by a pipe SETUP_GPA_DIRECT.
    pub handle: U32,
    /// Bytes to read, at most [`MAX_RDMA_READ_SIZE`].
    pub byte_count: U32,
    /// File offset of the first byte.
    pub file_offset: U64,
    /// Offset inside the registered buffer where the bytes go.
    pub token_offset: U64,
}

/// READ_FILE_RDMA_RESPONSE (exactly 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReadFileRdmaResponse {
    /// Type [`MessageType::READ_FILE_RDMA_RESPONSE`].
    pub header: MessageHeader,
    /// A [`FileStatus`] value.
    pub status: U32,
    /// Bytes written into the registered buffer.
    pub byte_count: U32,
}

const _: () = assert!(size_of::<Guid>() == 16);
const _: () = assert!(size_of::<MessageHeader>() == 8);
const _: () = assert!(size_of::<VersionRequest>() == 12);
const _: () = assert!(size_of::<VersionResponse>() == 12);
const _: () = assert!(size_of::<GetFileInfo>() == 8);
const _: () = assert!(size_of::<GetFileInfoResponse>() == 24);
const _: () = assert!(size_of::<ReadFile>() == 20);
const _: () = assert!(size_of::<ReadFileResponse>() == 12);
const _: () = assert!(size_of::<ReadFileRdma>() == 32);
const _: () = assert!(size_of::<ReadFileRdmaResponse>() == 16);
const _: () = assert!(MAX_READ_SIZE == 12276);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_and_memory_layout() {
        assert_eq!(
            INTERFACE_ID.to_string(),
            "c376c1c3-d276-48d2-90a9-c04748072c60"
        );
        assert_eq!(
            BOOT_INSTANCE_ID.to_string(),
            "c63c9bdf-5fa5-4208-b03f-6b458b365592"
        );
        assert_eq!(
            IMC_INSTANCE_ID.to_string(),
            "c4e5e7d1-d748-4afc-979d-683167910a55"
        );
        // Windows layout: first three groups little-endian, the rest as text.
        assert_eq!(
            INTERFACE_ID.as_bytes(),
            &[
                0xc3, 0xc1, 0x76, 0xc3, 0x76, 0xd2, 0xd2, 0x48, 0x90, 0xa9, 0xc0, 0x47, 0x48, 0x07,
                0x2c, 0x60
            ]
        );
    }

    #[test]
    fn read_file_offset_sits_at_byte_12() {
        let msg = ReadFile {
            header: MessageHeader::new(MessageType::READ_FILE),
            byte_count: U32::new(0x0102_0304),
            offset: U64::new(0x1122_3344_5566_7788),
        };
        let bytes = msg.as_bytes();
        assert_eq!(&bytes[0..4], &[5, 0, 0, 0]);
        assert_eq!(&bytes[8..12], &[4, 3, 2, 1]);
        assert_eq!(
            &bytes[12..20],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
    }

    #[test]
    fn file_info_flag_bits() {
        assert_eq!(FileInfoFlags::new().with_directory(true).into_bits(), 1);
        assert_eq!(FileInfoFlags::new().with_rdma_capable(true).into_bits(), 2);
        let flags = FileInfoFlags::from_bits(3);
        assert!(flags.directory() && flags.rdma_capable());
    }
}
