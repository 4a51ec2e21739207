//! One ring half: a control page plus N >= 1 data pages of a GPADL, the
//! validated index loads, free/available arithmetic, and copies into and
//! out of the data area with wrap-around over non-contiguous pages.

use crate::control::ControlPage;
use crate::error::{Result, RingError};
use crate::memory::{GuestMemory, PAGE_SHIFT, PAGE_SIZE, ResolvedRun};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Bytes available to read between `read` and `write` in a ring of `size`.
pub fn bytes_available(write: u32, read: u32, size: u32) -> u32 {
    if write >= read {
        write - read
    } else {
        size - read + write
    }
}

/// Bytes free to write: the data size minus what is available. A write of
/// `n` bytes (packet + trailer) needs `free > n`, which keeps one 8-byte
/// slot unused so that a full ring is distinguishable from an empty one.
pub fn bytes_free(write: u32, read: u32, size: u32) -> u32 {
    size - bytes_available(write, read, size)
}

/// Where the data pages live in guest memory.
#[derive(Debug, Clone)]
enum DataLayout {
    /// All data pages are consecutive, starting at this GPA.
    Contiguous(u64),
    /// Page numbers in ring order.
    Pages(Arc<[u64]>),
}

/// One direction of a channel: control page + data area.
#[derive(Debug, Clone)]
pub struct RingHalf {
    memory: GuestMemory,
    control: ControlPage,
    layout: DataLayout,
    /// The data area resolved to host memory once, when it is consecutive
    /// pages of one region (as rings most often are): a packet copy then
    /// costs no region lookup.
    resolved: Option<ResolvedRun>,
    size: u32,
}

