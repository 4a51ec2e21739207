//! The block-device contract every disk format implements, and the
//! simplest implementations of it.
//!
//! This crate owns:
//!
//! - [`BlockDevice`]: positional, read-only sector reads (`&self`, no shared
//!   cursor, so many channels read at once), with [`check_request`] as the
//!   one bounds check every implementation applies first;
//! - [`Extent`] and [`BlockDevice::locate`]: where a run of sectors lives
//!   (bytes of a file, bytes in memory, zeros, or only readable by copy),
//!   so a reader can move file bytes straight to their destination and
//!   skip holes;
//! - [`RawFile`]: a raw image file, and [`MemoryDisk`]: a disk held in memory
//!   (for tests, fuzzing and tools that build disks);
//! - [`ReadAt`]: positional reads of an image's bytes, so format readers
//!   (VHDX) parse a host file or bytes in memory alike;
//! - [`read_bytes`] and [`DeviceCursor`]: byte-addressed reads over a
//!   sector-addressed device, for the file-system readers;
//! - [`open_image_file`]: how every image reader opens a host file.
//!
//! It must not know any image format, partition table or file system, and
//! never writes: every device here is read-only.
#![forbid(unsafe_code)]

mod bytes;
mod memory;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use bytes::{DeviceCursor, read_bytes};
pub use memory::MemoryDisk;

/// An error reading a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request does not lie inside the device.
    #[error("read of {len} bytes at sector {lba} is outside a device of {sector_count} sectors")]
    OutOfRange {
        /// First sector requested.
        lba: u64,
        /// Length requested in bytes.
        len: u64,
        /// Sectors on the device.
        sector_count: u64,
    },
    /// The buffer length is not a whole number of logical sectors.
    #[error("buffer of {len} bytes is not a multiple of the {sector_size}-byte sector size")]
    UnalignedBuffer {
        /// Buffer length in bytes.
        len: usize,
        /// Logical sector size.
        sector_size: u32,
    },
    /// The underlying file returned fewer bytes than the image says exist.
    #[error("{path}: short read at file offset {offset:#x}: wanted {wanted} bytes, got {got}")]
    ShortRead {
        /// File that was read.
        path: PathBuf,
        /// File offset of the read.
        offset: u64,
        /// Bytes wanted.
        wanted: usize,
        /// Bytes returned before end of file.
        got: usize,
    },
    /// An I/O error from the operating system.
    #[error("{path}: I/O error at file offset {offset:#x}: {source}")]
    Io {
        /// File that was read.
        path: PathBuf,
        /// File offset of the read.
        offset: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Image metadata met while reading (for example a BAT entry) is invalid.
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

/// A read-only disk addressed in logical sectors.
///
/// Implementations are `Send + Sync` and take `&self` for reads, so many
/// tasks can read at once without a global lock (reads are positional: there
/// is no shared cursor).
pub trait BlockDevice: Send + Sync {
    /// Logical sector size in bytes (512 or 4096).
    fn logical_sector_size(&self) -> u32;
    /// Physical sector size in bytes (512 or 4096).
    fn physical_sector_size(&self) -> u32;
    /// Number of logical sectors.
    fn sector_count(&self) -> u64;
    /// A stable 16-byte identifier of the disk (the VHDX page-83 id, or a
    /// value derived from the file for raw images).
    fn disk_id(&self) -> [u8; 16];
    /// Whether the device refuses writes. Every device in this crate is
    /// read-only.
    fn is_read_only(&self) -> bool {
        true
    }
    /// Reads `buf.len()` bytes starting at logical sector `lba`. The length
    /// must be a multiple of the logical sector size.
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;

    /// Reads consecutive sectors starting at `lba` into several buffers, in
    /// order. Each buffer must be a multiple of the logical sector size.
    fn read_sectors_vectored(&self, lba: u64, bufs: &mut [&mut [u8]]) -> Result<(), BlockError> {
        let sector = u64::from(self.logical_sector_size());
        let mut next = lba;
        for buf in bufs.iter_mut() {
            self.read_sectors(next, buf)?;
            next = next.saturating_add(buf.len() as u64 / sector);
        }
        Ok(())
    }

    /// Where sectors `lba..lba + count` live: the first run of them that
    /// lives in one place, as an [`Extent`] of at least one and at most
    /// `count` sectors (none when `count` is 0). Errors like
    /// [`read_sectors`](Self::read_sectors) on a range outside the device.
    ///
    /// Reading every extent in turn yields the bytes `read_sectors` would.
    /// The default says [`Extent::Copy`] for the whole range: a device
    /// that can tell nothing better is read by copying.
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        check_sectors(self.sector_count(), self.logical_sector_size(), lba, count)?;
        Ok(Extent::Copy { sectors: count })
    }

    /// Size of the device in bytes.
    fn size_bytes(&self) -> u64 {
        self.sector_count()
            .saturating_mul(u64::from(self.logical_sector_size()))
    }
}

