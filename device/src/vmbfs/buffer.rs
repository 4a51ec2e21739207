//! GPA-direct buffers the guest registers with pipe SETUP_GPA_DIRECT: the
//! targets of READ_FILE_RDMA. A buffer is its ranges laid end to end.

use std::os::fd::BorrowedFd;

use vmbdev_ring::memory::FileReadMode;
use vmbdev_ring::{GpaError, GpaRange, GuestMemory};

use crate::scsi_disk::{DataSink, FileTransfer, GuestBuffer};

/// Why reading a file straight into a GPA-direct buffer stopped.
#[derive(Debug)]
pub(super) enum DirectReadError {
    /// The buffer (or guest memory) refused the access; nothing of that
    /// range piece was written.
    Buffer(String),
    /// The file ended after `got` bytes of the read.
    EndOfFile {
        /// Bytes placed before the end.
        got: u64,
    },
    /// The file read failed.
    Io(String),
}

/// A registered GPA-direct buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct GpaDirectBuffer {
    pub(super) writable: bool,
    pub(super) ranges: Vec<GpaRange>,
}

impl GpaDirectBuffer {
    /// Total length in bytes.
    pub(super) fn len(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.byte_count())).sum()
    }

    /// Calls `f(range, offset_in_range, start_in_access, len)` for each
    /// range piece covering `len` bytes at `offset` into the buffer. The
    /// caller has checked `offset + len <= self.len()`.
    fn for_each_piece<E: From<GpaError>>(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&GpaRange, u64, usize, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = offset.checked_add(len).ok_or(GpaError::BeyondRange {
            offset,
            len,
            byte_count: 0,
        })?;
        let mut base = 0u64;
        for range in &self.ranges {
            let range_end = base + u64::from(range.byte_count());
            let start = offset.max(base);
            let stop = end.min(range_end);
            if start < stop {
                f(range, start - base, (start - offset) as usize, stop - start)?;
            }
            base = range_end;
        }
        if end > base {
            return Err(GpaError::BeyondRange {
                offset,
                len,
                byte_count: base.min(u64::from(u32::MAX)) as u32,
            }
            .into());
        }
        Ok(())
    }

    /// Checks that `len` bytes at `offset` lie inside the buffer and inside
    /// guest memory, without touching them.
    pub(super) fn check(
        &self,
        memory: &GuestMemory,
        offset: u64,
        len: u64,
    ) -> Result<(), GpaError> {
        self.for_each_piece(offset, len, |range, at, _, n| {
            range.check_access(memory, at, n)
        })
    }

    /// Reads `len` bytes of `fd` at `file_offset` straight into the guest
    /// pages at `offset` into the buffer (`preadv2`, no host copy). The
    /// caller has checked the whole access with [`check`](Self::check).
    pub(super) fn read_file_at(
        &self,
        memory: &GuestMemory,
        offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        file_offset: u64,
    ) -> Result<(), DirectReadError> {
        self.for_each_piece(offset, len, |range, at, from, n| {
            let mut sink = GuestBuffer::new(memory, range);
            let result =
                sink.read_file_at(at, fd, file_offset + from as u64, n, FileReadMode::Blocking);
            match result {
                Ok(FileTransfer::Done) => Ok(()),
                Ok(FileTransfer::Failed(vmbdev_ring::memory::FileReadError::EndOfFile {
                    got,
                    ..
                })) => Err(DirectReadError::EndOfFile {
                    got: from as u64 + got as u64,
                }),
                Ok(FileTransfer::Failed(error)) => Err(DirectReadError::Io(error.to_string())),
                Ok(FileTransfer::WouldBlock | FileTransfer::Unsupported) => {
                    Err(DirectReadError::Io("blocking read did not complete".into()))
                }
                Err(error) => Err(DirectReadError::Buffer(error.to_string())),
            }
        })
    }

    /// Copies `data` into the guest pages at `offset` into the buffer.
    pub(super) fn write_at(
        &self,
        memory: &GuestMemory,
        offset: u64,
        data: &[u8],
    ) -> Result<(), GpaError> {
        self.for_each_piece(offset, data.len() as u64, |range, at, from, n| {
            range.write_at(memory, at, &data[from..from + n as usize])
        })
    }
}

impl From<GpaError> for DirectReadError {
    fn from(error: GpaError) -> Self {
        DirectReadError::Buffer(error.to_string())
    }
}

impl GpaDirectBuffer {
    /// Sets `len` guest bytes at `offset` into the buffer to zero.
    pub(super) fn fill_zero(
        &self,
        memory: &GuestMemory,
        offset: u64,
        len: u64,
    ) -> Result<(), GpaError> {
        self.for_each_piece(offset, len, |range, at, _, n| {
            range.for_each_segment(memory, at, n, |gpa, n| Ok(memory.fill(gpa, n, 0)?))
        })
    }
}
