//! The pure half of a vmbfs client modelled on the Hyper-V UEFI firmware:
//! request builders, response parsers and the read-loop arithmetic, with
//! the firmware's quirks kept on purpose so hosts are tested against what
//! real guests send.
//!
//! Quirks reproduced:
//! - A child path is `parent + "\" + name`, but when the parent is longer
//!   than one code unit and already ends in `\`, no separator is added while
//!   the length still counts one, so the message carries the string's NUL
//!   terminator as a trailing code unit ([`child_path`]).
//! - Each read chunk asks for `min(buffer left, 12276)` bytes (in-band) or
//!   `min(buffer left, 7 MiB)` (RDMA), never clamped to the file size; the
//!   loop itself stops once the file offset reaches the size ([`FileRead`]).
//! - RDMA per chunk: SETUP_GPA_DIRECT (handle 1, writable, one range over
//!   the chunk's buffer), READ_FILE_RDMA (handle 1, token_offset 0), wait,
//!   TEARDOWN_GPA_DIRECT (handle 1) ([`RdmaChunk`]).
//!
//! [`client`] moves these messages over a channel of a [`VmbfsBus`].

pub mod client;
#[cfg(test)]
mod tests;

pub use client::{
    BusFailure, ClientStats, UefiFile, VmbfsBus, VmbfsChannel, VmbfsClient, VmbfsClientError,
};

use vmbdev_protocol::vmbfs::{
    FileInfoFlags, FileStatus, GetFileInfo, GetFileInfoResponse, MAX_MESSAGE_SIZE,
    MAX_RDMA_READ_SIZE, MAX_READ_SIZE, MessageHeader, MessageType, ReadFile, ReadFileRdma,
    ReadFileRdmaResponse, ReadFileResponse, VERSION_WIN10, VersionRequest, VersionResponse,
    VersionStatus,
};
use vmbdev_ring::GpaRange;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The GPA-direct handle the UEFI client always uses.
pub const RDMA_HANDLE: u32 = 1;

/// What went wrong on the client side of a vmbfs exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The host refused the protocol version.
    #[error("host refused version {VERSION_WIN10:#x} with status {0}")]
    VersionRefused(u32),
    /// GET_FILE_INFO or a read answered NOT_FOUND.
    #[error("not found")]
    NotFound,
    /// A read answered END_OF_FILE.
    #[error("end of file")]
    EndOfFile,
    /// Any other non-zero status ("device error" in the firmware).
    #[error("device error: status {0}")]
    DeviceError(u32),
    /// A reply that breaks the protocol (the firmware's `VMBFS_BAD_HOST`).
    #[error("bad host reply: {what} (length {len}, type field {message_type})")]
    BadHost {
        /// What was wrong.
        what: &'static str,
        /// Reply length in bytes.
        len: usize,
        /// The reply's type field (0 if too short to have one).
        message_type: u32,
    },
    /// The path does not fit in a request.
    #[error("path of {len} bytes does not fit the {max} bytes a request allows")]
    PathTooLong {
        /// Path length in bytes.
        len: usize,
        /// Room in the message.
        max: usize,
    },
    /// A SUCCESS read with no bytes before the end of the file: the
    /// firmware would loop forever here.
    #[error("read at offset {offset} returned no bytes before end of file {size}")]
    NoProgress {
        /// File offset of the read.
        offset: u64,
        /// File size from GET_FILE_INFO.
        size: u64,
    },
}

fn bad_host(what: &'static str, reply: &[u8]) -> ClientError {
    ClientError::BadHost {
        what,
        len: reply.len(),
        message_type: MessageHeader::read_from_prefix(reply)
            .map_or(0, |(h, _)| h.message_type.get()),
    }
}

fn status_error(status: u32) -> ClientError {
    match FileStatus(status) {
        FileStatus::NOT_FOUND => ClientError::NotFound,
        FileStatus::END_OF_FILE => ClientError::EndOfFile,
        _ => ClientError::DeviceError(status),
    }
}

