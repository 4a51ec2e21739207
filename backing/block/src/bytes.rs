//! Byte-addressed reads over a sector-addressed [`BlockDevice`], and the
//! `Read + Seek` adapter the file-system crates consume.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use crate::{BlockDevice, BlockError};

/// Largest single device read issued for one request; bigger requests are
/// split so the bounce buffer stays small.
const MAX_CHUNK: usize = 1 << 20;

/// Reads `buf.len()` bytes at byte `offset` of `device`, whatever the
/// alignment; a read past the end is an error.
pub fn read_bytes(device: &dyn BlockDevice, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
    let sector = u64::from(device.logical_sector_size());
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or(BlockError::OutOfRange {
                lba: u64::MAX,
                len: buf.len() as u64,
                sector_count: device.sector_count(),
            })?;
        let want = (buf.len() - done).min(MAX_CHUNK);
        let lba = at / sector;
        let skip = (at % sector) as usize;
        let span = (skip + want).div_ceil(sector as usize) * sector as usize;
        if skip == 0 && span == want {
            device.read_sectors(lba, &mut buf[done..done + want])?;
        } else {
            let mut bounce = vec![0u8; span];
            device.read_sectors(lba, &mut bounce)?;
            buf[done..done + want].copy_from_slice(&bounce[skip..skip + want]);
        }
        done += want;
    }
    Ok(())
}

/// A `Read + Seek` cursor over a device. Reads past the end return an
/// error rather than a short count, since some crates treat short reads as
/// impossible.
///
/// A read budget ([`limit_reads`](Self::limit_reads)) bounds the bytes a
/// third-party parser may read before its reads fail: a hostile image can
/// make a crate's walk go round a cycle, reading (and buffering) without
/// end, and the budget turns that into an error.
pub struct DeviceCursor {
    device: Arc<dyn BlockDevice>,
    position: u64,
    /// Bytes reads may still take; `u64::MAX` for no limit.
    budget: u64,
    /// The limit last set, for the error message.
    limit: u64,
}

impl DeviceCursor {
    /// A cursor at byte 0 of `device`, with no read budget.
    pub fn new(device: Arc<dyn BlockDevice>) -> Self {
        Self {
            device,
            position: 0,
            budget: u64::MAX,
            limit: u64::MAX,
        }
    }

    /// From now on, reads fail once they would take more than `bytes`
    /// bytes in all; `u64::MAX` lifts the limit.
    pub fn limit_reads(&mut self, bytes: u64) {
        self.budget = bytes;
        self.limit = bytes;
    }

    /// Whether a read failed (or would fail) because the budget is spent.
    pub fn budget_spent(&self) -> bool {
        self.budget == 0
    }
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string())
}

impl Read for DeviceCursor {
    /// Fills all of `buf` or fails: a request that runs past the device end
    /// is an error, not a short count, because the ntfs crate indexes its
    /// buffers as if every read were complete.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let size = self.device.size_bytes();
        let end = self.position.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > size) {
            return Err(io_error(format!(
                "read of {} bytes at byte {:#x} runs past the device end ({size:#x})",
                buf.len(),
                self.position
            )));
        }
        let len = buf.len() as u64;
        if len > self.budget {
            self.budget = 0;
            return Err(std::io::Error::other(format!(
                "more than the {} bytes allowed read for one step",
                self.limit
            )));
        }
        read_bytes(&*self.device, self.position, buf).map_err(io_error)?;
        if self.budget != u64::MAX {
            self.budget -= len;
        }
        self.position += len;
        Ok(buf.len())
    }
}

impl Seek for DeviceCursor {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let size = self.device.size_bytes();
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.position = p;
                Ok(p)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before byte 0 or past u64",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDisk;

    #[test]
    fn a_read_budget_fails_the_read_that_would_pass_it_and_can_be_lifted() {
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut cursor = DeviceCursor::new(Arc::new(MemoryDisk::new(bytes.clone())));
        cursor.limit_reads(1000);
        let mut buf = [0u8; 600];
        cursor.read_exact(&mut buf).unwrap();
        assert_eq!(buf[..], bytes[..600]);
        assert!(!cursor.budget_spent());
        let error = cursor.read_exact(&mut buf).unwrap_err();
        assert!(error.to_string().contains("1000 bytes allowed"), "{error}");
        assert!(cursor.budget_spent());
        // The failed read moved nothing; without a limit it goes on.
        cursor.limit_reads(u64::MAX);
        cursor.read_exact(&mut buf).unwrap();
        assert_eq!(buf[..], bytes[600..1200]);
    }
}
