//! The VHD block device: opens and validates an image (and its parents)
//! and serves positional reads through the BAT and the sector bitmaps.

use std::path::{Path, PathBuf};

use zerocopy::FromBytes;

use crate::error::VhdError;
use crate::format::{
    DYNAMIC_COOKIE, DYNAMIC_HEADER_SIZE, DynamicHeader, FOOTER_CHECKSUM_AT, FOOTER_COOKIE,
    FOOTER_SIZE, Footer, HEADER_CHECKSUM_AT, NO_OFFSET, SECTOR, UNALLOCATED, VERSION_MAJOR,
    checksum, disk_type,
};
use crate::parent::{
    MAX_LOCATOR_BYTES, ParentLocator, candidates, code_text, decode_path, locator_entries,
    parent_name,
};
use vmbdev_block::{
    BlockDevice, BlockError, Extent, ReadAt, check_request, check_sectors, read_exact_at,
};

/// Deepest differencing chain accepted (child plus parents).
pub const MAX_CHAIN_DEPTH: usize = 16;
/// Most BAT entries accepted (16 MiB of BAT; 8 TiB at 2 MiB blocks).
pub const MAX_TABLE_ENTRIES: u32 = 1 << 22;
/// Smallest block size accepted: one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest dynamic or differencing disk: the specification's 2040 GiB.
pub const MAX_SPARSE_SIZE: u64 = 2040 << 30;

/// The three kinds of VHD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// The disk's bytes, then the footer.
    Fixed,
    /// Sparse blocks located through the BAT.
    Dynamic,
    /// Sparse blocks over a parent image.
    Differencing,
}

impl DiskType {
    /// The lowercase name (`"fixed"`).
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// The CHS geometry stored in the footer (informational: the size comes
/// from the current size field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Chs {
    /// Bytes the geometry addresses.
    pub fn size_bytes(self) -> u64 {
        u64::from(self.cylinders)
            * u64::from(self.heads)
            * u64::from(self.sectors_per_track)
            * SECTOR
    }
}

/// Read-only facts about an opened image, for inspection tools.
#[derive(Debug, Clone)]
pub struct VhdInfo {
    /// Path the image was opened from.
    pub path: PathBuf,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Virtual disk size in bytes (the footer's current size).
    pub current_size: u64,
    /// Size at creation.
    pub original_size: u64,
    /// Stored CHS geometry.
    pub geometry: Chs,
    /// Creator application code (`"qemu"`, `"win "`, `"vpc "`).
    pub creator_app: String,
    /// Creator version, major in the high 16 bits.
    pub creator_version: u32,
    /// Creator host OS code (`"Wi2k"`).
    pub creator_host_os: String,
    /// Creation time: seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// The image's unique id.
    pub unique_id: [u8; 16],
    /// Whether the footer's saved-state flag is set.
    pub saved_state: bool,
    /// Block size of dynamic and differencing disks.
    pub block_size: Option<u32>,
    /// Blocks the disk has (dynamic and differencing).
    pub blocks: u64,
    /// Blocks allocated in this file.
    pub allocated_blocks: u64,
    /// The parent's unique id, for differencing disks.
    pub parent_unique_id: Option<[u8; 16]>,
    /// The parent's file name from the dynamic header.
    pub parent_name: Option<String>,
    /// The used parent locator entries.
    pub parent_locators: Vec<ParentLocator>,
    /// Paths of the parent chain, nearest parent first.
    pub parent_chain: Vec<PathBuf>,
}

/// The BAT and block layout of a dynamic or differencing disk.
#[derive(Debug)]
struct Sparse {
    block_size: u64,
    /// Bytes of a block's sector bitmap (rounded up to a sector).
    bitmap_size: u64,
    /// One entry per block the disk needs: the sector of the block's bitmap.
    bat: Vec<u32>,
}

/// A file range holding metadata, which no block may share.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    what: &'static str,
    offset: u64,
    length: u64,
}

impl Reserved {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
    fn overlaps(&self, offset: u64, end: u64) -> bool {
        self.length != 0 && offset < self.end() && self.offset < end
    }
}

/// An opened VHD image (and its parent chain).
#[derive(Debug)]
pub struct Vhd {
    file: Box<dyn ReadAt>,
    info: VhdInfo,
    sparse: Option<Sparse>,
    parent: Option<Box<Vhd>>,
}

