//! The VHDX block device: opens and validates an image (and its parents) and
//! serves positional reads, coalescing contiguous allocated blocks.

use std::path::{Path, PathBuf};

use crate::bat::{Bat, BatCounts, Geometry, Reserved};
use crate::error::VhdxError;
use crate::file::FileView;
use crate::format::{FILE_SIGNATURE, Guid, MIB, bat_state};
use crate::header::{read_current_header, read_regions};
use crate::log::{LogState, replay};
use crate::metadata::read_metadata;
use crate::parent::ParentLocator;
use vmbdev_block::{BlockDevice, BlockError, Extent, ReadAt, check_request, check_sectors};

/// Deepest differencing chain accepted (child plus parents).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// Read-only facts about an opened image, for inspection tools.
#[derive(Debug, Clone)]
pub struct VhdxInfo {
    /// Path the image was opened from.
    pub path: PathBuf,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Payload block size in bytes.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// Page 83 disk id.
    pub disk_id: Guid,
    /// Data write GUID (what children link to).
    pub data_write_guid: Guid,
    /// Whether the file parameters ask to keep blocks allocated (fixed).
    pub leave_blocks_allocated: bool,
    /// BAT state counts.
    pub bat_counts: BatCounts,
    /// Log state at open.
    pub log: LogState,
    /// Parent locator, for differencing disks.
    pub parent_locator: Option<ParentLocator>,
    /// Paths of the parent chain, nearest parent first.
    pub parent_chain: Vec<PathBuf>,
}

/// An opened VHDX image (and its parent chain).
#[derive(Debug)]
pub struct Vhdx {
    file: FileView,
    bat: Bat,
    info: VhdxInfo,
    parent: Option<Box<Vhdx>>,
}

