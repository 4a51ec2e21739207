//! A data-in buffer in guest pages: the [`DataSink`] that reads file bytes
//! straight into the guest's memory and fills holes in place.

use std::os::fd::BorrowedFd;

use vmbdev_ring::memory::{FileReadError, FileReadMode, PAGE_SHIFT};
use vmbdev_ring::{GpaRange, GuestMemory, PAGE_SIZE};

use super::{DataSink, FileTransfer, SinkError};

/// A request's data buffer: a guest page range in guest memory.
///
/// Every access is checked against the range and guest memory before any
/// byte moves; a bad buffer is a [`SinkError`]. Nothing allocates.
#[derive(Debug, Clone, Copy)]
pub struct GuestBuffer<'a> {
    memory: &'a GuestMemory,
    range: &'a GpaRange,
    /// Bytes of the range the buffer covers, from its start.
    byte_count: u32,
}

impl<'a> GuestBuffer<'a> {
    /// The buffer `range` describes in `memory`.
    pub fn new(memory: &'a GuestMemory, range: &'a GpaRange) -> Self {
        Self::prefix(memory, range, range.byte_count())
    }

    /// The first `len` bytes of the buffer `range` describes in `memory`
    /// (all of it if `len` is larger): a request's transfer length within a
    /// longer buffer, without copying the range's page list.
    pub fn prefix(memory: &'a GuestMemory, range: &'a GpaRange, len: u32) -> Self {
        Self {
            memory,
            range,
            byte_count: len.min(range.byte_count()),
        }
    }

    /// The guest pieces of `len` bytes at `offset` into the buffer.
    fn pieces(&self, offset: u64, len: u64) -> Result<Pieces<'a>, SinkError> {
        let byte_count = u64::from(self.byte_count);
        match offset.checked_add(len) {
            Some(end) if end <= byte_count => {
                let base = u64::from(self.range.byte_offset());
                Ok(Pieces {
                    gpns: self.range.gpns(),
                    pos: base + offset,
                    stop: base + end,
                })
            }
            _ => Err(SinkError {
                offset,
                len: len as usize,
                reason: format!("beyond the {byte_count}-byte buffer"),
            }),
        }
    }

    fn refused(offset: u64, len: u64, error: &dyn std::fmt::Display) -> SinkError {
        SinkError {
            offset,
            len: len as usize,
            reason: error.to_string(),
        }
    }
}

/// `(gpa, len)` runs of a page range, consecutive pages merged. A page
/// number too large for an address yields `u64::MAX`, which guest memory
/// refuses.
#[derive(Debug, Clone)]
struct Pieces<'a> {
    gpns: &'a [u64],
    /// Position in the range's page list (byte offset included).
    pos: u64,
    stop: u64,
}

impl Pieces<'_> {
    /// The piece at `pos`: up to the end of its page or of the access.
    fn piece_at(&self, pos: u64) -> (u64, u64) {
        let in_page = pos & (PAGE_SIZE as u64 - 1);
        let take = (PAGE_SIZE as u64 - in_page).min(self.stop - pos);
        let gpa = usize::try_from(pos >> PAGE_SHIFT)
            .ok()
            .and_then(|index| self.gpns.get(index))
            .and_then(|gpn| gpn.checked_mul(PAGE_SIZE as u64))
            .map_or(u64::MAX, |page| page + in_page);
        (gpa, take)
    }
}

impl Iterator for Pieces<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.pos >= self.stop {
            return None;
        }
        let (gpa, mut len) = self.piece_at(self.pos);
        self.pos += len;
        while self.pos < self.stop && gpa != u64::MAX {
            let (next, take) = self.piece_at(self.pos);
            if next != gpa + len {
                break;
            }
            len += take;
            self.pos += take;
        }
        Some((gpa, len))
    }
}

impl DataSink for GuestBuffer<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let len = data.len() as u64;
        let mut done = 0usize;
        for (gpa, n) in self.pieces(offset, len)? {
            let n = n as usize;
            self.memory
                .write(gpa, &data[done..done + n])
                .map_err(|e| Self::refused(offset, len, &e))?;
            done += n;
        }
        Ok(())
    }

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<(), SinkError> {
        let pieces = self.pieces(offset, len)?;
        // Checked whole first, so a bad page leaves nothing half-filled.
        for (gpa, n) in pieces.clone() {
            self.memory
                .check_range(gpa, n)
                .map_err(|e| Self::refused(offset, len, &e))?;
        }
        for (gpa, n) in pieces {
            self.memory
                .fill(gpa, n, 0)
                .map_err(|e| Self::refused(offset, len, &e))?;
        }
        Ok(())
    }

    fn read_file_at(
        &mut self,
        offset: u64,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        len: u64,
        mode: FileReadMode,
    ) -> Result<FileTransfer, SinkError> {
        let pieces = self.pieces(offset, len)?;
        match self.memory.read_from_file(fd, file_offset, pieces, mode) {
            Ok(_) => Ok(FileTransfer::Done),
            Err(FileReadError::WouldBlock { .. }) => Ok(FileTransfer::WouldBlock),
            Err(error @ FileReadError::Memory(_)) => Err(Self::refused(offset, len, &error)),
            Err(error) => Ok(FileTransfer::Failed(error)),
        }
    }
}