fn path_bytes(path: &[u16], fixed: usize) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    append_path(path, fixed, &mut out)?;
    Ok(out)
}

/// Appends `path` in wire form (UTF-16LE) after a fixed part of `fixed`
/// bytes, refusing a path that would not fit the message.
fn append_path(path: &[u16], fixed: usize, out: &mut Vec<u8>) -> Result<(), ClientError> {
    let len = path.len() * 2;
    let max = MAX_MESSAGE_SIZE - fixed;
    if len > max {
        return Err(ClientError::PathTooLong { len, max });
    }
    out.extend(path.iter().flat_map(|u| u.to_le_bytes()));
    Ok(())
}

/// The VERSION_REQUEST the firmware sends (version 0x00010000 only).
pub fn version_request() -> Vec<u8> {
    VersionRequest {
        header: MessageHeader::new(MessageType::VERSION_REQUEST),
        requested_version: U32::new(VERSION_WIN10),
    }
    .as_bytes()
    .to_vec()
}

/// Checks a VERSION_RESPONSE: exactly 12 bytes, status 0.
pub fn parse_version_response(reply: &[u8]) -> Result<(), ClientError> {
    let response = VersionResponse::read_from_bytes(reply)
        .map_err(|_| bad_host("VERSION_RESPONSE is not 12 bytes", reply))?;
    if response.header.message_type() != MessageType::VERSION_RESPONSE {
        return Err(bad_host("expected VERSION_RESPONSE", reply));
    }
    match VersionStatus(response.status.get()) {
        VersionStatus::SUPPORTED => Ok(()),
        VersionStatus(other) => Err(ClientError::VersionRefused(other)),
    }
}

/// The root directory's path as the firmware stores it.
pub fn root_path() -> Vec<u16> {
    Vec::new()
}

/// The path the firmware sends for `name` opened under `parent`, including
/// its trailing-NUL quirk. `parent` is read up to its first NUL, as the
/// firmware's `StrLen` does.
pub fn child_path(parent: &[u16], name: &str) -> Vec<u16> {
    let parent_len = parent.iter().position(|&u| u == 0).unwrap_or(parent.len());
    let parent = &parent[..parent_len];
    let backslash = u16::from(b'\\');
    let mut path = parent.to_vec();
    let ends_in_separator = parent.last() == Some(&backslash);
    if !parent.is_empty() && !ends_in_separator {
        path.push(backslash);
    }
    path.extend(name.encode_utf16());
    // The length reserves a separator whenever the parent is longer than
    // one unit; if none was written, the terminator fills the slot.
    if parent_len > 1 && ends_in_separator {
        path.push(0);
    }
    path
}

/// A GET_FILE_INFO for `path`.
pub fn get_file_info_request(path: &[u16]) -> Result<Vec<u8>, ClientError> {
    let mut msg = GetFileInfo {
        header: MessageHeader::new(MessageType::GET_FILE_INFO),
    }
    .as_bytes()
    .to_vec();
    msg.extend(path_bytes(path, size_of::<GetFileInfo>())?);
    Ok(msg)
}

/// What GET_FILE_INFO tells about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// The path is a directory.
    pub directory: bool,
    /// Reads may use RDMA.
    pub rdma_capable: bool,
    /// File size in bytes.
    pub size: u64,
}

/// Parses a GET_FILE_INFO_RESPONSE: exactly 24 bytes; NOT_FOUND is
/// [`ClientError::NotFound`], any other non-zero status a device error.
pub fn parse_file_info_response(reply: &[u8]) -> Result<FileInfo, ClientError> {
    let response = GetFileInfoResponse::read_from_bytes(reply)
        .map_err(|_| bad_host("GET_FILE_INFO_RESPONSE is not 24 bytes", reply))?;
    if response.header.message_type() != MessageType::GET_FILE_INFO_RESPONSE {
        return Err(bad_host("expected GET_FILE_INFO_RESPONSE", reply));
    }
    match FileStatus(response.status.get()) {
        FileStatus::SUCCESS => {}
        FileStatus::NOT_FOUND => return Err(ClientError::NotFound),
        FileStatus(other) => return Err(ClientError::DeviceError(other)),
    }
    let flags = FileInfoFlags::from_bits(response.flags.get());
    Ok(FileInfo {
        directory: flags.directory(),
        rdma_capable: flags.rdma_capable(),
        size: response.file_size.get(),
    })
}