impl Vhdx {
    /// Opens a VHDX image read-only, replaying a dirty log in memory and
    /// opening its parents.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VhdxError> {
        let path = path.as_ref();
        let mut visited = Vec::new();
        Self::open_in_chain(path, &mut visited)
    }

    fn open_in_chain(path: &Path, visited: &mut Vec<PathBuf>) -> Result<Self, VhdxError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| VhdxError::Open {
            path: path.to_owned(),
            source,
        })?;
        if visited.contains(&canonical) {
            return Err(VhdxError::ParentCycle {
                path: path.to_owned(),
            });
        }
        if visited.len() >= MAX_CHAIN_DEPTH {
            return Err(VhdxError::ChainTooDeep {
                limit: MAX_CHAIN_DEPTH,
                path: path.to_owned(),
            });
        }
        visited.push(canonical);
        let mut image = Self::open_single(path)?;
        if let Some(locator) = image.info.parent_locator.clone() {
            let parent = image.open_parent(&locator, visited)?;
            image.info.parent_chain = std::iter::once(parent.info.path.clone())
                .chain(parent.info.parent_chain.iter().cloned())
                .collect();
            image.parent = Some(Box::new(parent));
        }
        Ok(image)
    }

    fn open_parent(
        &self,
        locator: &ParentLocator,
        visited: &mut Vec<PathBuf>,
    ) -> Result<Vhdx, VhdxError> {
        let tried = locator.candidates(&self.info.path);
        let Some(path) = tried.iter().find(|p| p.is_file()).cloned() else {
            return Err(VhdxError::ParentNotFound { tried });
        };
        let parent = Self::open_in_chain(&path, visited).map_err(|e| match e {
            e @ (VhdxError::ParentCycle { .. } | VhdxError::ChainTooDeep { .. }) => e,
            e => VhdxError::Parent {
                path: path.clone(),
                source: Box::new(e),
            },
        })?;
        if parent.info.data_write_guid != locator.parent_linkage {
            return Err(VhdxError::ParentLinkageMismatch {
                path,
                expected: locator.parent_linkage,
                found: parent.info.data_write_guid,
            });
        }
        if parent.info.logical_sector_size != self.info.logical_sector_size {
            return Err(VhdxError::ParentSectorSizeMismatch {
                path,
                child: self.info.logical_sector_size,
                parent: parent.info.logical_sector_size,
            });
        }
        Ok(parent)
    }

    /// Opens an image whose bytes come from `source` (a file, or bytes in
    /// memory), named `name` in errors and in [`VhdxInfo::path`]. A
    /// differencing image is refused with [`VhdxError::ParentNotFound`]:
    /// its parents are found as files next to a child file, and a source has
    /// no directory.
    pub fn from_source(source: Box<dyn ReadAt>, name: impl AsRef<Path>) -> Result<Self, VhdxError> {
        let image = Self::open_source(source, name.as_ref())?;
        if image.info.parent_locator.is_some() {
            return Err(VhdxError::ParentNotFound { tried: Vec::new() });
        }
        Ok(image)
    }

    fn open_single(path: &Path) -> Result<Self, VhdxError> {
        let file = vmbdev_block::open_image_file(path).map_err(|source| VhdxError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::open_source(Box::new(file), path)
    }

    fn open_source(source: Box<dyn ReadAt>, path: &Path) -> Result<Self, VhdxError> {
        let real_len = source.len().map_err(|source| VhdxError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut view = FileView::new(source, path.to_owned(), real_len);
        if real_len < MIB {
            return Err(VhdxError::FileTooSmall { len: real_len });
        }
        let mut ident = [0u8; 8];
        view.read_raw(0, &mut ident)?;
        if &ident != FILE_SIGNATURE {
            return Err(VhdxError::BadIdentifier { found: ident });
        }
        let current = read_current_header(&view, real_len)?;
        let header = current.header;
        let (log_offset, log_length) = (header.log_offset.get(), header.log_length.get());
        let replayed = replay(&view, log_offset, log_length, header.log_guid)?;
        view.set_overlay(replayed.pages, replayed.logical_len);
        let regions = read_regions(&view, log_offset, log_length)?;
        let meta = read_metadata(&view, regions.metadata)?;
        let parent_locator = meta
            .parent_locator
            .as_deref()
            .map(ParentLocator::parse)
            .transpose()?;
        let geometry = Geometry {
            block_size: meta.block_size,
            logical_sector_size: meta.logical_sector_size,
            disk_size: meta.disk_size,
            has_parent: meta.has_parent,
        };
        let reserved = [
            Reserved {
                name: "log",
                offset: log_offset,
                length: u64::from(log_length),
            },
            Reserved {
                name: "BAT",
                offset: regions.bat.offset,
                length: u64::from(regions.bat.length),
            },
            Reserved {
                name: "metadata",
                offset: regions.metadata.offset,
                length: u64::from(regions.metadata.length),
            },
        ];
        let bat = Bat::read(&view, regions.bat, geometry, &reserved)?;
        let info = VhdxInfo {
            path: path.to_owned(),
            virtual_size: meta.disk_size,
            block_size: meta.block_size,
            logical_sector_size: meta.logical_sector_size,
            physical_sector_size: meta.physical_sector_size,
            disk_id: meta.disk_id,
            data_write_guid: header.data_write_guid,
            leave_blocks_allocated: meta.leave_blocks_allocated,
            bat_counts: bat.counts,
            log: replayed.state,
            parent_locator,
            parent_chain: Vec::new(),
        };
        Ok(Self {
            file: view,
            bat,
            info,
            parent: None,
        })
    }

    /// Facts about the image.
    pub fn info(&self) -> &VhdxInfo {
        &self.info
    }

    /// The opened parent, for differencing disks.
    pub fn parent(&self) -> Option<&Vhdx> {
        self.parent.as_deref()
    }

    /// Reads virtual-disk bytes at a sector-aligned `offset` (checked by the
    /// caller to lie inside the disk).
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let block_size = u64::from(self.info.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / block_size;
            let in_block = at % block_size;
            let len = ((block_size - in_block) as usize).min(buf.len() - done);
            let entry = self.bat.payload(block);
            let out = &mut buf[done..];
            let consumed = match entry.state {
                bat_state::FULLY_PRESENT => self.read_present_run(block, in_block, out)?,
                bat_state::NOT_PRESENT => {
                    self.read_parent(at, &mut out[..len])?;
                    len
                }
                bat_state::PARTIALLY_PRESENT => {
                    self.read_partial(block, in_block, &mut out[..len])?;
                    len
                }
                _ => {
                    out[..len].fill(0);
                    len
                }
            };
            done += consumed;
        }
        Ok(())
    }

    /// Reads from a FULLY_PRESENT block and every following block that is
    /// FULLY_PRESENT and contiguous in the file, in one read.
    fn read_present_run(
        &self,
        block: u64,
        in_block: u64,
        out: &mut [u8],
    ) -> Result<usize, BlockError> {
        let block_size = u64::from(self.info.block_size);
        let first = self.bat.payload(block);
        let mut run = ((block_size - in_block) as usize).min(out.len());
        let mut next = block + 1;
        let mut expected = first.file_offset + block_size;
        while run < out.len() && next < self.bat.data_blocks {
            let entry = self.bat.payload(next);
            if entry.state != bat_state::FULLY_PRESENT || entry.file_offset != expected {
                break;
            }
            run += (block_size as usize).min(out.len() - run);
            next += 1;
            expected += block_size;
        }
        self.file
            .read_at(first.file_offset + in_block, &mut out[..run])?;
        Ok(run)
    }

    /// Reads bytes this image does not hold: from the parent, or zeros.
    fn read_parent(&self, offset: u64, out: &mut [u8]) -> Result<(), BlockError> {
        let Some(parent) = &self.parent else {
            out.fill(0);
            return Ok(());
        };
        let parent_size = parent.info.virtual_size;
        let inside = parent_size.saturating_sub(offset).min(out.len() as u64) as usize;
        let (from_parent, beyond) = out.split_at_mut(inside);
        if !from_parent.is_empty() {
            parent.read_bytes(offset, from_parent)?;
        }
        beyond.fill(0);
        Ok(())
    }

    /// Reads a PARTIALLY_PRESENT block range: runs of sectors with the same
    /// bitmap bit come from this file (1) or the parent (0).
    fn read_partial(&self, block: u64, in_block: u64, out: &mut [u8]) -> Result<(), BlockError> {
        let sector = u64::from(self.info.logical_sector_size);
        let block_size = u64::from(self.info.block_size);
        let sectors_per_block = block_size / sector;
        let first_bit = (block % self.bat.chunk_ratio) * sectors_per_block + in_block / sector;
        let count = out.len() as u64 / sector;
        let byte_start = first_bit / 8;
        let byte_end = (first_bit + count).div_ceil(8);
        let mut bitmap = vec![0u8; (byte_end - byte_start) as usize];
        let bitmap_entry = self.bat.bitmap_for(block);
        self.file
            .read_at(bitmap_entry.file_offset + byte_start, &mut bitmap)?;
        let bit = |i: u64| {
            let b = first_bit + i - byte_start * 8;
            bitmap
                .get((b / 8) as usize)
                .is_some_and(|x| x >> (b % 8) & 1 == 1)
        };
        let data = self.bat.payload(block).file_offset;
        let mut i = 0;
        while i < count {
            let here = bit(i);
            let mut j = i + 1;
            while j < count && bit(j) == here {
                j += 1;
            }
            let dst = &mut out[(i * sector) as usize..(j * sector) as usize];
            let in_block_at = in_block + i * sector;
            if here {
                self.file.read_at(data + in_block_at, dst)?;
            } else {
                self.read_parent(block * block_size + in_block_at, dst)?;
            }
            i = j;
        }
        Ok(())
    }
}

