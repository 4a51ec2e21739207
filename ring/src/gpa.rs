//! GPA ranges (a byte range over a list of guest page numbers) and the GPADL
//! registry (guest-registered page lists by handle).
//!
//! A device that uses a GPADL's pages holds a [`GpadlGuard`] (the ring
//! halves of an endpoint opened with
//! [`Endpoint::open_gpadl`](crate::Endpoint::open_gpadl) hold one each);
//! [`GpadlRegistry::teardown`] waits until the last guard is dropped, and
//! [`GpadlRegistry::try_teardown`] refuses while one exists, so the pages
//! are never handed back to the guest while a device still reads or
//! writes them. Closing the channel drops the ring halves and with them
//! the guards, so a guest cannot hold a teardown up by itself.
//!
//! Both are built only from validated values: a [`GpaRange`] always has a
//! non-zero byte count, a first-page offset below 4096 and exactly the pages
//! it spans. Page numbers are checked against guest memory when accessed.

use crate::memory::{GuestMemory, MemoryError, PAGE_SHIFT, PAGE_SIZE};
use event_listener::Event;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// An error building or using a GPA range or GPADL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpaError {
    /// A range with `byte_count == 0`.
    #[error("GPA range has byte_count 0")]
    EmptyRange,
    /// A first-page offset of 4096 or more (rejected, never masked).
    #[error("GPA range byte_offset {0:#x} is not below 4096")]
    OffsetTooLarge(u32),
    /// A first-page offset that is not 2-byte aligned.
    #[error("GPA range byte_offset {0:#x} is not 2-byte aligned")]
    OddOffset(u32),
    /// The page list does not match what `byte_offset + byte_count` spans.
    #[error("GPA range spans {needed} pages but {present} page numbers are present")]
    PageCount {
        /// Pages the range spans.
        needed: u64,
        /// Page numbers given (or available in the buffer).
        present: u64,
    },
    /// The encoded range list is shorter than its fields claim.
    #[error("GPA range list truncated at byte {0}")]
    Truncated(usize),
    /// A page number outside guest memory.
    #[error("page number {gpn:#x} is outside guest memory of {pages} pages")]
    PageOutOfRange {
        /// The page number.
        gpn: u64,
        /// Pages in guest memory.
        pages: u64,
    },
    /// An access beyond the end of the range.
    #[error("access of {len} bytes at offset {offset} exceeds a GPA range of {byte_count} bytes")]
    BeyondRange {
        /// Offset of the access inside the range.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Length of the range.
        byte_count: u32,
    },
    /// A guest-memory access failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A GPADL with no pages.
    #[error("GPADL {0:#x} has no pages")]
    EmptyGpadl(u32),
    /// A GPADL handle that is not registered.
    #[error("GPADL handle {0:#x} is not registered")]
    UnknownGpadl(u32),
    /// A GPADL handle registered twice.
    #[error("GPADL handle {0:#x} is already registered")]
    DuplicateGpadl(u32),
    /// A GPADL whose pages a device still uses.
    #[error("GPADL {handle:#x} is still in use by {holders} holder(s)")]
    GpadlInUse {
        /// The handle.
        handle: u32,
        /// Guards alive.
        holders: usize,
    },
    /// A GPADL being torn down: no new user may take it.
    #[error("GPADL {0:#x} is being torn down")]
    GpadlTearingDown(u32),
}

/// Page numbers a [`GpaRange`] holds without a heap allocation.
pub const INLINE_PAGES: usize = 9;

/// The page numbers of a range: inline when few, on the heap otherwise.
#[derive(Clone)]
enum PageList {
    Inline { len: u8, pages: [u64; INLINE_PAGES] },
    Heap(Vec<u64>),
}

impl PageList {
    fn from_slice(pages: &[u64]) -> Self {
        if pages.len() <= INLINE_PAGES {
            let mut inline = [0u64; INLINE_PAGES];
            inline[..pages.len()].copy_from_slice(pages);
            Self::Inline {
                len: pages.len() as u8,
                pages: inline,
            }
        } else {
            Self::Heap(pages.to_vec())
        }
    }

