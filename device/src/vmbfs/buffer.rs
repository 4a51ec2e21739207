//! GPA-direct buffers the guest registers with pipe SETUP_GPA_DIRECT: the
//! targets of READ_FILE_RDMA. A buffer is its ranges laid end to end.

use vmbdev_ring::{GpaError, GpaRange, GuestMemory};

/// A registered GPA-direct buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    fn for_each_piece(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&GpaRange, u64, usize, u64) -> Result<(), GpaError>,
    ) -> Result<(), GpaError> {
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
            });
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
            range.segments(memory, at, n).map(drop)
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