/// A READ_FILE of `min(buffer_left, 12276)` bytes at `offset`; returns
/// the message and the byte count asked for.
pub fn read_request(
    path: &[u16],
    offset: u64,
    buffer_left: usize,
) -> Result<(Vec<u8>, u32), ClientError> {
    let mut msg = Vec::new();
    let byte_count = read_request_into(path, offset, buffer_left, &mut msg)?;
    Ok((msg, byte_count))
}

/// [`read_request`] written into `out` (cleared first, its capacity
/// reused); returns the byte count asked for.
pub fn read_request_into(
    path: &[u16],
    offset: u64,
    buffer_left: usize,
    out: &mut Vec<u8>,
) -> Result<u32, ClientError> {
    let byte_count = buffer_left.min(MAX_READ_SIZE as usize) as u32;
    let fixed = ReadFile {
        header: MessageHeader::new(MessageType::READ_FILE),
        byte_count: U32::new(byte_count),
        offset: U64::new(offset),
    };
    out.clear();
    out.extend_from_slice(fixed.as_bytes());
    append_path(path, size_of::<ReadFile>(), out)?;
    Ok(byte_count)
}

/// Parses a READ_FILE_RESPONSE to a read of `requested` bytes; returns the
/// data (never more than requested).
pub fn parse_read_response(reply: &[u8], requested: u32) -> Result<&[u8], ClientError> {
    let (response, data) = ReadFileResponse::read_from_prefix(reply)
        .map_err(|_| bad_host("READ_FILE_RESPONSE shorter than 12 bytes", reply))?;
    if response.header.message_type() != MessageType::READ_FILE_RESPONSE {
        return Err(bad_host("expected READ_FILE_RESPONSE", reply));
    }
    let status = response.status.get();
    if status != FileStatus::SUCCESS.0 {
        return Err(status_error(status));
    }
    if data.len() > requested as usize {
        return Err(bad_host("more data than requested", reply));
    }
    Ok(data)
}

/// A pipe SETUP_GPA_DIRECT as the guest sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaDirectSetup {
    /// Handle the following READ_FILE_RDMA names.
    pub handle: u32,
    /// Whether the host may write the buffer.
    pub writable: bool,
    /// The buffer.
    pub ranges: Vec<GpaRange>,
}

impl GpaDirectSetup {
    /// The pipe body: `handle u32, is_writable u8, range_count u32`, then
    /// the ranges, packed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.handle.to_le_bytes().to_vec();
        out.push(u8::from(self.writable));
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for range in &self.ranges {
            range.encode_into(&mut out);
        }
        out
    }
}

/// The three pipe messages of one RDMA chunk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaChunk {
    /// First: register the chunk's buffer.
    pub setup: GpaDirectSetup,
    /// Then: the READ_FILE_RDMA message (handle 1, token_offset 0).
    pub request: Vec<u8>,
    /// The byte count asked for.
    pub requested: u32,
    /// After the response (possibly deferred): TEARDOWN_GPA_DIRECT of this
    /// handle.
    pub teardown_handle: u32,
}