    fn from_vec(pages: Vec<u64>) -> Self {
        if pages.len() <= INLINE_PAGES {
            Self::from_slice(&pages)
        } else {
            Self::Heap(pages)
        }
    }

    /// Decodes `count` little-endian page numbers from `bytes` (at least
    /// `8 * count` long, checked by the caller).
    fn from_wire(bytes: &[u8]) -> Self {
        let decode =
            |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let count = bytes.len() / 8;
        if count <= INLINE_PAGES {
            let mut inline = [0u64; INLINE_PAGES];
            for (slot, c) in inline.iter_mut().zip(bytes.chunks_exact(8)) {
                *slot = decode(c);
            }
            Self::Inline {
                len: count as u8,
                pages: inline,
            }
        } else {
            Self::Heap(bytes.chunks_exact(8).map(decode).collect())
        }
    }

    /// [`from_wire`](Self::from_wire) into `self`, keeping a heap list's
    /// capacity so a warm reuse allocates nothing.
    fn assign_wire(&mut self, bytes: &[u8]) {
        match self {
            Self::Heap(pages) if bytes.len() / 8 > INLINE_PAGES => {
                pages.clear();
                pages.extend(
                    bytes.chunks_exact(8).map(|c| {
                        u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                    }),
                );
            }
            _ => *self = Self::from_wire(bytes),
        }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            Self::Inline { len, pages } => &pages[..usize::from(*len)],
            Self::Heap(pages) => pages,
        }
    }
}

impl std::fmt::Debug for PageList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for PageList {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for PageList {}

/// A byte range in guest memory: `byte_count` bytes starting `byte_offset`
/// bytes into the first of `gpns`, continuing through the following pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaRange {
    byte_count: u32,
    byte_offset: u32,
    gpns: PageList,
}

impl GpaError {
    /// The same error with a list offset moved `by` bytes further (for an
    /// error found in a sub-slice of a range list).
    fn shifted(self, by: usize) -> Self {
        match self {
            Self::Truncated(at) => Self::Truncated(at + by),
            other => other,
        }
    }
}

/// Number of pages a range of `byte_count` bytes at `byte_offset` spans.
pub fn pages_spanned(byte_offset: u32, byte_count: u32) -> u64 {
    (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE_SIZE as u64)
}

impl GpaRange {
    /// Builds a range, checking `byte_count != 0`, `byte_offset < 4096` and
    /// 2-byte aligned, and that `gpns` holds exactly the pages spanned.
    pub fn new(byte_count: u32, byte_offset: u32, gpns: Vec<u64>) -> Result<Self, GpaError> {
        Self::check_page_count(byte_count, byte_offset, gpns.len())?;
        Ok(Self {
            byte_count,
            byte_offset,
            gpns: PageList::from_vec(gpns),
        })
    }

    /// [`new`](Self::new) from borrowed page numbers; no heap allocation
    /// for up to [`INLINE_PAGES`] pages.
    pub fn from_pages(byte_count: u32, byte_offset: u32, gpns: &[u64]) -> Result<Self, GpaError> {
        Self::check_page_count(byte_count, byte_offset, gpns.len())?;
        Ok(Self {
            byte_count,
            byte_offset,
            gpns: PageList::from_slice(gpns),
        })
    }

    /// Makes this range [`from_pages`](Self::from_pages)`(byte_count,
    /// byte_offset, gpns)`, keeping a heap page list's capacity: reusing
    /// one range for lists no longer than before allocates nothing. On
    /// error the range is unchanged.
    pub fn assign_pages(
        &mut self,
        byte_count: u32,
        byte_offset: u32,
        gpns: &[u64],
    ) -> Result<(), GpaError> {
        Self::check_page_count(byte_count, byte_offset, gpns.len())?;
        match &mut self.gpns {
            PageList::Heap(pages) if gpns.len() > INLINE_PAGES => {
                pages.clear();
                pages.extend_from_slice(gpns);
            }
            list => *list = PageList::from_slice(gpns),
        }
        self.byte_count = byte_count;
        self.byte_offset = byte_offset;
        Ok(())
    }

    fn check_page_count(byte_count: u32, byte_offset: u32, present: usize) -> Result<(), GpaError> {
        Self::check_header(byte_count, byte_offset)?;
        let needed = pages_spanned(byte_offset, byte_count);
        if present as u64 != needed {
            return Err(GpaError::PageCount {
                needed,
                present: present as u64,
            });
        }
        Ok(())
    }

