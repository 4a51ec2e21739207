//! The image file as the reader sees it: the bytes on disk with the
//! in-memory log replay overlay applied on top, extended with zeros up to the
//! logical length the log recorded.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use crate::format::LOG_SECTOR;
use vmbdev_block::{BlockError, ReadAt, read_exact_at};

/// One replayed 4 KiB page.
#[derive(Debug, Clone)]
pub(crate) enum Page {
    /// The page reads as zeros.
    Zero,
    /// The page's replayed bytes.
    Data(Box<[u8]>),
}

/// Read-only view of an image file with the log overlay.
#[derive(Debug)]
pub(crate) struct FileView {
    file: Box<dyn ReadAt>,
    path: PathBuf,
    real_len: u64,
    logical_len: u64,
    overlay: BTreeMap<u64, Page>,
}

impl FileView {
    /// Wraps an open file with no overlay.
    pub(crate) fn new(file: Box<dyn ReadAt>, path: PathBuf, real_len: u64) -> Self {
        Self {
            file,
            path,
            real_len,
            logical_len: real_len,
            overlay: BTreeMap::new(),
        }
    }

    /// Installs the replayed pages and the logical length.
    pub(crate) fn set_overlay(&mut self, overlay: BTreeMap<u64, Page>, logical_len: u64) {
        self.overlay = overlay;
        self.logical_len = logical_len.max(self.real_len);
    }

    /// File length as seen through the log.
    pub(crate) fn len(&self) -> u64 {
        self.logical_len
    }

    /// Reads the on-disk bytes only, ignoring the overlay.
    pub(crate) fn read_raw(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        read_exact_at(&*self.file, &self.path, offset, buf)
    }

    /// The host file whose bytes at `offset..offset + len` are exactly what
    /// [`read_at`](Self::read_at) returns there: `None` when the image is
    /// not a host file, the log overlay covers any of it, or it lies past
    /// the end of the file on disk.
    pub(crate) fn direct(&self, offset: u64, len: u64) -> Option<BorrowedFd<'_>> {
        let end = offset.checked_add(len)?;
        if end > self.real_len {
            return None;
        }
        let first_page = offset - offset % LOG_SECTOR;
        if self.overlay.range(first_page..end).next().is_some() {
            return None;
        }
        self.file.host_fd()
    }

    /// Reads `buf.len()` bytes at `offset` through the overlay. Bytes past
    /// the logical end are a short read error.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let end = offset.checked_add(buf.len() as u64);
        let end = match end {
            Some(end) if end <= self.logical_len => end,
            _ => {
                return Err(BlockError::ShortRead {
                    path: self.path.clone(),
                    offset,
                    wanted: buf.len(),
                    got: self
                        .logical_len
                        .saturating_sub(offset)
                        .min(buf.len() as u64) as usize,
                });
            }
        };
        if self.overlay.is_empty() && end <= self.real_len {
            return read_exact_at(&*self.file, &self.path, offset, buf);
        }
        let on_disk = self.real_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (disk_part, zero_part) = buf.split_at_mut(on_disk);
        if !disk_part.is_empty() {
            read_exact_at(&*self.file, &self.path, offset, disk_part)?;
        }
        zero_part.fill(0);
        let first_page = offset - offset % LOG_SECTOR;
        for (&page_offset, page) in self.overlay.range(first_page..end) {
            let from = page_offset.max(offset);
            let to = (page_offset + LOG_SECTOR).min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match page {
                Page::Zero => dst.fill(0),
                Page::Data(bytes) => {
                    let src_start = (from - page_offset) as usize;
                    if let Some(src) = bytes.get(src_start..src_start + dst.len()) {
                        dst.copy_from_slice(src);
                    }
                }
            }
        }
        Ok(())
    }
}
