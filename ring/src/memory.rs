//! Guest memory: shared mappings addressed by guest physical address.
//!
//! This is the only module of the workspace with `unsafe` code.
//!
//! # Layout
//!
//! Guest memory is a sorted list of non-overlapping [`MemoryRegion`]s, each
//! a page-aligned run of guest physical addresses backed by host memory.
//! Addresses between regions are holes: any access that touches one is
//! refused with [`MemoryError::Hole`] naming the first unbacked address.
//! The memory comes from one of three places:
//!
//! - [`GuestMemory::new`]: our own sealed memfd, one region at GPA 0 (tests,
//!   the demo);
//! - [`GuestMemory::from_memfd`]: a memfd (or any shareable fd carrying
//!   `F_SEAL_SHRINK`) the VMM created, mapped here region by region;
//! - [`GuestMemory::from_raw_mapping`]: a mapping the VMM already made,
//!   kept alive by an owner value dropped with the last clone;
//! - [`GuestMemory::on_heap`]: a zeroed heap block, one region at GPA 0,
//!   that no other process can map (no fd). It is what [`GuestMemory::new`]
//!   gives under Miri, which cannot create or map a memfd, so the ring's
//!   tests run there unchanged.
//!
//! The fd and the layout ([`GuestMemory::fd`], [`GuestMemory::regions`])
//! are what another process needs to map the same memory.
//!
//! # Why concurrent guest writes are not undefined behaviour
//!
//! The guest may write any byte of its memory at any time, concurrently
//! with the host. Guest memory is therefore treated as shared *atomic*
//! memory: no Rust reference to non-atomic data (`&[u8]`, `&mut [u8]`,
//! `&T`) into it is ever formed (only short-lived `&AtomicU8`/`&AtomicU64`
//! handles, which permit concurrent mutation), and every host access is an
//! atomic access — `AtomicU64` relaxed
//! loads and stores for the 8-aligned words of a copy, `AtomicU8` for its
//! unaligned head and tail, and `AtomicU32`/`AtomicU64` for control fields.
//! Atomic accesses racing with each other (or with a guest outside the
//! process) are not data races, so the compiler may neither assume the
//! bytes are stable nor invent, merge or repeat accesses; each byte copied
//! is some value the byte held, and a torn or changing multi-byte value is
//! just an untrusted value, which every caller validates after copying it
//! into host memory. (Relaxed atomics compile to plain loads and stores on
//! x86-64 and AArch64.) One caveat remains for a guest simulated by another
//! thread of this process through this same API: racing atomic accesses of
//! different sizes to overlapping bytes are outside the C++/Rust memory
//! model's guarantees, although every supported target gives them the
//! hardware's plain single-copy atomicity.
//!
//! Bulk copies and fills of at least 256 bytes (`BULK_MIN`) on x86-64 (not
//! under Miri, which cannot run `asm!`) use one
//! `rep movsb` / `rep stosb` in an `asm!` block instead of a word loop.
//! The block is opaque to the compiler and its effect is exactly that of
//! a sequence of relaxed byte-sized atomic accesses in some order (the
//! instruction's architectural definition), so the argument above holds
//! unchanged; the CPU's fast-string microcode moves whole cache lines,
//! which relaxed word atomics (never vectorised) cannot.
#![allow(unsafe_code)]