    fn check_header(byte_count: u32, byte_offset: u32) -> Result<(), GpaError> {
        if byte_count == 0 {
            return Err(GpaError::EmptyRange);
        }
        if byte_offset >= PAGE_SIZE as u32 {
            return Err(GpaError::OffsetTooLarge(byte_offset));
        }
        if byte_offset % 2 != 0 {
            return Err(GpaError::OddOffset(byte_offset));
        }
        Ok(())
    }

    /// Parses `count` ranges in wire form (`byte_count u32, byte_offset u32,
    /// gpn u64 × pages`) from `bytes`, which is already a host copy. Returns
    /// the ranges and the number of bytes consumed. `count` is bounded by the
    /// buffer: each range needs at least 16 bytes, so no allocation exceeds
    /// what the buffer can describe.
    pub fn parse_list(bytes: &[u8], count: u32) -> Result<(Vec<Self>, usize), GpaError> {
        let max_possible = bytes.len() / 16;
        if count as usize > max_possible {
            return Err(GpaError::Truncated(bytes.len()));
        }
        let mut ranges = Vec::with_capacity(count as usize);
        let mut at = 0usize;
        for _ in 0..count {
            let (range, used) = Self::parse_one(&bytes[at..]).map_err(|e| e.shifted(at))?;
            ranges.push(range);
            at += used;
        }
        Ok((ranges, at))
    }

    /// [`parse_list`](Self::parse_list) into `out`, reusing the ranges
    /// (and their page lists) already there: parsing a list no longer than
    /// one parsed before into the same `out` allocates nothing. On error
    /// `out` holds unspecified ranges.
    pub fn parse_list_into(
        bytes: &[u8],
        count: u32,
        out: &mut Vec<Self>,
    ) -> Result<usize, GpaError> {
        if count as usize > bytes.len() / 16 {
            return Err(GpaError::Truncated(bytes.len()));
        }
        let mut at = 0usize;
        for index in 0..count as usize {
            let rest = &bytes[at..];
            let (byte_count, byte_offset, used) =
                Self::wire_header(rest).map_err(|e| e.shifted(at))?;
            let wire_pages = &rest[8..used];
            match out.get_mut(index) {
                Some(range) => {
                    range.byte_count = byte_count;
                    range.byte_offset = byte_offset;
                    range.gpns.assign_wire(wire_pages);
                }
                None => out.push(Self {
                    byte_count,
                    byte_offset,
                    gpns: PageList::from_wire(wire_pages),
                }),
            }
            at += used;
        }
        out.truncate(count as usize);
        Ok(at)
    }

    /// [`parse_list_into`](Self::parse_list_into) of a list checked when
    /// its packet or message was decoded, so it cannot fail; were it to,
    /// `out` is left empty rather than half filled.
    pub(crate) fn parse_checked_list_into(bytes: &[u8], count: u32, out: &mut Vec<Self>) {
        if Self::parse_list_into(bytes, count, out).is_err() {
            out.clear();
        }
    }

    /// Checks `count` ranges in wire form like [`parse_list`](Self::parse_list)
    /// without building them; returns the bytes they take.
    pub fn check_list(bytes: &[u8], count: u32) -> Result<usize, GpaError> {
        if count as usize > bytes.len() / 16 {
            return Err(GpaError::Truncated(bytes.len()));
        }
        let mut at = 0usize;
        for _ in 0..count {
            let rest = &bytes[at..];
            let (_, _, used) = Self::wire_header(rest).map_err(|e| e.shifted(at))?;
            at += used;
        }
        Ok(at)
    }

    /// Parses the first range in wire form from `bytes` (a host copy);
    /// returns it and the bytes it took.
    pub fn parse_one(bytes: &[u8]) -> Result<(Self, usize), GpaError> {
        let (byte_count, byte_offset, used) = Self::wire_header(bytes)?;
        let gpns = PageList::from_wire(&bytes[8..used]);
        Ok((
            Self {
                byte_count,
                byte_offset,
                gpns,
            },
            used,
        ))
    }