impl RingHalf {
    /// Builds a half from `pages` (page 0 = control page, the rest = data
    /// pages in ring order), checking N >= 1 data pages, a data size that
    /// fits u32, and every page inside guest memory (not in a hole).
    pub fn new(memory: &GuestMemory, pages: &[u64]) -> Result<Self> {
        let (&control_gpn, data) = pages
            .split_first()
            .ok_or(RingError::NoDataPages { pages: 0 })?;
        if data.is_empty() {
            return Err(RingError::NoDataPages { pages: pages.len() });
        }
        let bytes = data.len() as u64 * PAGE_SIZE as u64;
        let size = u32::try_from(bytes).map_err(|_| RingError::DataSizeTooLarge { bytes })?;
        let limit = memory.page_count();
        if let Some(&gpn) = pages.iter().find(|&&gpn| gpn >= limit) {
            return Err(crate::gpa::GpaError::PageOutOfRange { gpn, pages: limit }.into());
        }
        for &gpn in pages {
            memory
                .check_range(gpn << PAGE_SHIFT, PAGE_SIZE as u64)
                .map_err(crate::gpa::GpaError::from)?;
        }
        let contiguous = data.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]));
        let (layout, resolved) = if contiguous {
            let base = data[0] << PAGE_SHIFT;
            let resolved = ResolvedRun::new(memory.clone(), base, u64::from(size))
                .map_err(crate::gpa::GpaError::from)?;
            (DataLayout::Contiguous(base), resolved)
        } else {
            (DataLayout::Pages(data.into()), None)
        };
        Ok(Self {
            memory: memory.clone(),
            control: ControlPage::new(memory.clone(), control_gpn << PAGE_SHIFT)?,
            layout,
            resolved,
            size,
        })
    }

    /// Data area size in bytes (a non-zero multiple of 4096).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The control page.
    pub fn control(&self) -> &ControlPage {
        &self.control
    }

    /// The half's guest page numbers as a ring GPADL lists them: the
    /// control page, then the data pages in ring order (what another
    /// process needs to open the same half).
    pub fn page_numbers(&self) -> Vec<u64> {
        let control = self.control.gpa() >> PAGE_SHIFT;
        let data: Vec<u64> = match &self.layout {
            DataLayout::Contiguous(base) => {
                let first = base >> PAGE_SHIFT;
                (first..first + u64::from(self.size >> PAGE_SHIFT)).collect()
            }
            DataLayout::Pages(pages) => pages.to_vec(),
        };
        std::iter::once(control).chain(data).collect()
    }

    /// The guest memory the ring lives in.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn validate(&self, which: &'static str, value: u32) -> Result<u32> {
        if value >= self.size {
            return Err(RingError::IndexOutOfRange {
                which,
                value,
                size: self.size,
            });
        }
        if value % 8 != 0 {
            return Err(RingError::IndexUnaligned { which, value });
        }
        Ok(value)
    }

    /// Loads and validates the write index (`< size`, 8-aligned).
    pub fn load_write_index(&self) -> Result<u32> {
        self.validate("write", self.control.write_index(Ordering::Acquire))
    }

    /// Loads and validates the read index (`< size`, 8-aligned).
    pub fn load_read_index(&self) -> Result<u32> {
        self.validate("read", self.control.read_index(Ordering::Acquire))
    }

    /// The longest run of guest bytes starting at data offset `offset`
    /// (< size) that is contiguous in guest memory: `(gpa, len)`.
    fn run_at(&self, offset: u32) -> (u64, u32) {
        match &self.layout {
            DataLayout::Contiguous(base) => (base + u64::from(offset), self.size - offset),
            DataLayout::Pages(pages) => {
                let index = (offset >> PAGE_SHIFT) as usize;
                let in_page = offset & (PAGE_SIZE as u32 - 1);
                // `offset < size` so `index < pages.len()`; a miss maps to a
                // GPA beyond memory, which the access then refuses.
                let gpn = pages.get(index).copied().unwrap_or(u64::MAX >> PAGE_SHIFT);
                (
                    (gpn << PAGE_SHIFT) + u64::from(in_page),
                    PAGE_SIZE as u32 - in_page,
                )
            }
        }
    }

    /// Advances ring offset `offset` by `len` bytes, wrapping.
    pub fn advance(&self, offset: u32, len: u32) -> u32 {
        let end = u64::from(offset) + u64::from(len);
        let size = u64::from(self.size);
        // Every caller advances by at most one ring (`offset < size`,
        // `len <= size`), so one subtraction wraps; it runs several times
        // per packet, where a division costs tens of cycles.
        if end < size {
            end as u32
        } else if end < 2 * size {
            (end - size) as u32
        } else {
            (end % size) as u32
        }
    }

    /// Copies `buf.len()` (<= size) bytes at data offset `offset` (< size)
    /// out of the ring, wrapping at the end. Returns the offset after them.
    pub fn read_at(&self, mut offset: u32, buf: &mut [u8]) -> Result<u32> {
        if let Some(run) = &self.resolved {
            let (head, tail) = buf.split_at_mut(buf.len().min((self.size - offset) as usize));
            run.read(offset as usize, head)?;
            run.read(0, tail)?;
            return Ok(self.advance(offset, buf.len() as u32));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let (gpa, run) = self.run_at(offset);
            let take = (run as usize).min(buf.len() - done);
            self.memory.read(gpa, &mut buf[done..done + take])?;
            done += take;
            offset = self.advance(offset, take as u32);
        }
        Ok(offset)
    }

    /// Copies `data` (<= size bytes) into the ring at data offset `offset`
    /// (< size), wrapping at the end. Returns the offset after them.
    pub fn write_at(&self, mut offset: u32, data: &[u8]) -> Result<u32> {
        if let Some(run) = &self.resolved {
            let (head, tail) = data.split_at(data.len().min((self.size - offset) as usize));
            run.write(offset as usize, head)?;
            run.write(0, tail)?;
            return Ok(self.advance(offset, data.len() as u32));
        }
        let mut done = 0usize;
        while done < data.len() {
            let (gpa, run) = self.run_at(offset);
            let take = (run as usize).min(data.len() - done);
            self.memory.write(gpa, &data[done..done + take])?;
            done += take;
            offset = self.advance(offset, take as u32);
        }
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_and_available_keep_the_gap() {
        assert_eq!(bytes_available(0, 0, 4096), 0);
        assert_eq!(bytes_free(0, 0, 4096), 4096);
        assert_eq!(bytes_available(8, 4088, 4096), 16);
        assert_eq!(bytes_free(4088, 8, 4096), 16);
        assert_eq!(bytes_available(4088, 0, 4096), 4088);
    }

    proptest::proptest! {
        #[test]
        fn advance_wraps_as_the_remainder_does(
            pages in 1u32..=4,
            offset in 0u32..16384,
            len in 0u32..=u32::MAX,
        ) {
            let mem = GuestMemory::new(8 * 4096).unwrap();
            let list: Vec<u64> = (0..=u64::from(pages)).collect();
            let half = RingHalf::new(&mem, &list).unwrap();
            let offset = offset % half.size();
            let expected = ((u64::from(offset) + u64::from(len)) % u64::from(half.size())) as u32;
            proptest::prop_assert_eq!(half.advance(offset, len), expected);
            // The common case: at most one ring ahead.
            let short = len % (half.size() + 1);
            let expected = ((u64::from(offset) + u64::from(short)) % u64::from(half.size())) as u32;
            proptest::prop_assert_eq!(half.advance(offset, short), expected);
        }
    }

    #[test]
    fn half_requires_a_data_page_and_valid_pages() {
        let mem = GuestMemory::new(8 * 4096).unwrap();
        assert_eq!(
            RingHalf::new(&mem, &[1]).unwrap_err(),
            RingError::NoDataPages { pages: 1 }
        );
        assert_eq!(
            RingHalf::new(&mem, &[]).unwrap_err(),
            RingError::NoDataPages { pages: 0 }
        );
        assert!(matches!(
            RingHalf::new(&mem, &[1, 8]),
            Err(RingError::Gpa(_))
        ));
        let half = RingHalf::new(&mem, &[0, 3, 5]).unwrap();
        assert_eq!(half.size(), 8192);
    }

    #[test]
    fn page_numbers_list_the_control_page_then_the_data_pages() {
        let mem = GuestMemory::new(16 * 4096).unwrap();
        let contiguous = RingHalf::new(&mem, &[9, 2, 3, 4]).unwrap();
        assert_eq!(contiguous.page_numbers(), [9, 2, 3, 4]);
        let scattered = RingHalf::new(&mem, &[1, 7, 5, 12]).unwrap();
        assert_eq!(scattered.page_numbers(), [1, 7, 5, 12]);
    }

    #[test]
    fn data_size_must_fit_u32() {
        // 2^20 data pages = 4 GiB: one byte too many for u32. The check
        // happens before any page is touched, so a small memory suffices
        // to reach it.
        let mem = GuestMemory::new(4096).unwrap();
        let pages = vec![0u64; 1 + (1 << 20)];
        assert_eq!(
            RingHalf::new(&mem, &pages).unwrap_err(),
            RingError::DataSizeTooLarge { bytes: 1 << 32 }
        );
    }

    #[test]
    fn wrapping_copies_cross_non_contiguous_pages() {
        let mem = GuestMemory::new(8 * 4096).unwrap();
        let half = RingHalf::new(&mem, &[0, 6, 2]).unwrap();
        let data: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
        let end = half.write_at(8192 - 40, &data).unwrap();
        assert_eq!(end, 60);
        let mut tail = [0u8; 40];
        mem.read(2 * 4096 + 4096 - 40, &mut tail).unwrap();
        assert_eq!(tail, data[..40]);
        let mut head = [0u8; 60];
        mem.read(6 * 4096, &mut head).unwrap();
        assert_eq!(head, data[40..]);
        let mut back = vec![0u8; 100];
        half.read_at(8192 - 40, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn wrapping_copies_of_a_resolved_contiguous_half_land_where_the_pages_are() {
        let mem = GuestMemory::new(8 * 4096).unwrap();
        let half = RingHalf::new(&mem, &[0, 3, 4]).unwrap();
        assert!(half.resolved.is_some());
        let data: Vec<u8> = (0..100u32).map(|i| i as u8 ^ 0x5a).collect();
        assert_eq!(half.write_at(8192 - 40, &data).unwrap(), 60);
        let mut tail = [0u8; 40];
        mem.read(5 * 4096 - 40, &mut tail).unwrap();
        assert_eq!(tail, data[..40]);
        let mut head = [0u8; 60];
        mem.read(3 * 4096, &mut head).unwrap();
        assert_eq!(head, data[40..]);
        let mut back = vec![0u8; 100];
        assert_eq!(half.read_at(8192 - 40, &mut back).unwrap(), 60);
        assert_eq!(back, data);
        // Ending exactly at the end of the ring wraps the offset to 0.
        assert_eq!(half.write_at(8192 - 8, &data[..8]).unwrap(), 0);
        assert_eq!(half.read_at(8192 - 8, &mut back[..8]).unwrap(), 0);
        assert_eq!(back[..8], data[..8]);
    }

    #[test]
    fn index_loads_are_validated() {
        let mem = GuestMemory::new(4 * 4096).unwrap();
        let half = RingHalf::new(&mem, &[0, 1]).unwrap();
        half.control().set_write_index(4096, Ordering::Relaxed);
        assert_eq!(
            half.load_write_index().unwrap_err(),
            RingError::IndexOutOfRange {
                which: "write",
                value: 4096,
                size: 4096
            }
        );
        half.control().set_read_index(12, Ordering::Relaxed);
        assert_eq!(
            half.load_read_index().unwrap_err(),
            RingError::IndexUnaligned {
                which: "read",
                value: 12
            }
        );
    }
}