/// Where a run of a device's sectors lives, from [`BlockDevice::locate`].
#[derive(Debug, Clone, Copy)]
pub enum Extent<'a> {
    /// The sectors are `sectors * sector size` bytes of an open file at
    /// byte `offset`: read them with `pread` (or straight into their
    /// destination). The fd is borrowed from the device.
    File {
        /// The file holding the bytes.
        fd: BorrowedFd<'a>,
        /// Byte offset of the first sector in the file.
        offset: u64,
        /// Sectors in the run.
        sectors: u64,
    },
    /// The sectors are these bytes in memory (a whole number of sectors).
    Memory {
        /// The bytes.
        bytes: &'a [u8],
        /// Sectors in the run (`bytes.len()` / sector size).
        sectors: u64,
    },
    /// The sectors read as zeros and occupy no storage: a hole, an
    /// unallocated or zero block. What a sparse copy skips.
    Zero {
        /// Sectors in the run.
        sectors: u64,
    },
    /// No direct mapping (bytes assembled from several places, or a
    /// device that cannot tell): read the run with
    /// [`BlockDevice::read_sectors`].
    Copy {
        /// Sectors in the run.
        sectors: u64,
    },
}

impl Extent<'_> {
    /// Sectors in the run.
    pub fn sectors(&self) -> u64 {
        match *self {
            Extent::File { sectors, .. }
            | Extent::Memory { sectors, .. }
            | Extent::Zero { sectors }
            | Extent::Copy { sectors } => sectors,
        }
    }

    /// The same place cut to its first `sectors` sectors (`sectors` at most
    /// [`Extent::sectors`]), for a caller that wants less than was found.
    pub fn truncated(self, sectors: u64, sector_size: u32) -> Self {
        let sectors = sectors.min(self.sectors());
        match self {
            Extent::File { fd, offset, .. } => Extent::File {
                fd,
                offset,
                sectors,
            },
            Extent::Memory { bytes, .. } => Extent::Memory {
                bytes: bytes
                    .get(..(sectors * u64::from(sector_size)) as usize)
                    .unwrap_or(bytes),
                sectors,
            },
            Extent::Zero { .. } => Extent::Zero { sectors },
            Extent::Copy { .. } => Extent::Copy { sectors },
        }
    }
}

/// Opens an image file read-only without touching its access time
/// (`O_NOATIME`) where the kernel allows it, which is for the file's owner
/// or a process with `CAP_FOWNER`; otherwise a plain read-only open.
/// Reading a user's image then leaves even its metadata as it was, and no
/// read pays the kernel's access-time check.
pub fn open_image_file(path: &Path) -> std::io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let no_atime = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path);
        match no_atime {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => return other,
        }
    }
    File::open(path)
}

/// Checks that `count` sectors at `lba` lie inside a device of
/// `sector_count` sectors of `sector_size` bytes (the bounds rule of
/// [`BlockDevice::locate`]).
pub fn check_sectors(
    sector_count: u64,
    sector_size: u32,
    lba: u64,
    count: u64,
) -> Result<(), BlockError> {
    match lba.checked_add(count) {
        Some(end) if end <= sector_count => Ok(()),
        _ => Err(BlockError::OutOfRange {
            lba,
            len: count.saturating_mul(u64::from(sector_size)),
            sector_count,
        }),
    }
}