/// Sector-bitmap bytes read per step while finding a run in a partially
/// present block: on the stack, so locating allocates nothing.
const BITMAP_CHUNK: usize = 64;

impl Vhdx {
    /// Where `len` virtual-disk bytes at the sector-aligned `offset` live
    /// (checked by the caller to lie inside the disk, `len > 0`): the first
    /// run, as in [`BlockDevice::locate`], in bytes.
    fn locate_bytes(&self, offset: u64, len: u64) -> Result<Extent<'_>, BlockError> {
        let sector = u64::from(self.info.logical_sector_size);
        let block_size = u64::from(self.info.block_size);
        let block = offset / block_size;
        let in_block = offset % block_size;
        let here = (block_size - in_block).min(len);
        let entry = self.bat.payload(block);
        match entry.state {
            bat_state::FULLY_PRESENT => {
                let run = self.present_run(block, in_block, len);
                let at = entry.file_offset + in_block;
                Ok(self.file_extent(at, run))
            }
            bat_state::NOT_PRESENT if self.parent.is_some() => self.locate_parent(offset, here),
            bat_state::PARTIALLY_PRESENT => self.locate_partial(block, in_block, here),
            _ => {
                // Zeros (no parent to defer to): merge following zero blocks.
                let mut run = here;
                let mut next = block + 1;
                while run < len && next < self.bat.data_blocks && self.reads_as_zero(next) {
                    run += block_size.min(len - run);
                    next += 1;
                }
                Ok(Extent::Zero {
                    sectors: run / sector,
                })
            }
        }
    }

    /// Whether a whole payload block reads as zeros without a parent.
    fn reads_as_zero(&self, block: u64) -> bool {
        match self.bat.payload(block).state {
            bat_state::FULLY_PRESENT | bat_state::PARTIALLY_PRESENT => false,
            bat_state::NOT_PRESENT => self.parent.is_none(),
            _ => true,
        }
    }

    /// Bytes of the run of FULLY_PRESENT blocks from `block` (at
    /// `in_block`) that are contiguous in the file, at most `len`.
    fn present_run(&self, block: u64, in_block: u64, len: u64) -> u64 {
        let block_size = u64::from(self.info.block_size);
        let mut run = (block_size - in_block).min(len);
        let mut next = block + 1;
        let mut expected = self.bat.payload(block).file_offset + block_size;
        while run < len && next < self.bat.data_blocks {
            let entry = self.bat.payload(next);
            if entry.state != bat_state::FULLY_PRESENT || entry.file_offset != expected {
                break;
            }
            run += block_size.min(len - run);
            next += 1;
            expected += block_size;
        }
        run
    }

    /// `len` bytes of this image's file at `at`: a file extent when the
    /// file holds them as they are, else a copy.
    fn file_extent(&self, at: u64, len: u64) -> Extent<'_> {
        let sectors = len / u64::from(self.info.logical_sector_size);
        match self.file.direct(at, len) {
            Some(fd) => Extent::File {
                fd,
                offset: at,
                sectors,
            },
            None => Extent::Copy { sectors },
        }
    }

    /// Bytes this image does not hold, found in the parent (zeros past the
    /// parent's end). The parent's first run, cut to `len`.
    fn locate_parent(&self, offset: u64, len: u64) -> Result<Extent<'_>, BlockError> {
        let sector = u64::from(self.info.logical_sector_size);
        let Some(parent) = &self.parent else {
            return Ok(Extent::Zero {
                sectors: len / sector,
            });
        };
        let inside = parent.info.virtual_size.saturating_sub(offset).min(len);
        if inside < sector {
            return Ok(Extent::Zero {
                sectors: len / sector,
            });
        }
        let extent = parent.locate_bytes(offset, inside - inside % sector)?;
        Ok(extent.truncated(len / sector, self.info.logical_sector_size))
    }

    /// The first run of `len` bytes at `in_block` of a PARTIALLY_PRESENT
    /// block whose sector-bitmap bits agree: this file's bytes (1) or the
    /// parent's (0).
    fn locate_partial(
        &self,
        block: u64,
        in_block: u64,
        len: u64,
    ) -> Result<Extent<'_>, BlockError> {
        let sector = u64::from(self.info.logical_sector_size);
        let block_size = u64::from(self.info.block_size);
        let sectors_per_block = block_size / sector;
        let first_bit = (block % self.bat.chunk_ratio) * sectors_per_block + in_block / sector;
        let count = len / sector;
        let bitmap_at = self.bat.bitmap_for(block).file_offset;
        let mut chunk = [0u8; BITMAP_CHUNK];
        let mut loaded: Option<u64> = None;
        let mut bit = |i: u64| -> Result<bool, BlockError> {
            let b = first_bit + i;
            let byte = b / 8;
            let base = byte - byte % BITMAP_CHUNK as u64;
            if loaded != Some(base) {
                self.file.read_at(bitmap_at + base, &mut chunk)?;
                loaded = Some(base);
            }
            Ok(chunk[(byte - base) as usize] >> (b % 8) & 1 == 1)
        };
        let present = bit(0)?;
        let mut run = 1;
        while run < count && bit(run)? == present {
            run += 1;
        }
        if present {
            let at = self.bat.payload(block).file_offset + in_block;
            Ok(self.file_extent(at, run * sector))
        } else {
            self.locate_parent(block * block_size + in_block, run * sector)
        }
    }
}

impl BlockDevice for Vhdx {
    fn logical_sector_size(&self) -> u32 {
        self.info.logical_sector_size
    }
    fn physical_sector_size(&self) -> u32 {
        self.info.physical_sector_size
    }
    fn sector_count(&self) -> u64 {
        self.info.virtual_size / u64::from(self.info.logical_sector_size)
    }
    fn disk_id(&self) -> [u8; 16] {
        self.info.disk_id.0
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = check_request(self, lba, buf.len())?;
        self.read_bytes(offset, buf)
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        let sector = self.info.logical_sector_size;
        check_sectors(self.sector_count(), sector, lba, count)?;
        if count == 0 {
            return Ok(Extent::Copy { sectors: 0 });
        }
        let sector = u64::from(sector);
        self.locate_bytes(lba * sector, count * sector)
    }
}

/// Many tasks read one image at once: the device must be shareable.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Vhdx>();
};