    /// Validates the range header at the start of `bytes` and that its
    /// page numbers are present; returns `(byte_count, byte_offset, len)`.
    fn wire_header(bytes: &[u8]) -> Result<(u32, u32, usize), GpaError> {
        let header = bytes.get(..8).ok_or(GpaError::Truncated(0))?;
        let byte_count = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let byte_offset = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        Self::check_header(byte_count, byte_offset)?;
        let needed = pages_spanned(byte_offset, byte_count);
        let available = ((bytes.len() - 8) / 8) as u64;
        if needed > available {
            return Err(GpaError::PageCount {
                needed,
                present: available,
            });
        }
        Ok((byte_count, byte_offset, 8 + needed as usize * 8))
    }

    /// Appends this range in wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        self.encode_to_slice(&mut out[start..]);
    }

    /// Writes this range in wire form at the start of `out`, which holds
    /// at least [`encoded_len`](Self::encoded_len) bytes; returns that
    /// length.
    pub(crate) fn encode_to_slice(&self, out: &mut [u8]) -> usize {
        out[..4].copy_from_slice(&self.byte_count.to_le_bytes());
        out[4..8].copy_from_slice(&self.byte_offset.to_le_bytes());
        let mut at = 8;
        for gpn in self.gpns.as_slice() {
            out[at..at + 8].copy_from_slice(&gpn.to_le_bytes());
            at += 8;
        }
        at
    }

    /// Length of the wire form in bytes.
    pub fn encoded_len(&self) -> usize {
        8 + 8 * self.gpns.as_slice().len()
    }

    /// Length of the range in bytes (never 0).
    pub fn byte_count(&self) -> u32 {
        self.byte_count
    }

    /// Offset of the first byte inside the first page.
    pub fn byte_offset(&self) -> u32 {
        self.byte_offset
    }

    /// The guest page numbers the range spans.
    pub fn gpns(&self) -> &[u64] {
        self.gpns.as_slice()
    }

    /// The same range cut to its first `len` bytes (`0 < len <=
    /// byte_count`), dropping pages no longer spanned.
    pub fn truncated(&self, len: u32) -> Result<Self, GpaError> {
        if len == 0 || len > self.byte_count {
            return Err(GpaError::BeyondRange {
                offset: 0,
                len: u64::from(len),
                byte_count: self.byte_count,
            });
        }
        let pages = pages_spanned(self.byte_offset, len) as usize;
        Self::from_pages(len, self.byte_offset, &self.gpns()[..pages])
    }

    /// The guest-physical pieces `(gpa, len)` covering `len` bytes at
    /// `offset` into the range, each inside one page. Fails if the access
    /// leaves the range or touches a page outside guest memory.
    pub fn segments(
        &self,
        memory: &GuestMemory,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>, GpaError> {
        let mut pieces = Vec::new();
        self.for_each_segment(memory, offset, len, |gpa, len| {
            pieces.push((gpa, len));
            Ok(())
        })?;
        Ok(pieces)
    }

    /// Checks that `len` bytes at `offset` lie inside the range and inside
    /// guest memory, without touching them.
    pub fn check_access(
        &self,
        memory: &GuestMemory,
        offset: u64,
        len: u64,
    ) -> Result<(), GpaError> {
        self.for_each_segment(memory, offset, len, |_, _| Ok(()))
    }

    /// Calls `f` on each piece [`segments`](Self::segments) would return,
    /// in order and without collecting them. Every page is checked against
    /// guest memory before `f` sees any piece.
    pub fn for_each_segment(
        &self,
        memory: &GuestMemory,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64) -> Result<(), GpaError>,
    ) -> Result<(), GpaError> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= u64::from(self.byte_count))
            .ok_or(GpaError::BeyondRange {
                offset,
                len,
                byte_count: self.byte_count,
            })?;
        let start = u64::from(self.byte_offset) + offset;
        let stop = u64::from(self.byte_offset) + end;
        let gpns = self.gpns();
        let pages = memory.page_count();
        if start < stop {
            let first = (start >> PAGE_SHIFT) as usize;
            let last = ((stop - 1) >> PAGE_SHIFT) as usize;
            if let Some(&gpn) = gpns[first..=last].iter().find(|&&gpn| gpn >= pages) {
                return Err(GpaError::PageOutOfRange { gpn, pages });
            }
        }
        // Adjacent pages that are also adjacent in guest memory form one
        // piece.
        let mut piece: Option<(u64, u64)> = None;
        let mut pos = start;
        while pos < stop {
            let in_page = pos & (PAGE_SIZE as u64 - 1);
            let take = (PAGE_SIZE as u64 - in_page).min(stop - pos);
            let gpa = (gpns[(pos >> PAGE_SHIFT) as usize] << PAGE_SHIFT) + in_page;
            piece = match piece {
                Some((at, n)) if at + n == gpa => Some((at, n + take)),
                Some((at, n)) => {
                    f(at, n)?;
                    Some((gpa, take))
                }
                None => Some((gpa, take)),
            };
            pos += take;
        }
        if let Some((at, n)) = piece {
            f(at, n)?;
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` into the range out of guest memory.
    pub fn read_at(
        &self,
        memory: &GuestMemory,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GpaError> {
        let mut done = 0usize;
        self.for_each_segment(memory, offset, buf.len() as u64, |gpa, len| {
            memory.read(gpa, &mut buf[done..done + len as usize])?;
            done += len as usize;
            Ok(())
        })
    }

    /// Copies `data` into guest memory at `offset` into the range.
    pub fn write_at(&self, memory: &GuestMemory, offset: u64, data: &[u8]) -> Result<(), GpaError> {
        let mut done = 0usize;
        self.for_each_segment(memory, offset, data.len() as u64, |gpa, len| {
            memory.write(gpa, &data[done..done + len as usize])?;
            done += len as usize;
            Ok(())
        })
    }
}

/// Who still uses one GPADL.
#[derive(Debug, Default)]
struct Holds {
    count: AtomicUsize,
    tearing_down: AtomicBool,
    released: Event,
}

#[derive(Debug)]
struct Entry {
    pages: Arc<[u64]>,
    holds: Arc<Holds>,
}

/// A user's hold on a GPADL's pages: while any guard of a GPADL exists,
/// [`GpadlRegistry::teardown`] waits and [`GpadlRegistry::try_teardown`]
/// refuses. Clones are holds of their own.
#[derive(Debug)]
pub struct GpadlGuard {
    handle: u32,
    pages: Arc<[u64]>,
    holds: Arc<Holds>,
}

impl GpadlGuard {
    /// The GPADL's handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The GPADL's pages.
    pub fn pages(&self) -> &Arc<[u64]> {
        &self.pages
    }
}

impl Clone for GpadlGuard {
    fn clone(&self) -> Self {
        self.holds.count.fetch_add(1, Ordering::SeqCst);
        Self {
            handle: self.handle,
            pages: self.pages.clone(),
            holds: self.holds.clone(),
        }
    }
}

impl Drop for GpadlGuard {
    fn drop(&mut self) {
        if self.holds.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.holds.released.notify(usize::MAX);
        }
    }
}

/// Guest-registered page lists by 32-bit handle. Shared between the
/// channel-management code that registers and tears down GPADLs and the
/// devices that use them.
#[derive(Debug, Clone, Default)]
pub struct GpadlRegistry {
    gpadls: Arc<RwLock<HashMap<u32, Entry>>>,
}

impl GpadlRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `pages` under `handle`, refusing an empty list, a page
    /// outside `memory` or in one of its holes, and a handle already in use.
    pub fn register(
        &self,
        memory: &GuestMemory,
        handle: u32,
        pages: Vec<u64>,
    ) -> Result<(), GpaError> {
        if pages.is_empty() {
            return Err(GpaError::EmptyGpadl(handle));
        }
        let limit = memory.page_count();
        if let Some(&gpn) = pages.iter().find(|&&gpn| gpn >= limit) {
            return Err(GpaError::PageOutOfRange { gpn, pages: limit });
        }
        for &gpn in &pages {
            memory.check_range(gpn << PAGE_SHIFT, PAGE_SIZE as u64)?;
        }
        let mut map = self.gpadls.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&handle) {
            return Err(GpaError::DuplicateGpadl(handle));
        }
        map.insert(
            handle,
            Entry {
                pages: pages.into(),
                holds: Arc::default(),
            },
        );
        Ok(())
    }

    /// The pages registered under `handle`, without a hold: for code that
    /// only inspects them. A device that reads or writes them takes
    /// [`acquire`](Self::acquire) instead.
    pub fn get(&self, handle: u32) -> Result<Arc<[u64]>, GpaError> {
        let map = self.gpadls.read().unwrap_or_else(|e| e.into_inner());
        map.get(&handle)
            .map(|entry| entry.pages.clone())
            .ok_or(GpaError::UnknownGpadl(handle))
    }

    /// A hold on the pages of `handle`; refused once its teardown began.
    pub fn acquire(&self, handle: u32) -> Result<GpadlGuard, GpaError> {
        let map = self.gpadls.read().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(&handle).ok_or(GpaError::UnknownGpadl(handle))?;
        // Teardown raises the flag under the write lock, so no hold can be
        // taken after it checked the count.
        if entry.holds.tearing_down.load(Ordering::SeqCst) {
            return Err(GpaError::GpadlTearingDown(handle));
        }
        entry.holds.count.fetch_add(1, Ordering::SeqCst);
        Ok(GpadlGuard {
            handle,
            pages: entry.pages.clone(),
            holds: entry.holds.clone(),
        })
    }

    /// Holds alive on `handle` (0 if it is not registered).
    pub fn holders(&self, handle: u32) -> usize {
        let map = self.gpadls.read().unwrap_or_else(|e| e.into_inner());
        map.get(&handle)
            .map_or(0, |entry| entry.holds.count.load(Ordering::SeqCst))
    }

    /// Removes `handle` and returns its pages if no device holds it;
    /// otherwise [`GpaError::GpadlInUse`] and nothing changes.
    pub fn try_teardown(&self, handle: u32) -> Result<Arc<[u64]>, GpaError> {
        let mut map = self.gpadls.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(&handle).ok_or(GpaError::UnknownGpadl(handle))?;
        let holders = entry.holds.count.load(Ordering::SeqCst);
        if holders > 0 {
            return Err(GpaError::GpadlInUse { handle, holders });
        }
        Ok(map.remove(&handle).map(|e| e.pages).unwrap_or_default())
    }

    /// Removes `handle` once no device holds it and returns its pages. New
    /// holds are refused from the call on. If the future is dropped before
    /// it completes, the GPADL stays registered and refuses new holds;
    /// calling `teardown` or `try_teardown` again finishes the job.
    pub async fn teardown(&self, handle: u32) -> Result<Arc<[u64]>, GpaError> {
        let holds = {
            let map = self.gpadls.write().unwrap_or_else(|e| e.into_inner());
            let entry = map.get(&handle).ok_or(GpaError::UnknownGpadl(handle))?;
            entry.holds.tearing_down.store(true, Ordering::SeqCst);
            entry.holds.clone()
        };
        loop {
            if holds.count.load(Ordering::SeqCst) == 0 {
                break;
            }
            let released = holds.released.listen();
            if holds.count.load(Ordering::SeqCst) == 0 {
                break;
            }
            released.await;
        }
        let mut map = self.gpadls.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&handle)
            .map(|e| e.pages)
            .ok_or(GpaError::UnknownGpadl(handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemory {
        GuestMemory::new(16 * 4096).unwrap()
    }

    fn wire(ranges: &[GpaRange]) -> Vec<u8> {
        let mut out = Vec::new();
        for range in ranges {
            range.encode_into(&mut out);
        }
        out
    }

    #[test]
    fn parse_list_into_reuses_and_matches_parse_list() {
        let big = GpaRange::new(12 * 4096, 0, (100..112).collect()).unwrap();
        let small = GpaRange::new(10, 4, vec![7]).unwrap();
        let other = GpaRange::new(11 * 4096, 0, (200..211).collect()).unwrap();
        let mut out = Vec::new();
        let first = wire(&[big, small]);
        assert_eq!(
            GpaRange::parse_list_into(&first, 2, &mut out),
            Ok(first.len())
        );
        assert_eq!(out, GpaRange::parse_list(&first, 2).unwrap().0);
        // Shorter and different: stale entries and pages must not survive.
        let second = wire(std::slice::from_ref(&other));
        assert_eq!(
            GpaRange::parse_list_into(&second, 1, &mut out),
            Ok(second.len())
        );
        assert_eq!(out, [other]);
        assert_eq!(
            GpaRange::parse_list_into(&second[..20], 1, &mut out),
            Err(GpaError::PageCount {
                needed: 11,
                present: 1
            })
        );
    }

    #[test]
    fn assign_pages_matches_from_pages() {
        let mut range = GpaRange::new(12 * 4096, 0, (100..112).collect()).unwrap();
        range
            .assign_pages(10 * 4096 - 6, 4, &(50..60).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(
            range,
            GpaRange::from_pages(10 * 4096 - 6, 4, &(50..60).collect::<Vec<_>>()).unwrap()
        );
        range.assign_pages(8, 0, &[3]).unwrap();
        assert_eq!(range, GpaRange::new(8, 0, vec![3]).unwrap());
        assert_eq!(
            range.assign_pages(4097, 0, &[1]),
            Err(GpaError::PageCount {
                needed: 2,
                present: 1
            })
        );
        assert_eq!(range, GpaRange::new(8, 0, vec![3]).unwrap(), "unchanged");
    }

    #[test]
    fn new_checks_every_field() {
        assert_eq!(GpaRange::new(0, 0, vec![]), Err(GpaError::EmptyRange));
        assert_eq!(
            GpaRange::new(1, 0x1000, vec![0]),
            Err(GpaError::OffsetTooLarge(0x1000))
        );
        assert_eq!(GpaRange::new(1, 3, vec![0]), Err(GpaError::OddOffset(3)));
        assert_eq!(
            GpaRange::new(4096, 2, vec![0]),
            Err(GpaError::PageCount {
                needed: 2,
                present: 1
            })
        );
        assert!(GpaRange::new(4094, 2, vec![0]).is_ok());
    }

    #[test]
    fn non_contiguous_pages_read_and_write_in_order() {
        let mem = memory();
        let range = GpaRange::new(7000, 2048, vec![5, 2, 9]).unwrap();
        let data: Vec<u8> = (0..7000u32).map(|i| (i * 7 % 251) as u8).collect();
        range.write_at(&mem, 0, &data).unwrap();
        let mut page = vec![0u8; 2048];
        mem.read(5 * 4096 + 2048, &mut page).unwrap();
        assert_eq!(page, data[..2048]);
        let mut page = vec![0u8; 4096];
        mem.read(2 * 4096, &mut page).unwrap();
        assert_eq!(page, data[2048..6144]);
        let mut page = vec![0u8; 7000 - 6144];
        mem.read(9 * 4096, &mut page).unwrap();
        assert_eq!(page, data[6144..]);
        let mut back = vec![0u8; 100];
        range.read_at(&mem, 6900, &mut back).unwrap();
        assert_eq!(back, data[6900..]);
        assert!(matches!(
            range.read_at(&mem, 6901, &mut back),
            Err(GpaError::BeyondRange { .. })
        ));
    }

    #[test]
    fn page_outside_memory_is_refused_on_access() {
        let mem = memory();
        let range = GpaRange::new(10, 0, vec![1 << 40]).unwrap();
        assert_eq!(
            range.write_at(&mem, 0, &[0; 10]),
            Err(GpaError::PageOutOfRange {
                gpn: 1 << 40,
                pages: 16
            })
        );
    }

    #[test]
    fn parse_list_roundtrips_and_bounds_count() {
        let a = GpaRange::new(8192, 0, vec![1, 2]).unwrap();
        let b = GpaRange::new(200, 4000, vec![7, 8]).unwrap();
        let mut bytes = Vec::new();
        a.encode_into(&mut bytes);
        b.encode_into(&mut bytes);
        let (ranges, used) = GpaRange::parse_list(&bytes, 2).unwrap();
        assert_eq!(ranges, vec![a, b]);
        assert_eq!(used, bytes.len());
        assert!(matches!(
            GpaRange::parse_list(&bytes, u32::MAX),
            Err(GpaError::Truncated(_))
        ));
        assert!(matches!(
            GpaRange::parse_list(&bytes[..bytes.len() - 8], 2),
            Err(GpaError::PageCount { .. })
        ));
    }

    #[test]
    fn gpadl_registry_refuses_bad_registrations() {
        let mem = memory();
        let reg = GpadlRegistry::new();
        assert_eq!(reg.register(&mem, 1, vec![]), Err(GpaError::EmptyGpadl(1)));
        assert_eq!(
            reg.register(&mem, 1, vec![3, 16]),
            Err(GpaError::PageOutOfRange { gpn: 16, pages: 16 })
        );
        reg.register(&mem, 1, vec![3, 4]).unwrap();
        assert_eq!(
            reg.register(&mem, 1, vec![5]),
            Err(GpaError::DuplicateGpadl(1))
        );
        assert_eq!(&*reg.get(1).unwrap(), &[3, 4]);
        assert_eq!(reg.get(2), Err(GpaError::UnknownGpadl(2)));
        reg.try_teardown(1).unwrap();
        assert_eq!(reg.try_teardown(1), Err(GpaError::UnknownGpadl(1)));
    }

    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn teardown_of_an_unused_gpadl_is_immediate() {
        let mem = memory();
        let reg = GpadlRegistry::new();
        reg.register(&mem, 7, vec![2, 3]).unwrap();
        let guard = reg.acquire(7).unwrap();
        drop(guard);
        assert_eq!(reg.holders(7), 0);
        let done = block_on(poll_once(reg.teardown(7)));
        assert_eq!(done.map(|r| r.map(|p| p.to_vec())), Some(Ok(vec![2, 3])));
        assert_eq!(reg.get(7), Err(GpaError::UnknownGpadl(7)));
        assert_eq!(block_on(reg.teardown(7)), Err(GpaError::UnknownGpadl(7)));
    }

    #[test]
    fn try_teardown_refuses_while_held_and_changes_nothing() {
        let mem = memory();
        let reg = GpadlRegistry::new();
        reg.register(&mem, 1, vec![4]).unwrap();
        let first = reg.acquire(1).unwrap();
        let second = first.clone();
        assert_eq!(reg.holders(1), 2);
        assert_eq!(
            reg.try_teardown(1),
            Err(GpaError::GpadlInUse {
                handle: 1,
                holders: 2
            })
        );
        drop(first);
        assert_eq!(
            reg.try_teardown(1),
            Err(GpaError::GpadlInUse {
                handle: 1,
                holders: 1
            })
        );
        // Still registered and usable: a refused try changes nothing.
        let third = reg.acquire(1).unwrap();
        drop((second, third));
        assert_eq!(&*reg.try_teardown(1).unwrap(), &[4]);
    }

    #[test]
    fn teardown_waits_for_the_last_guard_and_refuses_new_ones() {
        let mem = memory();
        let reg = GpadlRegistry::new();
        reg.register(&mem, 3, vec![5, 6]).unwrap();
        let guard = reg.acquire(3).unwrap();
        let other = guard.clone();
        let mut teardown = Box::pin(reg.teardown(3));
        assert!(block_on(poll_once(teardown.as_mut())).is_none());
        assert_eq!(reg.acquire(3).err(), Some(GpaError::GpadlTearingDown(3)));
        drop(guard);
        assert!(
            block_on(poll_once(teardown.as_mut())).is_none(),
            "one guard left"
        );
        // The last guard goes away on another thread; the waiter wakes.
        let releaser = std::thread::spawn(move || drop(other));
        assert_eq!(&*block_on(teardown).unwrap(), &[5, 6]);
        releaser.join().unwrap();
        assert_eq!(reg.get(3), Err(GpaError::UnknownGpadl(3)));
    }

    #[test]
    fn a_dropped_teardown_can_be_finished_later() {
        let mem = memory();
        let reg = GpadlRegistry::new();
        reg.register(&mem, 9, vec![1]).unwrap();
        let guard = reg.acquire(9).unwrap();
        assert!(block_on(poll_once(reg.teardown(9))).is_none());
        assert_eq!(reg.acquire(9).err(), Some(GpaError::GpadlTearingDown(9)));
        drop(guard);
        assert_eq!(&*reg.try_teardown(9).unwrap(), &[1]);
    }
}