use std::any::Any;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`: a page number is `gpa >> PAGE_SHIFT`.
pub const PAGE_SHIFT: u32 = 12;

const PAGE_MASK: u64 = PAGE_SIZE as u64 - 1;

/// An error accessing or building guest memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The access does not lie below the end of guest memory.
    #[error(
        "guest access of {len} bytes at gpa {gpa:#x} is outside guest memory of {size:#x} bytes"
    )]
    OutOfRange {
        /// Guest physical address of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
        /// End of guest memory (end of its last region).
        size: u64,
    },
    /// The access touches a hole: an address no region backs.
    #[error(
        "guest access of {len} bytes at gpa {gpa:#x} touches unbacked gpa {unbacked:#x} (a hole in guest memory)"
    )]
    Hole {
        /// Guest physical address of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
        /// The first address of the access that no region backs.
        unbacked: u64,
    },
    /// An atomic access at an address not aligned to its size.
    #[error("atomic access at gpa {gpa:#x} is not {align}-byte aligned")]
    Unaligned {
        /// Guest physical address of the access.
        gpa: u64,
        /// Required alignment.
        align: u64,
    },
    /// The requested size is zero, not a whole number of pages, or too large.
    #[error(
        "guest memory size {0:#x} is not a non-zero multiple of 4096 that fits the address space"
    )]
    BadSize(u64),
    /// A layout with no regions.
    #[error("guest memory layout has no regions")]
    NoRegions,
    /// A region that is empty, not page-aligned, or overflows.
    #[error(
        "guest memory region at gpa {gpa:#x} of {len:#x} bytes at backing offset {offset:#x} is invalid: {reason}"
    )]
    BadRegion {
        /// Guest physical address of the region.
        gpa: u64,
        /// Length of the region.
        len: u64,
        /// Backing offset of the region.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two regions share guest physical addresses.
    #[error(
        "guest memory region at gpa {gpa:#x} overlaps the region at gpa {other_gpa:#x} ending at {other_end:#x}"
    )]
    Overlap {
        /// Start of the later region.
        gpa: u64,
        /// Start of the region it overlaps.
        other_gpa: u64,
        /// End of the region it overlaps.
        other_end: u64,
    },
    /// The backing (fd or mapping) is smaller than the layout needs.
    #[error("guest memory {backing} is {size:#x} bytes but the layout needs {needed:#x}")]
    BackingTooSmall {
        /// `"fd"` or `"mapping"`.
        backing: &'static str,
        /// Size of the fd (fstat) or of the mapping.
        size: u64,
        /// Bytes the layout reaches (largest `offset + len`).
        needed: u64,
    },
    /// An adopted fd without `F_SEAL_SHRINK`: another process could shrink
    /// it under the mapping and turn a copy into `SIGBUS`.
    #[error(
        "guest memory fd lacks F_SEAL_SHRINK (seals {seals:#x}); another holder could shrink it under the mapping"
    )]
    NotSealed {
        /// The seals the fd carries (`F_GET_SEALS`).
        seals: u32,
    },
    /// A mapping base that is not page-aligned.
    #[error("guest memory mapping at host address {addr:#x} is not page-aligned")]
    UnalignedMapping {
        /// The host address.
        addr: usize,
    },
    /// An fd operation failed.
    #[error("cannot {op} guest memory fd: {error}")]
    Fd {
        /// The operation (`fstat`, `F_GET_SEALS`, ...).
        op: &'static str,
        /// The operating system's error.
        error: String,
    },
    /// The operating system refused to create the mapping.
    #[error("cannot map guest memory: {0}")]
    Map(String),
}

/// Whether [`GuestMemory::read_from_file`] may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileReadMode {
    /// An ordinary read: waits for the disk if the bytes are not cached.
    Blocking,
    /// `RWF_NOWAIT`: takes only what the page cache holds and reports
    /// [`FileReadError::WouldBlock`] for the rest, so a caller learns that a
    /// read would wait without waiting.
    NoWait,
}

/// An error reading a file into guest memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileReadError {
    /// A guest range is outside guest memory or touches a hole; nothing
    /// was read (every range is checked before the first system call).
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The ranges add up to more than a file offset can address.
    #[error("file read of {len} bytes at file offset {offset:#x} overflows the file offset range")]
    TooLong {
        /// File offset of the read.
        offset: u64,
        /// Sum of the range lengths (saturated).
        len: u64,
    },
    /// In [`FileReadMode::NoWait`], the rest is not in the page cache (or
    /// the file system cannot tell without waiting). The first `done` bytes
    /// were placed; the caller reads again, blocking, to get the rest.
    #[error("file read at offset {offset:#x} would block after {done} bytes")]
    WouldBlock {
        /// File offset of the read.
        offset: u64,
        /// Bytes already placed in guest memory, in range order.
        done: usize,
    },
    /// The file ended first. The first `got` bytes were placed; guest bytes
    /// after them are left as they were (never zero-filled: a file shorter
    /// than its owner says is an error, not a hole).
    #[error("file ended during a read of {wanted} bytes at offset {offset:#x}: got {got}")]
    EndOfFile {
        /// File offset of the read.
        offset: u64,
        /// Bytes asked for.
        wanted: u64,
        /// Bytes placed before the end of file.
        got: usize,
    },
    /// The operating system refused the read.
    #[error("cannot read file at offset {offset:#x} into guest memory: {errno}")]
    Io {
        /// File offset the failing call started at.
        offset: u64,
        /// The error number.
        errno: rustix::io::Errno,
    },
}

/// Iovecs handed to one `preadv2` call: on the stack, so a read needs no
/// heap allocation, and far below `IOV_MAX` (1024 on Linux); a read with
/// more pieces takes several calls.
const IOVECS_PER_CALL: usize = 16;

/// One run of guest physical addresses and where its bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryRegion {
    /// First guest physical address (page-aligned).
    pub gpa: u64,
    /// Length in bytes (a non-zero multiple of 4096).
    pub len: u64,
    /// Page-aligned offset of the region's first byte in the backing: the
    /// fd offset for a memfd, the byte offset from the base of a
    /// VMM-owned mapping.
    pub offset: u64,
}

impl MemoryRegion {
    /// A region of `len` bytes at `gpa`, backed at `offset`.
    pub const fn new(gpa: u64, len: u64, offset: u64) -> Self {
        Self { gpa, len, offset }
    }

    fn bad(&self, reason: &'static str) -> MemoryError {
        MemoryError::BadRegion {
            gpa: self.gpa,
            len: self.len,
            offset: self.offset,
            reason,
        }
    }
}

/// Checks a layout (every region non-empty, page-aligned, without overflow,
/// no two overlapping) and returns it sorted by guest address, with the
/// number of backing bytes it reaches.
fn check_layout(regions: &[MemoryRegion]) -> Result<(Vec<MemoryRegion>, u64), MemoryError> {
    if regions.is_empty() {
        return Err(MemoryError::NoRegions);
    }
    let mut sorted = regions.to_vec();
    sorted.sort_by_key(|r| r.gpa);
    let mut needed = 0u64;
    for r in &sorted {
        if r.len == 0 {
            return Err(r.bad("empty"));
        }
        if (r.gpa | r.len | r.offset) & PAGE_MASK != 0 {
            return Err(r.bad("not page-aligned"));
        }
        if r.len > isize::MAX as u64 {
            return Err(r.bad("longer than the address space"));
        }
        r.gpa
            .checked_add(r.len)
            .ok_or(r.bad("gpa + len overflows"))?;
        let end = r
            .offset
            .checked_add(r.len)
            .ok_or(r.bad("offset + len overflows"))?;
        needed = needed.max(end);
    }
    for w in sorted.windows(2) {
        if w[1].gpa < w[0].gpa + w[0].len {
            return Err(MemoryError::Overlap {
                gpa: w[1].gpa,
                other_gpa: w[0].gpa,
                other_end: w[0].gpa + w[0].len,
            });
        }
    }
    Ok((sorted, needed))
}

/// How bytes move between guest and host memory. Selectable only for
/// measurement (feature `copy-baseline`); the default is the sound
/// relaxed-atomic copy.
#[cfg(feature = "copy-baseline")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Relaxed `AtomicU64` words with `AtomicU8` head and tail (default).
    Atomic,
    /// `read_volatile`/`write_volatile` of `u64` words, `u8` head and tail.
    Volatile,
    /// The former plain `copy_nonoverlapping`, which races with concurrent
    /// guest writes: for comparison only.
    Baseline,
}

/// A guest's physical memory. Cheap to clone; clones share the mapping.
#[derive(Clone)]
pub struct GuestMemory {
    inner: Arc<Mapping>,
}

/// One region as the host sees it: guest range and host address of `gpa`.
struct Region {
    gpa: u64,
    end: u64,
    host: NonNull<u8>,
}

struct Mapping {
    /// Sorted, non-overlapping, each host pointer page-aligned and valid
    /// for `end - gpa` bytes while the mapping lives.
    regions: Box<[Region]>,
    layout: Box<[MemoryRegion]>,
    /// End of the last region.
    size: u64,
    /// Mappings made here, unmapped on drop.
    maps: Vec<(NonNull<u8>, usize)>,
    fd: Option<OwnedFd>,
    /// Keeps a VMM-owned mapping alive; dropped after `maps` are unmapped.
    owner: Option<Box<dyn Any + Send + Sync>>,
    #[cfg(feature = "copy-baseline")]
    method: AtomicU8,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all
// access goes through atomics on raw pointers, never plain references, and
// the owner is `Send + Sync` itself.
unsafe impl Send for Mapping {}
// SAFETY: as above; concurrent access from several threads is the design.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        for &(ptr, len) in &self.maps {
            // SAFETY: `ptr`/`len` are exactly a mapping made by `mmap` in
            // `from_memfd`, and no pointer into it outlives the last
            // `Arc<Mapping>`: every access borrows the `GuestMemory`.
            let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
        }
    }
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("size", &self.inner.size)
            .field("regions", &self.inner.layout)
            .field("fd", &self.inner.fd)
            .field("vmm_owned", &self.inner.owner.is_some())
            .finish()
    }
}

impl GuestMemory {
    /// Allocates `size` bytes of zeroed guest memory (a whole number of
    /// pages), one region at guest physical address 0, in a memfd of our
    /// own sealed against shrinking and growing.
    ///
    /// Under Miri this is [`on_heap`](Self::on_heap): the same memory
    /// without an fd.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        check_own_size(size)?;
        if cfg!(miri) {
            return Self::on_heap(size);
        }
        let fd = rustix::fs::memfd_create(
            "vmbdev-guest-memory",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| MemoryError::Map(e.to_string()))?;
        rustix::fs::fcntl_add_seals(
            &fd,
            rustix::fs::SealFlags::SHRINK
                | rustix::fs::SealFlags::GROW
                | rustix::fs::SealFlags::SEAL,
        )
        .map_err(|e| MemoryError::Fd {
            op: "seal (F_ADD_SEALS)",
            error: e.to_string(),
        })?;
        Self::from_memfd(fd, &[MemoryRegion::new(0, size, 0)])
    }

    /// Allocates `size` bytes of zeroed guest memory (a whole number of
    /// pages) on the heap, one region at guest physical address 0. Nothing
    /// outside this process can map it ([`fd`](Self::fd) is `None`), so it
    /// suits in-process tests and tools that cannot map memory (Miri).
    pub fn on_heap(size: u64) -> Result<Self, MemoryError> {
        check_own_size(size)?;
        let block = HeapBlock::zeroed(size as usize)?;
        let base = block.base;
        // SAFETY: `base..base + size` is a live, page-aligned, readable and
        // writable allocation owned by `block`, which the memory keeps until
        // its last clone drops; `HeapBlock` holds only the raw pointer, so
        // no Rust reference into the bytes exists.
        unsafe {
            Self::from_raw_mapping(
                base,
                size as usize,
                &[MemoryRegion::new(0, size, 0)],
                Box::new(block),
            )
        }
    }

    /// Adopts `fd`, a memfd (or another shareable fd that supports seals)
    /// created by the VMM, and maps each region of `regions` from its fd
    /// offset. Addresses no region covers are holes.
    ///
    /// Refuses an invalid layout (empty, unaligned, overflowing or
    /// overlapping regions), an fd without `F_SEAL_SHRINK` (another holder
    /// could shrink it under the mapping, turning a copy into `SIGBUS`),
    /// and an fd smaller than the layout reaches.
    pub fn from_memfd(fd: OwnedFd, regions: &[MemoryRegion]) -> Result<Self, MemoryError> {
        let (layout, needed) = check_layout(regions)?;
        // Seals first: once F_SEAL_SHRINK is on, the size read next stays.
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| MemoryError::Fd {
            op: "read the seals (F_GET_SEALS) of",
            error: e.to_string(),
        })?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(MemoryError::NotSealed {
                seals: seals.bits(),
            });
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| MemoryError::Fd {
            op: "fstat",
            error: e.to_string(),
        })?;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size < needed {
            return Err(MemoryError::BackingTooSmall {
                backing: "fd",
                size,
                needed,
            });
        }
        let mut mapping = Mapping::empty(&layout);
        let mut hosts = Vec::with_capacity(layout.len());
        for r in &layout {
            // SAFETY: a fresh shared mapping of `r.len` bytes of the fd at a
            // kernel-chosen address; nothing else in this process refers to
            // that range. The fd is sealed against shrinking and at least
            // `r.offset + r.len` long (checked above), so no access faults.
            let ptr = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    r.len as usize,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::SHARED,
                    &fd,
                    r.offset,
                )
            }
            .map_err(|e| MemoryError::Map(format!("region at gpa {:#x}: {e}", r.gpa)))?;
            let host = NonNull::new(ptr.cast::<u8>())
                .ok_or_else(|| MemoryError::Map("null mapping".into()))?;
            // `mapping` unmaps everything pushed so far if a later step fails.
            mapping.maps.push((host, r.len as usize));
            hosts.push(host);
        }
        mapping.regions = regions_at(&layout, hosts);
        mapping.fd = Some(fd);
        Ok(Self {
            inner: Arc::new(mapping),
        })
    }

    /// Uses a mapping the VMM made: `len` bytes at `base`, with each region
    /// of `regions` at byte `offset` from `base`. `owner` is dropped after
    /// the last clone of the returned memory (or before this returns an
    /// error); it is what keeps the mapping alive, and may unmap it.
    ///
    /// # Safety
    ///
    /// From this call until `owner` is dropped:
    ///
    /// - `base..base + len` is mapped readable and writable, and stays so:
    ///   nothing unmaps, remaps or `mprotect`s it, and nothing shrinks a
    ///   file behind it (so no access faults);
    /// - no Rust reference to non-atomic data (`&[u8]`, `&mut [u8]`, ...)
    ///   into the range exists or is created in this process; other code
    ///   of this process touches it only through raw-pointer atomic
    ///   accesses. The guest, a VMM's vCPUs or other processes may write it
    ///   at any time.
    pub unsafe fn from_raw_mapping(
        base: NonNull<u8>,
        len: usize,
        regions: &[MemoryRegion],
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<Self, MemoryError> {
        let (layout, needed) = check_layout(regions)?;
        let addr = base.as_ptr() as usize;
        if addr as u64 & PAGE_MASK != 0 {
            return Err(MemoryError::UnalignedMapping { addr });
        }
        if (len as u64) < needed || len > isize::MAX as usize {
            return Err(MemoryError::BackingTooSmall {
                backing: "mapping",
                size: len as u64,
                needed,
            });
        }
        let mut mapping = Mapping::empty(&layout);
        let hosts = layout
            .iter()
            // `offset + len <= needed <= len` of the mapping: in bounds.
            .map(|r| NonNull::new(base.as_ptr().wrapping_add(r.offset as usize)).unwrap_or(base))
            .collect();
        mapping.regions = regions_at(&layout, hosts);
        mapping.owner = Some(owner);
        Ok(Self {
            inner: Arc::new(mapping),
        })
    }

    /// End of guest memory: the guest physical address after the last
    /// region (equal to the size when there are no holes).
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Number of guest page numbers below [`size`](Self::size), holes
    /// included.
    pub fn page_count(&self) -> u64 {
        self.size() >> PAGE_SHIFT
    }

    /// The layout, sorted by guest address. With [`fd`](Self::fd) this is
    /// what another process needs to map the same memory: each region's
    /// `offset` is its fd offset (for memory from [`new`](Self::new) or
    /// [`from_memfd`](Self::from_memfd)).
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.inner.layout
    }

    /// The memfd backing this memory, for handing to another process
    /// (e.g. `try_clone_to_owned` and `SCM_RIGHTS`); `None` for a
    /// VMM-owned mapping.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Checks that an access of `len` bytes at `gpa` lies in guest memory
    /// and touches no hole.
    pub fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        self.span(gpa, len).map(|_| ())
    }

    /// Selects how copies move bytes, for all clones (measurement only).
    #[cfg(feature = "copy-baseline")]
    pub fn set_copy_method(&self, method: CopyMethod) {
        self.inner.method.store(method as u8, Ordering::Relaxed);
    }

    #[cfg(feature = "copy-baseline")]
    fn method(&self) -> CopyMethod {
        match self.inner.method.load(Ordering::Relaxed) {
            1 => CopyMethod::Volatile,
            2 => CopyMethod::Baseline,
            _ => CopyMethod::Atomic,
        }
    }

    /// Checks `[gpa, gpa + len)` and returns the index of the region
    /// holding `gpa`; the following regions cover the rest without a gap.
    fn span(&self, gpa: u64, len: u64) -> Result<usize, MemoryError> {
        let size = self.inner.size;
        let end = match gpa.checked_add(len) {
            Some(end) if end <= size => end,
            _ => return Err(MemoryError::OutOfRange { gpa, len, size }),
        };
        let regions = &self.inner.regions;
        let first = if regions.len() == 1 {
            0
        } else {
            regions.partition_point(|r| r.gpa <= gpa).saturating_sub(1)
        };
        if len == 0 {
            return Ok(first);
        }
        let hole = |unbacked| MemoryError::Hole { gpa, len, unbacked };
        let r = &regions[first];
        if gpa < r.gpa || gpa >= r.end {
            return Err(hole(gpa));
        }
        let (mut i, mut reach) = (first, r.end);
        while reach < end {
            i += 1;
            match regions.get(i) {
                Some(next) if next.gpa == reach => reach = next.end,
                _ => return Err(hole(reach)),
            }
        }
        Ok(first)
    }

    /// Calls `f(host, offset, n)` for each piece of `[gpa, gpa + len)`
    /// (checked by `span`, which returned `first`): `n` bytes at host
    /// address `host`, `offset` bytes into the access.
    fn pieces(&self, first: usize, gpa: u64, len: u64, mut f: impl FnMut(*mut u8, usize, usize)) {
        let (mut at, mut done) = (gpa, 0u64);
        for r in &self.inner.regions[first..] {
            if done == len {
                break;
            }
            let n = (r.end - at).min(len - done);
            // In bounds of the region's mapping: `r.gpa <= at < r.end`.
            let host = r.host.as_ptr().wrapping_add((at - r.gpa) as usize);
            f(host, done as usize, n as usize);
            at += n;
            done += n;
        }
    }

    /// Copies guest bytes at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let first = self.span(gpa, len)?;
        self.pieces(first, gpa, len, |src, at, n| {
            // SAFETY: `span` checked that `src..src + n` lies in a region,
            // mapped while `self` lives; `buf` is host memory.
            unsafe { self.copy_out(src, &mut buf[at..at + n]) }
        });
        Ok(())
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let len = data.len() as u64;
        let first = self.span(gpa, len)?;
        self.pieces(first, gpa, len, |dst, at, n| {
            // SAFETY: `span` checked that `dst..dst + n` lies in a region,
            // mapped writable while `self` lives; `data` is host memory.
            unsafe { self.copy_in(dst, &data[at..at + n]) }
        });
        Ok(())
    }

    /// Copies `dst.len()` guest bytes at host address `src` into `dst`, by
    /// the copy method in force.
    ///
    /// # Safety
    ///
    /// `src..src + dst.len()` lies in a region of this memory.
    unsafe fn copy_out(&self, src: *const u8, dst: &mut [u8]) {
        #[cfg(feature = "copy-baseline")]
        match self.method() {
            CopyMethod::Atomic => {}
            // SAFETY: as below.
            CopyMethod::Volatile => return unsafe { volatile_from_guest(src, dst) },
            // SAFETY: the range is mapped; this copy races with
            // concurrent guest writes and exists only to measure.
            CopyMethod::Baseline => {
                return unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
            }
        }
        // SAFETY: the range lies in a region, mapped while `self` lives
        // (caller); `dst` is host memory.
        unsafe { copy_from_guest(src, dst) }
    }

    /// Copies `src` into guest memory at host address `dst`, by the copy
    /// method in force.
    ///
    /// # Safety
    ///
    /// `dst..dst + src.len()` lies in a region of this memory.
    unsafe fn copy_in(&self, dst: *mut u8, src: &[u8]) {
        #[cfg(feature = "copy-baseline")]
        match self.method() {
            CopyMethod::Atomic => {}
            // SAFETY: as below.
            CopyMethod::Volatile => return unsafe { volatile_to_guest(dst, src) },
            // SAFETY: the range is mapped; this copy races with
            // concurrent guest accesses and exists only to measure.
            CopyMethod::Baseline => {
                return unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            }
        }
        // SAFETY: the range lies in a region, mapped writable while `self`
        // lives (caller); `src` is host memory.
        unsafe { copy_to_guest(dst, src) }
    }

    /// Sets `len` guest bytes at `gpa` to `byte`.
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        let first = self.span(gpa, len)?;
        self.pieces(first, gpa, len, |dst, _, n| {
            // SAFETY: `span` checked that `dst..dst + n` lies in a region,
            // mapped writable while `self` lives.
            unsafe { fill_guest(dst, n, byte) }
        });
        Ok(())
    }

    /// Reads file bytes from `fd` at `file_offset` straight into guest
    /// memory, filling `ranges` (`(gpa, len)` pairs) in order: the kernel
    /// copies from the page cache into the guest's pages, with no host
    /// buffer in between. Returns the bytes read (the ranges' total).
    ///
    /// Every range is checked against the regions first, so a range
    /// outside guest memory or across a hole is refused with no byte
    /// written. Short reads continue where they stopped, `EINTR` is
    /// retried, and end of file before the total is
    /// [`FileReadError::EndOfFile`]. In [`FileReadMode::NoWait`] the read
    /// uses `RWF_NOWAIT`; `EAGAIN` (not cached) and `EOPNOTSUPP` (a file
    /// system that cannot tell) both end it with
    /// [`FileReadError::WouldBlock`].
    pub fn read_from_file<I>(
        &self,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        ranges: I,
        mode: FileReadMode,
    ) -> Result<usize, FileReadError>
    where
        I: IntoIterator<Item = (u64, u64)>,
        I::IntoIter: Clone,
    {
        let ranges = ranges.into_iter();
        let mut total = 0u64;
        for (gpa, len) in ranges.clone() {
            self.span(gpa, len)?;
            total = total.saturating_add(len);
        }
        let too_long = FileReadError::TooLong {
            offset: file_offset,
            len: total,
        };
        match file_offset.checked_add(total) {
            Some(end) if end <= i64::MAX as u64 && total <= isize::MAX as u64 => {}
            _ => return Err(too_long),
        }
        let mut batch = IovecBatch::new(fd, file_offset, total, mode);
        for (gpa, len) in ranges {
            let first = self.span(gpa, len)?;
            let (mut at, mut left) = (gpa, len);
            for r in &self.inner.regions[first..] {
                if left == 0 {
                    break;
                }
                let n = (r.end - at).min(left);
                // In bounds of the region's mapping: `r.gpa <= at < r.end`
                // and `at + n <= r.end` (checked by `span`).
                let host = r.host.as_ptr().wrapping_add((at - r.gpa) as usize);
                batch.push(host, n as usize)?;
                at += n;
                left -= n;
            }
        }
        batch.flush()?;
        Ok(batch.done)
    }

    /// Writes the `len` bytes of guest memory at `gpa` to `fd` at its
    /// current position (standard output, a pipe, a file being written in
    /// order), the way a device reads a buffer by DMA: the kernel copies
    /// straight from guest memory, with no copy through the host.
    ///
    /// The range is checked first, so a range outside guest memory or
    /// across a hole is refused (`InvalidInput`) with nothing written.
    /// Short writes continue where they stopped and `EINTR` is retried.
    pub fn write_to_stream(&self, fd: BorrowedFd<'_>, gpa: u64, len: u64) -> std::io::Result<()> {
        let first = self
            .span(gpa, len)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (mut at, mut left) = (gpa, len);
        for r in &self.inner.regions[first..] {
            while left > 0 && at < r.end {
                let n = ((r.end - at).min(left) as usize).min(isize::MAX as usize);
                // In bounds of the region's mapping: `r.gpa <= at < r.end`
                // and `at + n <= r.end` (checked by `span`).
                let host = r.host.as_ptr().wrapping_add((at - r.gpa) as usize);
                // SAFETY: `host..host + n` lies inside one guest-memory
                // region, mapped for as long as `self` lives, which outlasts
                // this call. The kernel only reads those bytes, from outside
                // the Rust abstract machine, through the raw address: no Rust
                // reference to them exists, so a guest writing them
                // concurrently races only with the kernel's copy, as with
                // DMA, and what reaches the fd is some mix of the bytes.
                let written = unsafe { libc::write(fd.as_raw_fd(), host.cast(), n) };
                if written < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                at += written as u64;
                left -= written as u64;
            }
            if left == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Host address of the `align`-aligned `align`-byte field at `gpa`.
    fn field(&self, gpa: u64, align: u64) -> Result<*mut u8, MemoryError> {
        if gpa % align != 0 {
            return Err(MemoryError::Unaligned { gpa, align });
        }
        let first = self.span(gpa, align)?;
        // An aligned field never crosses a page, so never a region.
        let r = &self.inner.regions[first];
        Ok(r.host.as_ptr().wrapping_add((gpa - r.gpa) as usize))
    }

    /// Host address of the page at page-aligned `gpa`: regions are
    /// page-aligned, so a page is always inside one region.
    fn host_page(&self, gpa: u64) -> Result<NonNull<u8>, MemoryError> {
        let ptr = self.field(gpa, PAGE_SIZE as u64)?;
        NonNull::new(ptr).ok_or(MemoryError::Unaligned { gpa, align: 1 })
    }

    fn atomic_u32(&self, gpa: u64) -> Result<&AtomicU32, MemoryError> {
        let ptr = self.field(gpa, 4)?;
        // SAFETY: the pointer is 4-aligned (regions are page-aligned in
        // host and guest space, and `gpa` is 4-aligned), inside a region for
        // 4 bytes, and valid for as long as `self`. All access to guest
        // memory from this process is atomic, so the guest writing the
        // field concurrently is no data race.
        Ok(unsafe { AtomicU32::from_ptr(ptr.cast()) })
    }

    fn atomic_u64(&self, gpa: u64) -> Result<&AtomicU64, MemoryError> {
        let ptr = self.field(gpa, 8)?;
        // SAFETY: as in `atomic_u32`, with 8-byte alignment and size.
        Ok(unsafe { AtomicU64::from_ptr(ptr.cast()) })
    }

    /// Atomically loads the little-endian `u32` at `gpa` (4-aligned).
    pub fn load_u32(&self, gpa: u64, order: Ordering) -> Result<u32, MemoryError> {
        Ok(u32::from_le(self.atomic_u32(gpa)?.load(order)))
    }

    /// Atomically stores the little-endian `u32` at `gpa` (4-aligned).
    pub fn store_u32(&self, gpa: u64, value: u32, order: Ordering) -> Result<(), MemoryError> {
        self.atomic_u32(gpa)?.store(value.to_le(), order);
        Ok(())
    }

    /// Atomically loads the little-endian `u64` at `gpa` (8-aligned).
    pub fn load_u64(&self, gpa: u64, order: Ordering) -> Result<u64, MemoryError> {
        Ok(u64::from_le(self.atomic_u64(gpa)?.load(order)))
    }

    /// Atomically stores the little-endian `u64` at `gpa` (8-aligned).
    pub fn store_u64(&self, gpa: u64, value: u64, order: Ordering) -> Result<(), MemoryError> {
        self.atomic_u64(gpa)?.store(value.to_le(), order);
        Ok(())
    }

    /// Atomically ORs `bits` into the little-endian `u64` at `gpa`
    /// (8-aligned); returns the previous value.
    pub fn fetch_or_u64(&self, gpa: u64, bits: u64, order: Ordering) -> Result<u64, MemoryError> {
        Ok(u64::from_le(
            self.atomic_u64(gpa)?.fetch_or(bits.to_le(), order),
        ))
    }

    /// Atomically ANDs `mask` into the little-endian `u64` at `gpa`
    /// (8-aligned); returns the previous value.
    pub fn fetch_and_u64(&self, gpa: u64, mask: u64, order: Ordering) -> Result<u64, MemoryError> {
        Ok(u64::from_le(
            self.atomic_u64(gpa)?.fetch_and(mask.to_le(), order),
        ))
    }
}

/// Refuses a size of our own memory that is empty, not whole pages, or
/// beyond what one allocation or mapping can hold.
fn check_own_size(size: u64) -> Result<(), MemoryError> {
    if size == 0 || size & PAGE_MASK != 0 || size > isize::MAX as u64 {
        return Err(MemoryError::BadSize(size));
    }
    Ok(())
}

/// A zeroed, page-aligned heap allocation backing [`GuestMemory::on_heap`],
/// freed on drop. Only its address is kept: the bytes are reached through
/// atomics on raw pointers, like any guest memory.
struct HeapBlock {
    base: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the block is plain memory with no thread affinity, reached only
// through raw-pointer atomics; `HeapBlock` itself only frees it.
unsafe impl Send for HeapBlock {}
// SAFETY: as above; `&HeapBlock` gives no access to the bytes.
unsafe impl Sync for HeapBlock {}

impl HeapBlock {
    fn zeroed(size: usize) -> Result<Self, MemoryError> {
        let layout = std::alloc::Layout::from_size_align(size, PAGE_SIZE)
            .map_err(|_| MemoryError::BadSize(size as u64))?;
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr)
            .ok_or_else(|| MemoryError::Map(format!("no heap block of {size} bytes")))?;
        Ok(Self { base, layout })
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout and freed only here.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

impl Mapping {
    fn empty(layout: &[MemoryRegion]) -> Self {
        Self {
            regions: Box::new([]),
            layout: layout.into(),
            size: layout.last().map_or(0, |r| r.gpa + r.len),
            maps: Vec::new(),
            fd: None,
            owner: None,
            #[cfg(feature = "copy-baseline")]
            method: AtomicU8::new(CopyMethod::Atomic as u8),
        }
    }
}

fn regions_at(layout: &[MemoryRegion], hosts: Vec<NonNull<u8>>) -> Box<[Region]> {
    layout
        .iter()
        .zip(hosts)
        .map(|(r, host)| Region {
            gpa: r.gpa,
            end: r.gpa + r.len,
            host,
        })
        .collect()
}

/// `preadv2(2)`, on 64-bit targets as the bare system call: glibc's
/// wrapper is a thread cancellation point, and entering and leaving that
/// costs about as much per 4 KiB read as the wrapper's caller spends on its
/// own work; nothing here uses cancellation.
///
/// # Safety
///
/// As for `libc::preadv2`: `iov` points to `count` iovecs describing
/// memory the kernel may write.
unsafe fn preadv2(
    fd: libc::c_int,
    iov: *const libc::iovec,
    count: libc::c_int,
    offset: libc::off_t,
    flags: libc::c_int,
) -> isize {
    // On 64-bit targets the offset goes whole in the low word and the
    // high word is 0 (the kernel's `pos_from_hilo`).
    #[cfg(target_pointer_width = "64")]
    // SAFETY: the caller's contract, passed on unchanged.
    return unsafe { libc::syscall(libc::SYS_preadv2, fd, iov, count, offset, 0, flags) as isize };
    #[cfg(not(target_pointer_width = "64"))]
    // SAFETY: the caller's contract, passed on unchanged.
    return unsafe { libc::preadv2(fd, iov, count, offset, flags) as isize };
}

/// Guest-memory pieces gathered for `preadv2`, read a batch at a time.
///
/// Only raw addresses are kept: no Rust reference to guest memory is
/// formed, because the guest writes it concurrently.
struct IovecBatch<'fd> {
    fd: BorrowedFd<'fd>,
    /// File offset of the first byte not yet read.
    offset: u64,
    /// File offset the whole read started at, for errors.
    start: u64,
    /// Bytes the whole read wants.
    wanted: u64,
    mode: FileReadMode,
    iovecs: [libc::iovec; IOVECS_PER_CALL],
    count: usize,
    /// Bytes placed so far.
    done: usize,
}

impl<'fd> IovecBatch<'fd> {
    fn new(fd: BorrowedFd<'fd>, offset: u64, wanted: u64, mode: FileReadMode) -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            fd,
            offset,
            start: offset,
            wanted,
            mode,
            iovecs: [empty; IOVECS_PER_CALL],
            count: 0,
            done: 0,
        }
    }

    /// Adds `len` bytes of guest memory at `host` (a piece of a region
    /// checked by `span`), reading the batch first when it is full.
    fn push(&mut self, host: *mut u8, len: usize) -> Result<(), FileReadError> {
        if len == 0 {
            return Ok(());
        }
        if let Some(last) = self.count.checked_sub(1).map(|i| &mut self.iovecs[i]) {
            // Guest pages adjacent in host memory (a buffer of consecutive
            // guest pages in one region) share one piece: a 1 MiB read is
            // then one call, not one per `IOVECS_PER_CALL` pages.
            let end = last.iov_base.cast::<u8>().wrapping_add(last.iov_len);
            if end == host {
                if let Some(merged) = last.iov_len.checked_add(len) {
                    last.iov_len = merged;
                    return Ok(());
                }
            }
        }
        if self.count == IOVECS_PER_CALL {
            self.flush()?;
        }
        self.iovecs[self.count] = libc::iovec {
            iov_base: host.cast(),
            iov_len: len,
        };
        self.count += 1;
        Ok(())
    }

    /// Reads until every gathered piece is full.
    fn flush(&mut self) -> Result<(), FileReadError> {
        let flags = match self.mode {
            FileReadMode::Blocking => 0,
            FileReadMode::NoWait => libc::RWF_NOWAIT,
        };
        let mut first = 0;
        while first < self.count {
            let pending = &self.iovecs[first..self.count];
            // SAFETY: each iovec is a piece of one guest-memory region,
            // checked by `span` and mapped readable and writable for as
            // long as the `GuestMemory` borrowed by the caller lives, which
            // outlasts this call; the fd is borrowed for the call too. The
            // kernel writes the pages like a device doing DMA: from outside
            // the Rust abstract machine, through the raw addresses only, with
            // no Rust reference to the bytes in existence. A guest writing
            // the same bytes concurrently races only with the kernel's copy,
            // so the result is some mix of both writers' bytes, exactly as
            // for real DMA, and the host never reads them back as trusted
            // values. The memfd is sealed against shrinking (or the VMM
            // promised the mapping stays), so a fault is at worst `EFAULT`.
            // The offset fits `off_t` (checked by the caller) and the count
            // is at most `IOVECS_PER_CALL`.
            let n = unsafe {
                preadv2(
                    self.fd.as_raw_fd(),
                    pending.as_ptr(),
                    pending.len() as libc::c_int,
                    self.offset as libc::off_t,
                    flags,
                )
            };
            if n < 0 {
                let errno = rustix::io::Errno::from_raw_os_error(
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                );
                match errno {
                    rustix::io::Errno::INTR => continue,
                    rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP
                        if self.mode == FileReadMode::NoWait =>
                    {
                        return Err(FileReadError::WouldBlock {
                            offset: self.start,
                            done: self.done,
                        });
                    }
                    errno => {
                        return Err(FileReadError::Io {
                            offset: self.offset,
                            errno,
                        });
                    }
                }
            }
            if n == 0 {
                return Err(FileReadError::EndOfFile {
                    offset: self.start,
                    wanted: self.wanted,
                    got: self.done,
                });
            }
            let mut n = n as usize;
            self.offset += n as u64;
            self.done += n;
            // Skip the pieces this call filled; shorten a partly filled one.
            while n > 0 && first < self.count {
                let iov = &mut self.iovecs[first];
                if n >= iov.iov_len {
                    n -= iov.iov_len;
                    first += 1;
                } else {
                    iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n).cast();
                    iov.iov_len -= n;
                    n = 0;
                }
            }
        }
        self.count = 0;
        Ok(())
    }
}

/// Bytes before the first 8-aligned address at or after `ptr`, at most
/// `len`.
fn head_len(ptr: *const u8, len: usize) -> usize {
    ((ptr as usize).wrapping_neg() & 7).min(len)
}

/// Copies `out.len() / 8` words from guest memory at `src` into `out` with
/// `load`, four at a time.
///
/// # Safety
///
/// `src` is 8-aligned and the words lie in a live guest-memory mapping;
/// `load` is sound for each of them.
#[inline(always)]
unsafe fn words_out(src: *const u64, out: &mut [u8], load: impl Fn(*const u64) -> u64) {
    let words = out.len() / 8;
    let dst = out.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i + 4 <= words {
        // SAFETY: words `i..i + 4` are below `words`: in the mapping
        // (caller) and inside `out`, written unaligned.
        unsafe {
            let (a, b, c, d) = (
                load(src.add(i)),
                load(src.add(i + 1)),
                load(src.add(i + 2)),
                load(src.add(i + 3)),
            );
            dst.add(i).write_unaligned(a);
            dst.add(i + 1).write_unaligned(b);
            dst.add(i + 2).write_unaligned(c);
            dst.add(i + 3).write_unaligned(d);
        }
        i += 4;
    }
    while i < words {
        // SAFETY: as above, for word `i < words`.
        unsafe { dst.add(i).write_unaligned(load(src.add(i))) };
        i += 1;
    }
}

/// Copies the `data.len() / 8` words of `data` into guest memory at `dst`
/// with `store`, four at a time.
///
/// # Safety
///
/// `dst` is 8-aligned and the words lie in a live, writable guest-memory
/// mapping; `store` is sound for each of them.
#[inline(always)]
unsafe fn words_in(dst: *mut u64, data: &[u8], store: impl Fn(*mut u64, u64)) {
    let words = data.len() / 8;
    let src = data.as_ptr().cast::<u64>();
    let mut i = 0;
    while i + 4 <= words {
        // SAFETY: words `i..i + 4` are below `words`: inside `data` (read
        // unaligned) and in the mapping (caller).
        unsafe {
            let (a, b, c, d) = (
                src.add(i).read_unaligned(),
                src.add(i + 1).read_unaligned(),
                src.add(i + 2).read_unaligned(),
                src.add(i + 3).read_unaligned(),
            );
            store(dst.add(i), a);
            store(dst.add(i + 1), b);
            store(dst.add(i + 2), c);
            store(dst.add(i + 3), d);
        }
        i += 4;
    }
    while i < words {
        // SAFETY: as above, for word `i < words`.
        unsafe { store(dst.add(i), src.add(i).read_unaligned()) };
        i += 1;
    }
}

/// Copies `dst.len()` bytes of guest memory at `src` into `dst`: relaxed
/// `AtomicU8` loads up to 8-alignment, `AtomicU64` loads of whole words,
/// `AtomicU8` loads of the tail.
///
/// # Safety
///
/// `src..src + dst.len()` lies in a live guest-memory mapping, which this
/// process accesses only atomically.
unsafe fn copy_from_guest(src: *const u8, dst: &mut [u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if dst.len() >= BULK_MIN {
        // SAFETY: `src..src + dst.len()` is in the mapping (caller); `dst`
        // is host memory we hold exclusively; the string copy acts as
        // relaxed byte atomics on the guest side (module doc).
        return unsafe { rep_movsb(dst.as_mut_ptr(), src, dst.len()) };
    }
    let head = head_len(src, dst.len());
    let words = (dst.len() - head) / 8;
    let (h, rest) = dst.split_at_mut(head);
    let (w, t) = rest.split_at_mut(words * 8);
    for (i, b) in h.iter_mut().enumerate() {
        // SAFETY: in the mapping (caller); an atomic load tolerates the
        // guest writing the byte concurrently, and any `u8` is valid.
        *b = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
    let word = src.wrapping_add(head).cast::<u64>();
    // SAFETY: `words` 8-aligned words (past the head) in the mapping
    // (caller), each loaded atomically, so concurrent guest writes are no
    // data race; `w` holds `words * 8` bytes.
    unsafe {
        words_out(word, w, |p| {
            AtomicU64::from_ptr(p.cast_mut()).load(Ordering::Relaxed)
        })
    };
    let tail = src.wrapping_add(head + words * 8);
    for (i, b) in t.iter_mut().enumerate() {
        // SAFETY: as for the head.
        *b = unsafe { AtomicU8::from_ptr(tail.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
}

/// Copies `src` into guest memory at `dst`, the mirror of
/// [`copy_from_guest`] with relaxed atomic stores.
///
/// # Safety
///
/// `dst..dst + src.len()` lies in a live, writable guest-memory mapping,
/// which this process accesses only atomically.
unsafe fn copy_to_guest(dst: *mut u8, src: &[u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if src.len() >= BULK_MIN {
        // SAFETY: `dst..dst + src.len()` is in the mapping (caller); the
        // string copy acts as relaxed byte atomics (module doc).
        return unsafe { rep_movsb(dst, src.as_ptr(), src.len()) };
    }
    let head = head_len(dst, src.len());
    let words = (src.len() - head) / 8;
    let (h, rest) = src.split_at(head);
    let (w, t) = rest.split_at(words * 8);
    for (i, &b) in h.iter().enumerate() {
        // SAFETY: in the mapping (caller); an atomic store racing with the
        // guest's accesses is no data race.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(b, Ordering::Relaxed);
    }
    let word = dst.wrapping_add(head).cast::<u64>();
    // SAFETY: `w.len() / 8` 8-aligned words (past the head) in the mapping
    // (caller), each stored atomically, so concurrent guest accesses are no
    // data race.
    unsafe {
        words_in(word, w, |p, v| {
            AtomicU64::from_ptr(p).store(v, Ordering::Relaxed)
        })
    };
    let tail = dst.wrapping_add(head + words * 8);
    for (i, &b) in t.iter().enumerate() {
        // SAFETY: as for the head.
        unsafe { AtomicU8::from_ptr(tail.add(i)) }.store(b, Ordering::Relaxed);
    }
}

/// Copies and fills shorter than this use atomic loops: below it the
/// string instructions' start-up cost outweighs their speed.
#[cfg(all(target_arch = "x86_64", not(miri)))]
const BULK_MIN: usize = 256;

/// `len` bytes from `src` to `dst` with one `rep movsb`.
///
/// # Safety
///
/// Both ranges are valid for the access and do not overlap.
#[cfg(all(target_arch = "x86_64", not(miri)))]
unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller guarantees both ranges; the direction flag is
    // clear by the ABI; the instruction touches no stack.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `len` bytes at `dst` set to `byte` with one `rep stosb`.
///
/// # Safety
///
/// The range is valid for writes.
#[cfg(all(target_arch = "x86_64", not(miri)))]
unsafe fn rep_stosb(dst: *mut u8, byte: u8, len: usize) {
    // SAFETY: the caller guarantees the range; the direction flag is clear
    // by the ABI; the instruction touches no stack.
    unsafe {
        std::arch::asm!(
            "rep stosb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            in("al") byte,
            options(nostack, preserves_flags)
        );
    }
}

/// Sets `len` bytes of guest memory at `dst` to `byte` with relaxed atomic
/// stores.
///
/// # Safety
///
/// As for [`copy_to_guest`], for `dst..dst + len`.
unsafe fn fill_guest(dst: *mut u8, len: usize, byte: u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if len >= BULK_MIN {
        // SAFETY: `dst..dst + len` is in the mapping (caller); the string
        // store acts as relaxed byte atomic stores (module doc).
        return unsafe { rep_stosb(dst, byte, len) };
    }
    let head = head_len(dst, len);
    let words = (len - head) / 8;
    for i in (0..head).chain(head + words * 8..len) {
        // SAFETY: in the mapping (caller); atomic, so no data race.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
    let word = dst.wrapping_add(head).cast::<u64>();
    let v = u64::from_ne_bytes([byte; 8]);
    for i in 0..words {
        // SAFETY: 8-aligned and in the mapping (caller); atomic.
        unsafe { AtomicU64::from_ptr(word.add(i)) }.store(v, Ordering::Relaxed);
    }
}

/// [`copy_from_guest`] with volatile `u64`/`u8` loads (measurement only).
///
/// # Safety
///
/// As for [`copy_from_guest`].
#[cfg(feature = "copy-baseline")]
unsafe fn volatile_from_guest(src: *const u8, dst: &mut [u8]) {
    let head = head_len(src, dst.len());
    let words = (dst.len() - head) / 8;
    let (h, rest) = dst.split_at_mut(head);
    let (w, t) = rest.split_at_mut(words * 8);
    for (i, b) in h.iter_mut().enumerate() {
        // SAFETY: in the mapping (caller).
        *b = unsafe { src.add(i).read_volatile() };
    }
    let word = src.wrapping_add(head).cast::<u64>();
    // SAFETY: 8-aligned words in the mapping (caller).
    unsafe { words_out(word, w, |p| p.read_volatile()) };
    let tail = src.wrapping_add(head + words * 8);
    for (i, b) in t.iter_mut().enumerate() {
        // SAFETY: in the mapping (caller).
        *b = unsafe { tail.add(i).read_volatile() };
    }
}

/// [`copy_to_guest`] with volatile `u64`/`u8` stores (measurement only).
///
/// # Safety
///
/// As for [`copy_to_guest`].
#[cfg(feature = "copy-baseline")]
unsafe fn volatile_to_guest(dst: *mut u8, src: &[u8]) {
    let head = head_len(dst, src.len());
    let words = (src.len() - head) / 8;
    let (h, rest) = src.split_at(head);
    let (w, t) = rest.split_at(words * 8);
    for (i, &b) in h.iter().enumerate() {
        // SAFETY: in the mapping (caller).
        unsafe { dst.add(i).write_volatile(b) };
    }
    let word = dst.wrapping_add(head).cast::<u64>();
    // SAFETY: 8-aligned words in the mapping (caller).
    unsafe { words_in(word, w, |p, v| p.write_volatile(v)) };
    let tail = dst.wrapping_add(head + words * 8);
    for (i, &b) in t.iter().enumerate() {
        // SAFETY: in the mapping (caller).
        unsafe { tail.add(i).write_volatile(b) };
    }
}

/// One guest page whose host address is resolved once, for fields read
/// and written atomically many times (a ring's control page): each access
/// is then one atomic instruction, with no region lookup.
#[derive(Debug, Clone)]
pub struct AtomicPage {
    /// The page, inside one region (regions are page-aligned).
    run: ResolvedRun,
}

impl AtomicPage {
    /// The page at page-aligned `gpa`; fails if it is not inside `memory`.
    pub fn new(memory: GuestMemory, gpa: u64) -> Result<Self, MemoryError> {
        // Checks the alignment and that the page is backed.
        memory.host_page(gpa)?;
        let run = ResolvedRun::new(memory, gpa, PAGE_SIZE as u64)?;
        // A backed, aligned page never spans regions.
        let run = run.ok_or(MemoryError::Unaligned {
            gpa,
            align: PAGE_SIZE as u64,
        })?;
        Ok(Self { run })
    }

    /// Guest physical address of the page.
    pub fn gpa(&self) -> u64 {
        self.run.gpa
    }

    /// The guest memory the page is in.
    pub fn memory(&self) -> &GuestMemory {
        &self.run.memory
    }

    /// The `u32` field at `offset` (4-aligned, inside the page; anything
    /// else is a bug of the caller and panics).
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= PAGE_SIZE,
            "field offset {offset:#x} of a guest page"
        );
        // SAFETY: `host + offset` is 4-aligned (pages are) and inside the
        // page, which lies in one region mapped for as long as
        // `self.run` lives, so for as long as `&self`. All access to
        // guest memory from this process is atomic, so the guest writing
        // the field concurrently is no data race.
        unsafe { AtomicU32::from_ptr(self.run.host.as_ptr().add(offset).cast()) }
    }
}

/// A run of guest memory inside one region whose host address is
/// resolved once, for an area copied into and out of many times (a ring's
/// data pages): each copy is then one bounds check and the copy, with no
/// region lookup.
#[derive(Debug, Clone)]
pub struct ResolvedRun {
    /// Keeps the mapping behind `host` alive.
    memory: GuestMemory,
    gpa: u64,
    len: usize,
    host: NonNull<u8>,
}

// SAFETY: `host` points into the mapping `memory` keeps alive, and every
// access through it is atomic, as with `GuestMemory`'s own accessors, so
// the run may be used from any thread, as `GuestMemory` may.
unsafe impl Send for ResolvedRun {}
// SAFETY: as for `Send`.
unsafe impl Sync for ResolvedRun {}

impl ResolvedRun {
    /// `[gpa, gpa + len)` of `memory`, if one region holds all of it
    /// (`None` if it is backed but spans regions); an error if any of it
    /// is not backed.
    pub fn new(memory: GuestMemory, gpa: u64, len: u64) -> Result<Option<Self>, MemoryError> {
        let first = memory.span(gpa, len)?;
        let region = &memory.inner.regions[first];
        let (Some(end), Ok(len)) = (gpa.checked_add(len), usize::try_from(len)) else {
            return Ok(None);
        };
        if end > region.end {
            return Ok(None);
        }
        // Inside the region's mapping: `region.gpa <= gpa < region.end`.
        let host = region
            .host
            .as_ptr()
            .wrapping_add((gpa - region.gpa) as usize);
        let Some(host) = NonNull::new(host) else {
            return Ok(None);
        };
        Ok(Some(Self {
            memory,
            gpa,
            len,
            host,
        }))
    }

    /// Length of the run in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the run is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of `[offset, offset + n)`, checked to lie in the run.
    fn at(&self, offset: usize, n: usize) -> Result<*mut u8, MemoryError> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.host.as_ptr().wrapping_add(offset)),
            _ => Err(MemoryError::OutOfRange {
                gpa: self.gpa.saturating_add(offset as u64),
                len: n as u64,
                size: self.gpa + self.len as u64,
            }),
        }
    }

    /// Copies the run's bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.at(offset, buf.len())?;
        // SAFETY: `at` checked that the bytes lie in the run, inside one
        // region mapped while `self.memory` lives.
        unsafe { self.memory.copy_out(src, buf) };
        Ok(())
    }

    /// Copies `data` into the run at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let dst = self.at(offset, data.len())?;
        // SAFETY: as in `read`; regions are mapped writable.
        unsafe { self.memory.copy_in(dst, data) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_run_reads_and_writes_what_the_memory_does() {
        let memory = GuestMemory::new(4 * 4096).unwrap();
        let run = ResolvedRun::new(memory.clone(), 4096 + 16, 8000)
            .unwrap()
            .unwrap();
        assert_eq!(run.len(), 8000);
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        run.write(7990 - 300, &data).unwrap();
        let mut back = vec![0u8; 300];
        memory.read(4096 + 16 + 7990 - 300, &mut back).unwrap();
        assert_eq!(back, data);
        memory.write(4096 + 16, &data[..20]).unwrap();
        let mut head = [0u8; 20];
        run.read(0, &mut head).unwrap();
        assert_eq!(head, data[..20]);
        // Past the run's end: refused, nothing copied.
        assert!(matches!(
            run.read(7990, &mut [0u8; 11]),
            Err(MemoryError::OutOfRange { len: 11, .. })
        ));
        assert!(run.write(usize::MAX, &[1]).is_err());
        // Outside memory: an error (a run over two regions is the next
        // test's).
        assert!(ResolvedRun::new(memory.clone(), 3 * 4096, 4097).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot create or map a memfd")]
    fn a_run_over_two_regions_is_not_resolved() {
        let fd = rustix::fs::memfd_create("runs", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4 * 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
        let memory = GuestMemory::from_memfd(
            fd,
            &[
                MemoryRegion {
                    gpa: 0,
                    len: 2 * 4096,
                    offset: 0,
                },
                MemoryRegion {
                    gpa: 2 * 4096,
                    len: 2 * 4096,
                    offset: 2 * 4096,
                },
            ],
        )
        .unwrap();
        assert!(
            ResolvedRun::new(memory.clone(), 4096, 2 * 4096)
                .unwrap()
                .is_none()
        );
        assert!(
            ResolvedRun::new(memory, 2 * 4096, 2 * 4096)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(GuestMemory::new(0).unwrap_err(), MemoryError::BadSize(0));
        assert_eq!(
            GuestMemory::new(4097).unwrap_err(),
            MemoryError::BadSize(4097)
        );
    }

    #[test]
    fn bounds_are_checked_including_overflow() {
        let mem = GuestMemory::new(2 * 4096).unwrap();
        let mut buf = [0u8; 16];
        assert!(mem.read(8192 - 16, &mut buf).is_ok());
        assert!(matches!(
            mem.read(8192 - 15, &mut buf),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            mem.read(u64::MAX - 4, &mut buf),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            mem.write(8192, &[1]),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(matches!(
            mem.fill(1, u64::MAX, 0),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(mem.read(8192, &mut []).is_ok());
    }

    #[test]
    fn write_to_stream_sends_the_guest_bytes_and_refuses_a_bad_range() {
        let mem = GuestMemory::new(4 * 4096).unwrap();
        let pattern: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        mem.write(4000, &pattern).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        mem.write_to_stream(file.as_fd(), 4000, pattern.len() as u64)
            .unwrap();
        let refused = mem
            .write_to_stream(file.as_fd(), 3 * 4096, 4097)
            .unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        let mut got = Vec::new();
        std::io::Seek::rewind(&mut file).unwrap();
        std::io::Read::read_to_end(&mut file, &mut got).unwrap();
        assert_eq!(
            got, pattern,
            "the range's bytes, and nothing of the refused one"
        );
    }

    #[test]
    fn heap_memory_is_zeroed_aligned_and_has_no_fd() {
        assert_eq!(
            GuestMemory::on_heap(4095).unwrap_err(),
            MemoryError::BadSize(4095)
        );
        assert_eq!(
            GuestMemory::on_heap(0).unwrap_err(),
            MemoryError::BadSize(0)
        );
        let mem = GuestMemory::on_heap(3 * 4096).unwrap();
        assert!(mem.fd().is_none());
        assert_eq!(mem.regions(), &[MemoryRegion::new(0, 3 * 4096, 0)]);
        let mut all = vec![0xffu8; 3 * 4096];
        mem.read(0, &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0), "fresh memory is zeroed");
        // A copy across the page boundary, long enough for the bulk path.
        let pattern: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        mem.write(4000, &pattern).unwrap();
        let mut back = vec![0u8; pattern.len()];
        mem.clone().read(4000, &mut back).unwrap();
        assert_eq!(back, pattern);
        assert_eq!(
            mem.write(3 * 4096 - 2, b"abc").unwrap_err(),
            MemoryError::OutOfRange {
                gpa: 3 * 4096 - 2,
                len: 3,
                size: 3 * 4096
            }
        );
    }

    #[test]
    fn read_write_atomics_roundtrip() {
        let mem = GuestMemory::new(4096).unwrap();
        mem.write(100, b"hello").unwrap();
        let mut buf = [0u8; 5];
        mem.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        mem.store_u32(8, 0xdead_beef, Ordering::Release).unwrap();
        let mut raw = [0u8; 4];
        mem.read(8, &mut raw).unwrap();
        assert_eq!(raw, 0xdead_beefu32.to_le_bytes());
        assert_eq!(mem.load_u32(8, Ordering::Acquire).unwrap(), 0xdead_beef);
        assert_eq!(
            mem.load_u32(6, Ordering::Acquire).unwrap_err(),
            MemoryError::Unaligned { gpa: 6, align: 4 }
        );
        mem.store_u64(16, 1 << 40, Ordering::Relaxed).unwrap();
        assert_eq!(mem.load_u64(16, Ordering::Relaxed).unwrap(), 1 << 40);
        assert_eq!(mem.fetch_or_u64(16, 1, Ordering::SeqCst).unwrap(), 1 << 40);
        let mut raw = [0u8; 8];
        mem.read(16, &mut raw).unwrap();
        assert_eq!(raw, [1, 0, 0, 0, 0, 1, 0, 0], "little-endian in memory");
        assert_eq!(
            mem.fetch_and_u64(16, !1, Ordering::SeqCst).unwrap(),
            (1 << 40) | 1
        );
        assert_eq!(mem.load_u64(16, Ordering::Relaxed).unwrap(), 1 << 40);
        assert_eq!(
            mem.fetch_or_u64(12, 1, Ordering::SeqCst).unwrap_err(),
            MemoryError::Unaligned { gpa: 12, align: 8 }
        );
        assert!(mem.fetch_and_u64(!7, 0, Ordering::SeqCst).is_err());
    }

    #[test]
    fn copies_are_exact_at_every_alignment_and_length() {
        let mem = GuestMemory::new(4096).unwrap();
        let clone = mem.clone();
        let mut model = vec![0u8; 256];
        for start in 0..24u64 {
            for len in 0..40usize {
                let data: Vec<u8> = (0..len)
                    .map(|i| (start as usize * 31 + i + 1) as u8)
                    .collect();
                clone.write(start, &data).unwrap();
                model[start as usize..start as usize + len].copy_from_slice(&data);
                let mut all = vec![0u8; 256];
                mem.read(0, &mut all).unwrap();
                assert_eq!(all, model, "write at {start} len {len}");
                let mut back = vec![0u8; len];
                mem.read(start, &mut back).unwrap();
                assert_eq!(back, data);
                mem.fill(start + 1, len as u64, len as u8).unwrap();
                model[start as usize + 1..start as usize + 1 + len].fill(len as u8);
            }
        }
        let mut all = vec![0u8; 256];
        mem.read(0, &mut all).unwrap();
        assert_eq!(all, model);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri's `new` is heap memory without an fd")]
    fn own_memfd_is_sealed_and_shared() {
        let mem = GuestMemory::new(4096).unwrap();
        let fd = mem.fd().unwrap();
        let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
        assert!(seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW));
        assert!(rustix::fs::ftruncate(fd, 0).is_err());
        assert_eq!(mem.regions(), &[MemoryRegion::new(0, 4096, 0)]);
        mem.write(10, b"shared").unwrap();
        let mut buf = [0u8; 6];
        rustix::io::pread(fd, &mut buf, 10).unwrap();
        assert_eq!(&buf, b"shared");
    }

    #[test]
    fn layouts_are_checked() {
        let r = MemoryRegion::new;
        assert_eq!(check_layout(&[]).unwrap_err(), MemoryError::NoRegions);
        assert!(matches!(
            check_layout(&[r(0, 0, 0)]),
            Err(MemoryError::BadRegion {
                reason: "empty",
                ..
            })
        ));
        assert!(matches!(
            check_layout(&[r(0, 4096, 512)]),
            Err(MemoryError::BadRegion {
                reason: "not page-aligned",
                ..
            })
        ));
        assert!(matches!(
            check_layout(&[r(!0xfff, 4096, 0)]),
            Err(MemoryError::BadRegion { .. })
        ));
        assert_eq!(
            check_layout(&[r(0x3000, 0x1000, 0), r(0, 0x4000, 0)]).unwrap_err(),
            MemoryError::Overlap {
                gpa: 0x3000,
                other_gpa: 0,
                other_end: 0x4000
            }
        );
        let (sorted, needed) = check_layout(&[r(0x8000, 0x1000, 0), r(0, 0x2000, 0x1000)]).unwrap();
        assert_eq!(sorted, vec![r(0, 0x2000, 0x1000), r(0x8000, 0x1000, 0)]);
        assert_eq!(needed, 0x3000);
    }
}

#[cfg(test)]
/// A VMM's own mapping of a sealed memfd, unmapped when the owner drops.
mod vmm_owned {
    use super::*;
    use rustix::fs::{MemfdFlags, SealFlags};
    use std::os::fd::OwnedFd;

    const P: u64 = 4096;

    fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create(
            "vmbdev-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        fd
    }

    fn pread(fd: &OwnedFd, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        assert_eq!(rustix::io::pread(fd, &mut buf, offset).unwrap(), len);
        buf
    }
    use std::ptr::NonNull;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Owner {
        addr: usize,
        len: usize,
        _fd: OwnedFd,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            // SAFETY: exactly the mapping made in `map`; the guest memory
            // that used it is gone (it drops its owner last).
            unsafe { rustix::mm::munmap(self.addr as *mut _, self.len) }.unwrap();
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn map(fd: &OwnedFd, len: usize) -> NonNull<u8> {
        // SAFETY: a fresh shared mapping at a kernel-chosen address.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }
        .unwrap();
        NonNull::new(ptr.cast()).unwrap()
    }

    #[test]
    fn vmm_owned_mapping_works_and_its_owner_drops_with_the_memory() {
        let fd = memfd(4 * P, SealFlags::SHRINK);
        let probe = fd.try_clone().unwrap();
        let base = map(&fd, 4 * P as usize);
        let dropped = Arc::new(AtomicBool::new(false));
        let owner = Owner {
            addr: base.as_ptr() as usize,
            len: 4 * P as usize,
            _fd: fd,
            dropped: dropped.clone(),
        };
        let layout = [
            MemoryRegion::new(0, P, 3 * P),
            MemoryRegion::new(0x10_0000, 2 * P, 0),
        ];
        // SAFETY: the mapping stays until `owner` drops, and this test
        // touches it only through the guest memory and the fd.
        let mem = unsafe {
            GuestMemory::from_raw_mapping(base, 4 * P as usize, &layout, Box::new(owner))
        }
        .unwrap();
        assert!(mem.fd().is_none());
        assert_eq!(mem.size(), 0x10_0000 + 2 * P);
        mem.write(0x10, b"vmm").unwrap();
        assert_eq!(pread(&probe, 3 * P + 0x10, 3), b"vmm");
        mem.write(0x10_0000 + P + 1, b"high").unwrap();
        assert_eq!(pread(&probe, P + 1, 4), b"high");
        assert!(matches!(
            mem.read(P, &mut [0u8; 1]),
            Err(MemoryError::Hole { gpa: 0x1000, .. })
        ));
        let clone = mem.clone();
        drop(mem);
        assert!(!dropped.load(Ordering::SeqCst));
        let mut buf = [0u8; 3];
        clone.read(0x10, &mut buf).unwrap();
        assert_eq!(&buf, b"vmm");
        drop(clone);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_mapping_too_small_or_unaligned_is_refused_and_its_owner_dropped() {
        let fd = memfd(2 * P, SealFlags::SHRINK);
        let base = map(&fd, 2 * P as usize);
        let dropped = Arc::new(AtomicBool::new(false));
        let owner = Owner {
            addr: base.as_ptr() as usize,
            len: 2 * P as usize,
            _fd: fd,
            dropped: dropped.clone(),
        };
        // SAFETY: as above; on error the owner is dropped, unmapping.
        let err = unsafe {
            GuestMemory::from_raw_mapping(
                base,
                2 * P as usize,
                &[MemoryRegion::new(0, 2 * P, P)],
                Box::new(owner),
            )
        }
        .unwrap_err();
        assert_eq!(
            err,
            MemoryError::BackingTooSmall {
                backing: "mapping",
                size: 2 * P,
                needed: 3 * P
            }
        );
        assert!(dropped.load(Ordering::SeqCst));
        let fd = memfd(2 * P, SealFlags::SHRINK);
        let base = map(&fd, 2 * P as usize);
        let dropped = Arc::new(AtomicBool::new(false));
        let owner = Owner {
            addr: base.as_ptr() as usize,
            len: 2 * P as usize,
            _fd: fd,
            dropped: dropped.clone(),
        };
        let odd = NonNull::new(base.as_ptr().wrapping_add(8)).unwrap();
        // SAFETY: as above; refused before any access.
        let err = unsafe {
            GuestMemory::from_raw_mapping(
                odd,
                P as usize,
                &[MemoryRegion::new(0, P, 0)],
                Box::new(owner),
            )
        }
        .unwrap_err();
        assert!(matches!(err, MemoryError::UnalignedMapping { .. }));
        assert!(dropped.load(Ordering::SeqCst));
    }
}

#[cfg(test)]
/// Reads from files straight into guest memory.
mod file_reads {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use std::sync::atomic::AtomicBool;

    const P: u64 = 4096;

    /// Guest memory of regions `[0, P)`, `[P, 2P)` (adjacent in guest
    /// addresses, apart in the fd) and `[3P, 5P)`: `[2P, 3P)` is a hole. Every byte starts as 0xEE so untouched bytes are visible.
    fn holed_memory() -> GuestMemory {
        let fd = rustix::fs::memfd_create(
            "vmbdev-test",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 4 * P).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
        let mem = GuestMemory::from_memfd(
            fd,
            &[
                MemoryRegion::new(0, P, 0),
                MemoryRegion::new(P, P, 3 * P),
                MemoryRegion::new(3 * P, 2 * P, P),
            ],
        )
        .unwrap();
        mem.fill(0, 2 * P, 0xEE).unwrap();
        mem.fill(3 * P, 2 * P, 0xEE).unwrap();
        mem
    }

    /// The byte at file offset `i` of every test file.
    fn file_byte(i: u64) -> u8 {
        (i.wrapping_mul(7) ^ (i >> 8)) as u8
    }

    fn file_of(len: u64) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..len).map(file_byte).collect();
        file.write_all(&bytes).unwrap();
        file
    }

    fn guest(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read(gpa, &mut buf).unwrap();
        buf
    }

    fn expected(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(file_byte).collect()
    }

    #[test]
    fn bytes_land_in_order_across_regions_and_many_pieces() {
        let mem = holed_memory();
        let file = file_of(64 * 1024);
        // 40 ranges (more than one call's iovecs), out of address order.
        let mut ranges: Vec<(u64, u64)> = (0..40).map(|i| (4 * P + 3 + i * 100, 97)).collect();
        ranges.push((10, 2 * P - 10));
        ranges.push((3 * P, 5));
        read_and_check(&mem, &file, 1000, &ranges);
        // Bytes no range named are as they were.
        assert_eq!(guest(&mem, 0, 10), vec![0xEE; 10]);
        assert_eq!(guest(&mem, 4 * P, 3), vec![0xEE; 3]);
        assert_eq!(guest(&mem, 4 * P + 100, 3), vec![0xEE; 3]);
    }

    #[test]
    fn adjacent_ranges_read_as_one_piece_and_others_stay_apart() {
        let mem = holed_memory();
        let file = file_of(64 * 1024);
        // Runs of three ranges that touch end to start (one piece each),
        // each followed by a range elsewhere: 40 pieces in all, more than
        // one call takes.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for run in 0..20u64 {
            let base = 4 * P + run * 150;
            ranges.extend([(base, 50), (base + 50, 30), (base + 80, 20)]);
            ranges.push((3 * P + run * 150 + 120, 7));
        }
        read_and_check(&mem, &file, 77, &ranges);
    }

    /// Reads `ranges` from `file` at `offset` (blocking) and checks that
    /// each holds the file's bytes, in order.
    fn read_and_check(mem: &GuestMemory, file: &std::fs::File, offset: u64, ranges: &[(u64, u64)]) {
        let n = mem
            .read_from_file(
                file.as_fd(),
                offset,
                ranges.iter().copied(),
                FileReadMode::Blocking,
            )
            .unwrap();
        assert_eq!(n as u64, ranges.iter().map(|r| r.1).sum::<u64>());
        let mut at = offset;
        for &(gpa, len) in ranges {
            assert_eq!(
                guest(mem, gpa, len as usize),
                expected(at, len),
                "range at {gpa:#x}"
            );
            at += len;
        }
    }

    #[test]
    fn a_range_across_the_hole_or_outside_memory_is_refused_with_nothing_written() {
        let mem = holed_memory();
        let file = file_of(4 * P);
        let err = mem
            .read_from_file(
                file.as_fd(),
                0,
                [(0, 100), (2 * P - 8, 16)],
                FileReadMode::Blocking,
            )
            .unwrap_err();
        assert_eq!(
            err,
            FileReadError::Memory(MemoryError::Hole {
                gpa: 2 * P - 8,
                len: 16,
                unbacked: 2 * P
            })
        );
        let err = mem
            .read_from_file(
                file.as_fd(),
                0,
                [(0, 100), (5 * P - 1, 2)],
                FileReadMode::NoWait,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            FileReadError::Memory(MemoryError::OutOfRange { .. })
        ));
        assert_eq!(guest(&mem, 0, 100), vec![0xEE; 100]);
        let err = mem
            .read_from_file(
                file.as_fd(),
                u64::MAX - 10,
                [(0, 100)],
                FileReadMode::Blocking,
            )
            .unwrap_err();
        assert_eq!(
            err,
            FileReadError::TooLong {
                offset: u64::MAX - 10,
                len: 100
            }
        );
        assert_eq!(guest(&mem, 0, 100), vec![0xEE; 100]);
    }

    #[test]
    fn a_short_file_is_an_error_after_the_bytes_it_has() {
        let mem = holed_memory();
        let file = file_of(3000);
        let err = mem
            .read_from_file(
                file.as_fd(),
                2000,
                [(0, 600), (P, 600)],
                FileReadMode::Blocking,
            )
            .unwrap_err();
        assert_eq!(
            err,
            FileReadError::EndOfFile {
                offset: 2000,
                wanted: 1200,
                got: 1000
            }
        );
        assert_eq!(guest(&mem, 0, 600), expected(2000, 600));
        assert_eq!(guest(&mem, P, 400), expected(2600, 400));
        assert_eq!(guest(&mem, P + 400, 200), vec![0xEE; 200]);
    }

    #[test]
    fn no_wait_reads_a_cached_file() {
        let mem = holed_memory();
        let file = file_of(2 * P);
        // Just written, so in the page cache.
        let n = mem
            .read_from_file(file.as_fd(), 0, [(3 * P, 2 * P)], FileReadMode::NoWait)
            .unwrap();
        assert_eq!(n as u64, 2 * P);
        assert_eq!(guest(&mem, 3 * P, 2 * P as usize), expected(0, 2 * P));
    }

    #[test]
    fn a_pipe_is_an_os_error_and_an_empty_read_reads_nothing() {
        let mem = holed_memory();
        let (read, _write) = rustix::pipe::pipe().unwrap();
        let err = mem
            .read_from_file(read.as_fd(), 0, [(0, 8)], FileReadMode::Blocking)
            .unwrap_err();
        assert_eq!(
            err,
            FileReadError::Io {
                offset: 0,
                errno: rustix::io::Errno::SPIPE
            }
        );
        let file = file_of(0);
        let none: [(u64, u64); 0] = [];
        assert_eq!(
            mem.read_from_file(file.as_fd(), 0, none, FileReadMode::Blocking),
            Ok(0)
        );
    }

    #[test]
    fn concurrent_guest_writes_elsewhere_do_not_disturb_the_read() {
        let mem = holed_memory();
        let file = file_of(3 * P);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (mem, stop) = (mem.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut round = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    mem.fill(0, P, round).unwrap();
                    round = round.wrapping_add(1);
                }
                mem.fill(0, P, 0x5A).unwrap();
            })
        };
        for _ in 0..200 {
            mem.read_from_file(
                file.as_fd(),
                0,
                [(P, P), (3 * P, 2 * P)],
                FileReadMode::Blocking,
            )
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(guest(&mem, P, P as usize), expected(0, P));
        assert_eq!(guest(&mem, 3 * P, 2 * P as usize), expected(P, 2 * P));
        assert_eq!(guest(&mem, 0, P as usize), vec![0x5A; P as usize]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any list of ranges either is refused with memory untouched or
        /// fills each range with the next file bytes, as a model says.
        #[test]
        fn reads_match_a_model(
            ranges in proptest::collection::vec((0u64..5 * P, 0u64..3000), 0..24),
            offset in 0u64..4000,
            mode in prop_oneof![Just(FileReadMode::Blocking), Just(FileReadMode::NoWait)],
        ) {
            let mem = holed_memory();
            let file = file_of(16 * P);
            let backed = |gpa: u64| gpa < 2 * P || (3 * P..5 * P).contains(&gpa);
            let valid = ranges.iter().all(|&(gpa, len)| {
                len == 0 || (gpa + len <= 5 * P && (gpa..gpa + len).all(backed))
            });
            let mut model = vec![0xEEu8; 5 * P as usize];
            let result = mem.read_from_file(file.as_fd(), offset, ranges.iter().copied(), mode);
            if valid {
                let mut at = offset;
                for &(gpa, len) in &ranges {
                    model[gpa as usize..(gpa + len) as usize].copy_from_slice(&expected(at, len));
                    at += len;
                }
                prop_assert_eq!(result, Ok((at - offset) as usize));
            } else {
                prop_assert!(matches!(result, Err(FileReadError::Memory(_))), "{:?}", result);
            }
            for (gpa, len) in [(0, 2 * P), (3 * P, 2 * P)] {
                prop_assert_eq!(
                    guest(&mem, gpa, len as usize),
                    &model[gpa as usize..(gpa + len) as usize]
                );
            }
        }
    }
}