impl Vhd {
    /// Opens a VHD image read-only, with its parents for a differencing disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VhdError> {
        let mut visited = Vec::new();
        Self::open_in_chain(path.as_ref(), &mut visited)
    }

    /// Opens an image whose bytes come from `source` (a file, or bytes in
    /// memory), named `name` in errors and in [`VhdInfo::path`]. A
    /// differencing image is refused with [`VhdError::ParentNotFound`]: its
    /// parents are found as files next to a child file, and a source has no
    /// directory.
    pub fn from_source(source: Box<dyn ReadAt>, name: impl AsRef<Path>) -> Result<Self, VhdError> {
        let image = Self::open_source(source, name.as_ref())?;
        if image.info.disk_type == DiskType::Differencing {
            return Err(VhdError::ParentNotFound { tried: Vec::new() });
        }
        Ok(image)
    }

    /// Facts about the image.
    pub fn info(&self) -> &VhdInfo {
        &self.info
    }

    /// The opened parent, for differencing disks.
    pub fn parent(&self) -> Option<&Vhd> {
        self.parent.as_deref()
    }

    fn open_in_chain(path: &Path, visited: &mut Vec<PathBuf>) -> Result<Self, VhdError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| VhdError::Open {
            path: path.to_owned(),
            source,
        })?;
        if visited.contains(&canonical) {
            return Err(VhdError::ParentCycle {
                path: path.to_owned(),
            });
        }
        if visited.len() >= MAX_CHAIN_DEPTH {
            return Err(VhdError::ChainTooDeep {
                limit: MAX_CHAIN_DEPTH,
                path: path.to_owned(),
            });
        }
        visited.push(canonical);
        let file = vmbdev_block::open_image_file(path).map_err(|source| VhdError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut image = Self::open_source(Box::new(file), path)?;
        if image.info.disk_type == DiskType::Differencing {
            let parent = image.open_parent(visited)?;
            image.info.parent_chain = std::iter::once(parent.info.path.clone())
                .chain(parent.info.parent_chain.iter().cloned())
                .collect();
            image.parent = Some(Box::new(parent));
        }
        Ok(image)
    }

    fn open_parent(&self, visited: &mut Vec<PathBuf>) -> Result<Vhd, VhdError> {
        let name = self.info.parent_name.as_deref().unwrap_or_default();
        let tried = candidates(&self.info.path, &self.info.parent_locators, name);
        let Some(path) = tried.iter().find(|p| p.is_file()).cloned() else {
            return Err(VhdError::ParentNotFound { tried });
        };
        let parent = Self::open_in_chain(&path, visited).map_err(|e| match e {
            e @ (VhdError::ParentCycle { .. } | VhdError::ChainTooDeep { .. }) => e,
            e => VhdError::Parent {
                path: path.clone(),
                source: Box::new(e),
            },
        })?;
        let expected = self.info.parent_unique_id.unwrap_or_default();
        if parent.info.unique_id != expected {
            return Err(VhdError::ParentIdMismatch {
                path,
                expected,
                found: parent.info.unique_id,
            });
        }
        Ok(parent)
    }

    fn open_source(file: Box<dyn ReadAt>, path: &Path) -> Result<Self, VhdError> {
        let len = file.len().map_err(|source| VhdError::Open {
            path: path.to_owned(),
            source,
        })?;
        if len < FOOTER_SIZE as u64 {
            return Err(VhdError::FileTooSmall {
                len,
                what: "footer",
                needed: FOOTER_SIZE as u64,
            });
        }
        let footer_offset = len - FOOTER_SIZE as u64;
        let mut raw_footer = [0u8; FOOTER_SIZE];
        read_exact_at(&*file, path, footer_offset, &mut raw_footer)?;
        let footer = check_footer(&raw_footer, "footer", footer_offset)?;
        let size = footer.current_size.get();
        if size == 0 || size % SECTOR != 0 {
            return Err(VhdError::BadSize { size });
        }
        let mut info = footer_info(path, &footer)?;
        let sparse = match info.disk_type {
            DiskType::Fixed => {
                check_fixed_len(size, len)?;
                None
            }
            DiskType::Dynamic | DiskType::Differencing => {
                let sparse =
                    open_sparse(&*file, path, &raw_footer, &footer, footer_offset, &mut info)?;
                Some(sparse)
            }
        };
        Ok(Self {
            file,
            info,
            sparse,
            parent: None,
        })
    }

    /// Reads virtual-disk bytes at a sector-aligned `offset` (checked by the
    /// caller to lie inside the disk).
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let Some(sparse) = &self.sparse else {
            return read_exact_at(&*self.file, &self.info.path, offset, buf);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / sparse.block_size;
            let in_block = at % sparse.block_size;
            let len = ((sparse.block_size - in_block) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + len];
            // `block` < bat.len(): the caller checked `offset` against the
            // size, and the BAT has an entry per block of that size.
            match sparse.bat.get(block as usize).copied() {
                Some(UNALLOCATED) | None => self.read_missing(at, out)?,
                Some(sector) => self.read_block(sparse, u64::from(sector) * SECTOR, at, out)?,
            }
            done += len;
        }
        Ok(())
    }

    /// Reads a range inside one allocated block: runs of sectors whose bitmap
    /// bit is set come from this file, the others from the parent (or are
    /// zeros, for a dynamic disk).
    fn read_block(
        &self,
        sparse: &Sparse,
        block_offset: u64,
        at: u64,
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        let in_block = at % sparse.block_size;
        let first = in_block / SECTOR;
        let count = out.len() as u64 / SECTOR;
        let byte_start = first / 8;
        let byte_end = (first + count).div_ceil(8);
        let mut bitmap = vec![0u8; (byte_end - byte_start) as usize];
        read_exact_at(
            &*self.file,
            &self.info.path,
            block_offset + byte_start,
            &mut bitmap,
        )?;
        // Bit 7 of bitmap byte 0 is the block's first sector.
        let present = |i: u64| {
            let bit = first + i - byte_start * 8;
            bitmap
                .get((bit / 8) as usize)
                .is_some_and(|b| b >> (7 - bit % 8) & 1 == 1)
        };
        let data = block_offset + sparse.bitmap_size;
        let mut i = 0;
        while i < count {
            let here = present(i);
            let mut j = i + 1;
            while j < count && present(j) == here {
                j += 1;
            }
            let dst = &mut out[(i * SECTOR) as usize..(j * SECTOR) as usize];
            if here {
                read_exact_at(
                    &*self.file,
                    &self.info.path,
                    data + in_block + i * SECTOR,
                    dst,
                )?;
            } else {
                self.read_missing(at + i * SECTOR, dst)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Reads bytes this image does not hold: from the parent (zeros past its
    /// end), or zeros.
    fn read_missing(&self, offset: u64, out: &mut [u8]) -> Result<(), BlockError> {
        let Some(parent) = &self.parent else {
            out.fill(0);
            return Ok(());
        };
        let inside = parent
            .info
            .current_size
            .saturating_sub(offset)
            .min(out.len() as u64) as usize;
        let (from_parent, beyond) = out.split_at_mut(inside);
        if !from_parent.is_empty() {
            parent.read_bytes(offset, from_parent)?;
        }
        beyond.fill(0);
        Ok(())
    }
}

/// Validates a footer's cookie, checksum, version and disk type.
fn check_footer(
    raw: &[u8; FOOTER_SIZE],
    structure: &'static str,
    offset: u64,
) -> Result<Footer, VhdError> {
    let footer = Footer::read_from_bytes(raw).map_err(|_| VhdError::FileTooSmall {
        len: raw.len() as u64,
        what: "footer",
        needed: FOOTER_SIZE as u64,
    })?;
    if &footer.cookie != FOOTER_COOKIE {
        return Err(VhdError::BadCookie {
            structure,
            offset,
            found: footer.cookie,
            expected: "conectix",
        });
    }
    let computed = checksum(raw, FOOTER_CHECKSUM_AT);
    if footer.checksum.get() != computed {
        return Err(VhdError::BadChecksum {
            structure,
            offset,
            stored: footer.checksum.get(),
            computed,
        });
    }
    let version = footer.version.get();
    if (version >> 16) as u16 != VERSION_MAJOR {
        return Err(VhdError::UnsupportedVersion {
            structure,
            offset,
            version,
        });
    }
    match footer.disk_type.get() {
        disk_type::FIXED | disk_type::DYNAMIC | disk_type::DIFFERENCING => Ok(footer),
        other => Err(VhdError::BadDiskType {
            offset,
            disk_type: other,
        }),
    }
}

fn footer_info(path: &Path, footer: &Footer) -> Result<VhdInfo, VhdError> {
    let disk_type = match footer.disk_type.get() {
        disk_type::FIXED => DiskType::Fixed,
        disk_type::DYNAMIC => DiskType::Dynamic,
        _ => DiskType::Differencing,
    };
    Ok(VhdInfo {
        path: path.to_owned(),
        disk_type,
        current_size: footer.current_size.get(),
        original_size: footer.original_size.get(),
        geometry: Chs {
            cylinders: footer.cylinders.get(),
            heads: footer.heads,
            sectors_per_track: footer.sectors_per_track,
        },
        creator_app: code_text(&footer.creator_app),
        creator_version: footer.creator_version.get(),
        creator_host_os: code_text(&footer.creator_host_os),
        timestamp: footer.timestamp.get(),
        unique_id: footer.unique_id,
        saved_state: footer.saved_state != 0,
        block_size: None,
        blocks: 0,
        allocated_blocks: 0,
        parent_unique_id: None,
        parent_name: None,
        parent_locators: Vec::new(),
        parent_chain: Vec::new(),
    })
}

/// A fixed disk's bytes precede the footer: the file holds at least the
/// current size plus the footer.
fn check_fixed_len(size: u64, len: u64) -> Result<(), VhdError> {
    let needed = size
        .checked_add(FOOTER_SIZE as u64)
        .ok_or(VhdError::SizeTooLarge {
            size,
            limit: u64::MAX - FOOTER_SIZE as u64,
        })?;
    if needed > len {
        return Err(VhdError::FixedTruncated {
            size,
            needed,
            file_len: len,
        });
    }
    Ok(())
}

/// Validates the footer copy, the dynamic header, the BAT, the parent
/// locators and every allocated block of a dynamic or differencing disk.
fn open_sparse(
    file: &dyn ReadAt,
    path: &Path,
    raw_footer: &[u8; FOOTER_SIZE],
    footer: &Footer,
    footer_offset: u64,
    info: &mut VhdInfo,
) -> Result<Sparse, VhdError> {
    let size = info.current_size;
    if size > MAX_SPARSE_SIZE {
        return Err(VhdError::SizeTooLarge {
            size,
            limit: MAX_SPARSE_SIZE,
        });
    }
    let smallest = (2 * FOOTER_SIZE + DYNAMIC_HEADER_SIZE) as u64;
    if footer_offset + (FOOTER_SIZE as u64) < smallest {
        return Err(VhdError::FileTooSmall {
            len: footer_offset + FOOTER_SIZE as u64,
            what: "dynamic disk",
            needed: smallest,
        });
    }
    let mut raw_copy = [0u8; FOOTER_SIZE];
    read_exact_at(file, path, 0, &mut raw_copy)?;
    check_footer(&raw_copy, "footer copy", 0)?;
    if raw_copy != *raw_footer {
        return Err(VhdError::FooterCopyMismatch { footer_offset });
    }
    let header_offset = footer.data_offset.get();
    let header = read_header(file, path, header_offset, footer_offset)?;
    let block_size = header.block_size.get();
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(VhdError::BadBlockSize {
            offset: header_offset,
            block_size,
        });
    }
    let entries = header.max_table_entries.get();
    if entries > MAX_TABLE_ENTRIES {
        return Err(VhdError::TableTooLarge {
            offset: header_offset,
            entries,
            limit: MAX_TABLE_ENTRIES,
        });
    }
    let blocks = size.div_ceil(u64::from(block_size));
    if u64::from(entries) < blocks {
        return Err(VhdError::TableTooSmall {
            offset: header_offset,
            entries,
            needed: blocks,
        });
    }
    let mut reserved = vec![
        Reserved {
            what: "footer copy",
            offset: 0,
            length: FOOTER_SIZE as u64,
        },
        Reserved {
            what: "dynamic header",
            offset: header_offset,
            length: DYNAMIC_HEADER_SIZE as u64,
        },
        Reserved {
            what: "BAT",
            offset: header.table_offset.get(),
            length: u64::from(entries) * 4,
        },
    ];
    let differencing = info.disk_type == DiskType::Differencing;
    if differencing {
        info.parent_unique_id = Some(header.parent_unique_id);
        info.parent_name = Some(parent_name(&header.parent_name));
        info.parent_locators = read_locators(file, path, &header, footer_offset)?;
        reserved.extend(info.parent_locators.iter().map(|l| Reserved {
            what: "parent locator data",
            offset: l.offset,
            length: u64::from(l.length),
        }));
    }
    check_metadata_layout(&reserved, footer_offset)?;
    let bat = read_bat(file, path, header.table_offset.get(), blocks)?;
    // One bit per sector, rounded up to whole sectors.
    let bitmap_size = (u64::from(block_size) / SECTOR)
        .div_ceil(8)
        .div_ceil(SECTOR)
        * SECTOR;
    let sparse = Sparse {
        block_size: u64::from(block_size),
        bitmap_size,
        bat,
    };
    check_blocks(&sparse, &reserved, footer_offset)?;
    info.block_size = Some(block_size);
    info.blocks = blocks;
    info.allocated_blocks = sparse.bat.iter().filter(|&&e| e != UNALLOCATED).count() as u64;
    Ok(sparse)
}

fn read_header(
    file: &dyn ReadAt,
    path: &Path,
    offset: u64,
    footer_offset: u64,
) -> Result<DynamicHeader, VhdError> {
    let bad = |reason| VhdError::BadHeaderOffset { offset, reason };
    if offset == NO_OFFSET {
        return Err(bad("unset (all ones) in a dynamic disk"));
    }
    if offset < FOOTER_SIZE as u64 {
        return Err(bad("inside the footer copy"));
    }
    match offset.checked_add(DYNAMIC_HEADER_SIZE as u64) {
        Some(end) if end <= footer_offset => {}
        _ => return Err(bad("past the footer")),
    }
    let mut raw = [0u8; DYNAMIC_HEADER_SIZE];
    read_exact_at(file, path, offset, &mut raw)?;
    let header = DynamicHeader::read_from_bytes(&raw[..]).map_err(|_| bad("unreadable"))?;
    const STRUCTURE: &str = "dynamic header";
    if &header.cookie != DYNAMIC_COOKIE {
        return Err(VhdError::BadCookie {
            structure: STRUCTURE,
            offset,
            found: header.cookie,
            expected: "cxsparse",
        });
    }
    let computed = checksum(&raw, HEADER_CHECKSUM_AT);
    if header.checksum.get() != computed {
        return Err(VhdError::BadChecksum {
            structure: STRUCTURE,
            offset,
            stored: header.checksum.get(),
            computed,
        });
    }
    let version = header.header_version.get();
    if (version >> 16) as u16 != VERSION_MAJOR {
        return Err(VhdError::UnsupportedVersion {
            structure: STRUCTURE,
            offset,
            version,
        });
    }
    Ok(header)
}

/// Reads and decodes the used parent locator entries.
fn read_locators(
    file: &dyn ReadAt,
    path: &Path,
    header: &DynamicHeader,
    footer_offset: u64,
) -> Result<Vec<ParentLocator>, VhdError> {
    let mut locators = locator_entries(header);
    for locator in &mut locators {
        if locator.length > MAX_LOCATOR_BYTES {
            return Err(VhdError::BadParentLocator {
                index: locator.index,
                platform: locator.platform.clone(),
                reason: "data longer than 64 KiB",
            });
        }
        check_inside(
            "parent locator data",
            locator.offset,
            u64::from(locator.length),
            footer_offset,
        )?;
        let mut data = vec![0u8; locator.length as usize];
        read_exact_at(file, path, locator.offset, &mut data)?;
        locator.path = decode_path(locator, &data)?;
    }
    Ok(locators)
}

/// Metadata lies after the footer copy and before the footer.
fn check_inside(
    what: &'static str,
    offset: u64,
    length: u64,
    footer_offset: u64,
) -> Result<(), VhdError> {
    let end = offset.checked_add(length);
    if offset < FOOTER_SIZE as u64 || end.is_none_or(|end| end > footer_offset) {
        return Err(VhdError::OutsideFile {
            what,
            offset,
            length,
            limit: footer_offset,
        });
    }
    Ok(())
}

/// Every metadata structure lies inside the file and no two share bytes.
fn check_metadata_layout(reserved: &[Reserved], footer_offset: u64) -> Result<(), VhdError> {
    for r in &reserved[1..] {
        check_inside(r.what, r.offset, r.length, footer_offset)?;
    }
    for (i, a) in reserved.iter().enumerate() {
        if let Some(b) = reserved[i + 1..]
            .iter()
            .find(|b| b.overlaps(a.offset, a.end()))
        {
            return Err(VhdError::MetadataOverlap {
                first: a.what,
                first_offset: a.offset,
                second: b.what,
                second_offset: b.offset,
            });
        }
    }
    Ok(())
}

/// Reads the BAT entries of the disk's `blocks` blocks (entries past them
/// are never used).
fn read_bat(
    file: &dyn ReadAt,
    path: &Path,
    offset: u64,
    blocks: u64,
) -> Result<Vec<u32>, VhdError> {
    let mut raw = vec![0u8; blocks as usize * 4];
    read_exact_at(file, path, offset, &mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Every allocated block lies before the footer, clear of metadata, and no
/// two blocks share bytes.
fn check_blocks(
    sparse: &Sparse,
    reserved: &[Reserved],
    footer_offset: u64,
) -> Result<(), VhdError> {
    let span = sparse.bitmap_size + sparse.block_size;
    let mut placed: Vec<(u64, u64)> = Vec::new();
    for (block, &entry) in sparse.bat.iter().enumerate() {
        if entry == UNALLOCATED {
            continue;
        }
        let block = block as u64;
        let offset = u64::from(entry) * SECTOR;
        let end = offset + span;
        if end > footer_offset {
            return Err(VhdError::BlockBeyondEof {
                block,
                offset,
                end,
                limit: footer_offset,
            });
        }
        if let Some(r) = reserved.iter().find(|r| r.overlaps(offset, end)) {
            return Err(VhdError::BlockOverlapsMetadata {
                block,
                offset,
                what: r.what,
                what_offset: r.offset,
            });
        }
        placed.push((offset, block));
    }
    placed.sort_unstable();
    for pair in placed.windows(2) {
        let [(first_offset, first), (second_offset, second)] = [pair[0], pair[1]];
        if first_offset + span > second_offset {
            return Err(VhdError::BlocksOverlap {
                first,
                first_offset,
                second,
                second_offset,
            });
        }
    }
    Ok(())
}

impl BlockDevice for Vhd {
    fn logical_sector_size(&self) -> u32 {
        SECTOR as u32
    }
    fn physical_sector_size(&self) -> u32 {
        SECTOR as u32
    }
    fn sector_count(&self) -> u64 {
        self.info.current_size / SECTOR
    }
    fn disk_id(&self) -> [u8; 16] {
        self.info.unique_id
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = check_request(self, lba, buf.len())?;
        self.read_bytes(offset, buf)
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        check_sectors(self.sector_count(), SECTOR as u32, lba, count)?;
        let Some(sparse) = &self.sparse else {
            // A fixed disk's bytes are the file's, from offset 0.
            return Ok(match self.file.host_fd() {
                Some(fd) => Extent::File {
                    fd,
                    offset: lba * SECTOR,
                    sectors: count,
                },
                None => Extent::Copy { sectors: count },
            });
        };
        if count == 0 {
            return Ok(Extent::Copy { sectors: 0 });
        }
        let (offset, len) = (lba * SECTOR, count * SECTOR);
        let block = offset / sparse.block_size;
        let here = (sparse.block_size - offset % sparse.block_size).min(len);
        // Without a parent an unallocated block reads as zeros; runs of
        // them are one extent.
        let zero = |b: u64| {
            self.parent.is_none() && matches!(sparse.bat.get(b as usize), Some(&UNALLOCATED) | None)
        };
        if !zero(block) {
            return Ok(Extent::Copy {
                sectors: here / SECTOR,
            });
        }
        let mut run = here;
        let mut next = block + 1;
        while run < len && zero(next) {
            run += sparse.block_size.min(len - run);
            next += 1;
        }
        Ok(Extent::Zero {
            sectors: run / SECTOR,
        })
    }
}

/// Many tasks read one image at once: the device must be shareable.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Vhd>();
};