/// Builds one RDMA chunk reading into `buffer`: the request asks for
/// `min(buffer length, 7 MiB)` bytes at `offset`, and the registered range
/// is the buffer cut to that length, as the firmware registers exactly the
/// bytes it requests.
pub fn rdma_chunk(path: &[u16], offset: u64, buffer: &GpaRange) -> Result<RdmaChunk, ClientError> {
    let requested = buffer.byte_count().min(MAX_RDMA_READ_SIZE);
    let range = buffer
        .truncated(requested)
        .map_err(|_| bad_host("empty RDMA buffer", &[]))?;
    let mut request = Vec::new();
    rdma_request_into(path, offset, requested, &mut request)?;
    Ok(RdmaChunk {
        setup: GpaDirectSetup {
            handle: RDMA_HANDLE,
            writable: true,
            ranges: vec![range],
        },
        request,
        requested,
        teardown_handle: RDMA_HANDLE,
    })
}

/// The READ_FILE_RDMA of an [`RdmaChunk`] (handle 1, token_offset 0) for
/// `requested` bytes at `offset`, written into `out` (cleared first, its
/// capacity reused).
pub fn rdma_request_into(
    path: &[u16],
    offset: u64,
    requested: u32,
    out: &mut Vec<u8>,
) -> Result<(), ClientError> {
    let fixed = ReadFileRdma {
        header: MessageHeader::new(MessageType::READ_FILE_RDMA),
        handle: U32::new(RDMA_HANDLE),
        byte_count: U32::new(requested),
        file_offset: U64::new(offset),
        token_offset: U64::new(0),
    };
    out.clear();
    out.extend_from_slice(fixed.as_bytes());
    append_path(path, size_of::<ReadFileRdma>(), out)
}

/// Parses a READ_FILE_RDMA_RESPONSE to a read of `requested` bytes;
/// returns the bytes written.
pub fn parse_rdma_response(reply: &[u8], requested: u32) -> Result<u32, ClientError> {
    let (response, _) = ReadFileRdmaResponse::read_from_prefix(reply)
        .map_err(|_| bad_host("READ_FILE_RDMA_RESPONSE shorter than 16 bytes", reply))?;
    if response.header.message_type() != MessageType::READ_FILE_RDMA_RESPONSE {
        return Err(bad_host("expected READ_FILE_RDMA_RESPONSE", reply));
    }
    let status = response.status.get();
    if status != FileStatus::SUCCESS.0 {
        return Err(status_error(status));
    }
    let written = response.byte_count.get();
    if written > requested {
        return Err(bad_host("more bytes written than requested", reply));
    }
    Ok(written)
}

/// The firmware's read loop (`VmbfsRead`) as arithmetic: keep reading while
/// the buffer has room and the file offset is below the size from
/// GET_FILE_INFO; each chunk asks for what the buffer has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    file_size: u64,
    offset: u64,
    buffer_size: usize,
    done: usize,
}

impl FileRead {
    /// A read of up to `buffer_size` bytes at `offset` of a file of
    /// `file_size` bytes.
    pub fn new(file_size: u64, offset: u64, buffer_size: usize) -> Self {
        Self {
            file_size,
            offset,
            buffer_size,
            done: 0,
        }
    }

    /// The next chunk to ask for: `(file offset, buffer offset, buffer
    /// left)`, or `None` when the read is complete.
    pub fn next_chunk(&self) -> Option<(u64, usize, usize)> {
        let at = self.offset + self.done as u64;
        (self.done < self.buffer_size && at < self.file_size)
            .then(|| (at, self.done, self.buffer_size - self.done))
    }

    /// Records a chunk that returned `n` bytes. A chunk with no bytes
    /// before the end of the file is where the firmware would spin; it is
    /// reported instead.
    pub fn advance(&mut self, n: usize) -> Result<(), ClientError> {
        if n == 0 {
            return Err(ClientError::NoProgress {
                offset: self.offset + self.done as u64,
                size: self.file_size,
            });
        }
        self.done = self
            .done
            .checked_add(n)
            .filter(|&d| d <= self.buffer_size)
            .ok_or(ClientError::BadHost {
                what: "read overran the buffer",
                len: n,
                message_type: 0,
            })?;
        Ok(())
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> usize {
        self.done
    }
}