/// Checks that `len` bytes at sector `lba` are a whole number of sectors and
/// lie inside the device; returns the byte offset of `lba`.
pub fn check_request(device: &dyn BlockDevice, lba: u64, len: usize) -> Result<u64, BlockError> {
    let sector_size = device.logical_sector_size();
    if len % sector_size as usize != 0 {
        return Err(BlockError::UnalignedBuffer { len, sector_size });
    }
    let sectors = (len / sector_size as usize) as u64;
    let sector_count = device.sector_count();
    match lba.checked_add(sectors) {
        Some(end) if end <= sector_count => Ok(lba * u64::from(sector_size)),
        _ => Err(BlockError::OutOfRange {
            lba,
            len: len as u64,
            sector_count,
        }),
    }
}

/// Positional reads of the bytes a format reader parses: an image file on
/// the host, or an image held in memory.
///
/// `read_at` behaves like `pread`: it may return fewer bytes than asked,
/// and 0 at the end.
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
    /// The current length in bytes.
    fn len(&self) -> std::io::Result<u64>;
    /// The open file behind the bytes, if they are a host file's bytes at
    /// the same offsets (so [`Extent::File`] can point into it).
    fn host_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Whether the source holds no bytes.
    fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl ReadAt for File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn host_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let available = self.get(start..).unwrap_or_default();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Ok(n)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(Vec::len(self) as u64)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, reporting a short read as an
/// error (never as silent zeros).
pub fn read_exact_at(
    file: &dyn ReadAt,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), BlockError> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match file.read_at(at, &mut buf[done..]) {
            Ok(0) => {
                return Err(BlockError::ShortRead {
                    path: path.to_owned(),
                    offset,
                    wanted: buf.len(),
                    got: done,
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BlockError::Io {
                    path: path.to_owned(),
                    offset: at,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A raw disk image: the file's bytes are the disk's bytes.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: PathBuf,
    sector_size: u32,
    sector_count: u64,
    disk_id: [u8; 16],
}

impl RawFile {
    /// Opens `path` read-only with 512-byte sectors. A trailing partial
    /// sector is not exposed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BlockError> {
        Self::open_with_sector_size(path, 512)
    }

    /// Opens `path` read-only with the given logical sector size (512 or 4096).
    pub fn open_with_sector_size(
        path: impl AsRef<Path>,
        sector_size: u32,
    ) -> Result<Self, BlockError> {
        let path = path.as_ref().to_owned();
        if sector_size != 512 && sector_size != 4096 {
            return Err(BlockError::Corrupt(format!(
                "{}: sector size {sector_size} is not 512 or 4096",
                path.display()
            )));
        }
        let io_err = |source| BlockError::Io {
            path: path.clone(),
            offset: 0,
            source,
        };
        let file = open_image_file(&path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let sector_count = meta.len() / u64::from(sector_size);
        let disk_id = raw_disk_id(&meta);
        Ok(Self {
            file,
            path,
            sector_size,
            sector_count,
            disk_id,
        })
    }

    /// The path this image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A stable id for a raw image: derived from device and inode numbers, so it
/// is the same every time the same file is opened.
fn raw_disk_id(meta: &std::fs::Metadata) -> [u8; 16] {
    use std::os::unix::fs::MetadataExt;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&meta.dev().to_le_bytes());
    id[8..].copy_from_slice(&meta.ino().to_le_bytes());
    id
}

impl BlockDevice for RawFile {
    fn logical_sector_size(&self) -> u32 {
        self.sector_size
    }
    fn physical_sector_size(&self) -> u32 {
        self.sector_size
    }
    fn sector_count(&self) -> u64 {
        self.sector_count
    }
    fn disk_id(&self) -> [u8; 16] {
        self.disk_id
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = check_request(self, lba, buf.len())?;
        read_exact_at(&self.file, &self.path, offset, buf)
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        check_sectors(self.sector_count, self.sector_size, lba, count)?;
        // Holes in a sparse raw file are not looked for: that costs a
        // `SEEK_DATA` per call, and reading them yields zeros anyway.
        Ok(Extent::File {
            fd: self.file.as_fd(),
            offset: lba * u64::from(self.sector_size),
            sectors: count,
        })
    }
}
