//! Guest memory: one shared mapping addressed by guest physical address.
//!
//! This is the only module of the workspace with `unsafe` code. The guest
//! may write any byte of its memory at any time, concurrently with the host,
//! so no Rust reference (`&[u8]`, `&mut [u8]`) to guest memory is ever
//! created: bytes move with raw-pointer copies into and out of host buffers,
//! and shared control fields are accessed through atomics. A torn or
//! changing value is just an untrusted value, which every caller validates.
//!
//! The mapping is a `memfd`, so another process (an out-of-process device)
//! can map the same memory.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`: a page number is `gpa >> PAGE_SHIFT`.
pub const PAGE_SHIFT: u32 = 12;

/// An error accessing guest memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The access does not lie inside guest memory.
    #[error(
        "guest access of {len} bytes at gpa {gpa:#x} is outside guest memory of {size:#x} bytes"
    )]
    OutOfRange {
        /// Guest physical address of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
        /// Size of guest memory.
        size: u64,
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
    /// The operating system refused to create the mapping.
    #[error("cannot map guest memory: {0}")]
    Map(String),
}

/// A guest's physical memory. Cheap to clone; clones share the mapping.
#[derive(Clone)]
pub struct GuestMemory {
    inner: Arc<Mapping>,
}

struct Mapping {
    base: NonNull<u8>,
    size: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all
// access goes through raw-pointer copies and atomics, never references.
unsafe impl Send for Mapping {}
// SAFETY: as above; concurrent access from several threads is the design.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` are exactly the mapping created in `new`,
        // and no pointer into it outlives the last `Arc<Mapping>`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.size) };
    }
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("size", &self.inner.size)
            .finish()
    }
}

impl GuestMemory {
    /// Allocates `size` bytes of zeroed guest memory (a whole number of
    /// pages), starting at guest physical address 0.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize(size))?;
        if len == 0 || len % PAGE_SIZE != 0 || len > isize::MAX as usize {
            return Err(MemoryError::BadSize(size));
        }
        let fd = rustix::fs::memfd_create("vmbdev-guest-memory", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| MemoryError::Map(e.to_string()))?;
        // SAFETY: a fresh shared mapping of a memfd we own, at an address the
        // kernel chooses; nothing else refers to that address range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| MemoryError::Map("null mapping".into()))?;
        Ok(Self {
            inner: Arc::new(Mapping {
                base,
                size: len,
                fd,
            }),
        })
    }

    /// Size of guest memory in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size as u64
    }

    /// Number of guest pages.
    pub fn page_count(&self) -> u64 {
        self.size() >> PAGE_SHIFT
    }

    /// The memfd backing this memory, for sharing it with another process.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    /// Checks that `[gpa, gpa + len)` lies inside guest memory and returns
    /// the host pointer of `gpa`.
    fn checked_ptr(&self, gpa: u64, len: u64) -> Result<*mut u8, MemoryError> {
        let size = self.size();
        match gpa.checked_add(len) {
            Some(end) if end <= size => {
                // SAFETY: `gpa < end <= size`, so the offset stays inside the
                // mapping (and `size` fits `isize`, checked in `new`).
                Ok(unsafe { self.inner.base.as_ptr().add(gpa as usize) })
            }
            _ => Err(MemoryError::OutOfRange { gpa, len, size }),
        }
    }

    /// Copies guest bytes at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.checked_ptr(gpa, buf.len() as u64)?;
        // SAFETY: `src..src+len` is inside the mapping (checked above) and
        // cannot overlap `buf`, which is host memory. The guest may change
        // these bytes concurrently; any value of `u8` is valid, and callers
        // validate what they read.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let dst = self.checked_ptr(gpa, data.len() as u64)?;
        // SAFETY: `dst..dst+len` is inside the mapping (checked above) and
        // does not overlap `data`, which is host memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Sets `len` guest bytes at `gpa` to `byte`.
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        let dst = self.checked_ptr(gpa, len)?;
        // SAFETY: `dst..dst+len` is inside the mapping (checked above).
        unsafe { std::ptr::write_bytes(dst, byte, len as usize) };
        Ok(())
    }

    /// Copies `len` bytes inside guest memory from `src_gpa` to `dst_gpa`
    /// (the ranges may overlap).
    pub fn copy_within(&self, src_gpa: u64, dst_gpa: u64, len: u64) -> Result<(), MemoryError> {
        let src = self.checked_ptr(src_gpa, len)?;
        let dst = self.checked_ptr(dst_gpa, len)?;
        // SAFETY: both ranges are inside the mapping (checked above);
        // `copy` allows overlap.
        unsafe { std::ptr::copy(src, dst, len as usize) };
        Ok(())
    }

    fn atomic_u32(&self, gpa: u64) -> Result<&AtomicU32, MemoryError> {
        if gpa % 4 != 0 {
            return Err(MemoryError::Unaligned { gpa, align: 4 });
        }
        let ptr = self.checked_ptr(gpa, 4)?;
        // SAFETY: the pointer is 4-aligned (the mapping is page-aligned and
        // `gpa` is 4-aligned), inside the mapping for 4 bytes, and valid for
        // as long as `self`. All shared access to these bytes from this
        // process is atomic or a raw copy, never a plain reference.
        Ok(unsafe { AtomicU32::from_ptr(ptr.cast()) })
    }

    fn atomic_u64(&self, gpa: u64) -> Result<&AtomicU64, MemoryError> {
        if gpa % 8 != 0 {
            return Err(MemoryError::Unaligned { gpa, align: 8 });
        }
        let ptr = self.checked_ptr(gpa, 8)?;
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

    /// Reads `len` bytes at `file_offset` of `file` straight into guest
    /// memory at `gpa` (no intermediate host buffer). Returns the bytes read,
    /// fewer than `len` only at end of file.
    pub fn read_from_file(
        &self,
        file: &std::fs::File,
        file_offset: u64,
        gpa: u64,
        len: u64,
    ) -> Result<u64, FileToGuestError> {
        let dst = self.checked_ptr(gpa, len)?;
        let mut done: u64 = 0;
        while done < len {
            let remaining = (len - done) as usize;
            // SAFETY: `dst + done .. dst + len` is inside the mapping
            // (checked above). The slice of `MaybeUninit<u8>` only carries
            // the range to the syscall; nothing reads through it, and the
            // kernel writes the bytes. The guest may race on them, which is
            // harmless for plain bytes that callers treat as untrusted.
            let target = unsafe {
                std::slice::from_raw_parts_mut(
                    dst.add(done as usize).cast::<std::mem::MaybeUninit<u8>>(),
                    remaining,
                )
            };
            match rustix::io::pread(file, target, file_offset + done) {
                Ok((written, _)) => {
                    if written.is_empty() {
                        break;
                    }
                    done += written.len() as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(FileToGuestError::Io(e.into())),
            }
        }
        Ok(done)
    }
}

/// An error moving file bytes into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum FileToGuestError {
    /// The guest range is invalid.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The file read failed.
    #[error("file read failed: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn clones_share_and_file_reads_land_in_guest() {
        let mem = GuestMemory::new(4096).unwrap();
        let other = mem.clone();
        let file = tempfile_with(b"0123456789");
        let n = other.read_from_file(&file, 2, 4000, 96).unwrap();
        assert_eq!(n, 8);
        let mut buf = [0u8; 8];
        mem.read(4000, &mut buf).unwrap();
        assert_eq!(&buf, b"23456789");
        assert!(mem.read_from_file(&file, 0, 4090, 7).is_err());
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("vmbdev-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        file
    }
}
