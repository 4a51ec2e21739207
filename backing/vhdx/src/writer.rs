//! Writes VHDX images: fixed and dynamic images from a block device, and
//! differencing children holding given changed sectors over a parent.
//!
//! Layout: identifier, headers and region tables in the first MiB, a 1 MiB
//! (empty) log, a 1 MiB metadata region, the BAT, then payload blocks and
//! sector bitmaps.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use crate::bat::{Geometry, bitmap_index, payload_index};
use crate::error::VhdxError;
use crate::format::{
    BAT_REGION, FILE_PARAMETERS, FILE_SIGNATURE, FileParameters, Guid, HAS_PARENT,
    HEADER_SIGNATURE, HEADER_SIZE, HEADER1_OFFSET, HEADER2_OFFSET, Header, LEAVE_BLOCKS_ALLOCATED,
    LOGICAL_SECTOR_SIZE, MAX_BLOCK_SIZE, MAX_DISK_SIZE, METADATA_REGION, METADATA_REQUIRED,
    METADATA_SIGNATURE, METADATA_TABLE_SIZE, METADATA_VIRTUAL_DISK, MIB, MIN_BLOCK_SIZE,
    MetadataEntry, MetadataTableHeader, PAGE83_DATA, PARENT_LOCATOR, PHYSICAL_SECTOR_SIZE,
    REGION_REQUIRED, REGION_SIGNATURE, REGION_TABLE_SIZE, REGION_TABLE1_OFFSET,
    REGION_TABLE2_OFFSET, RegionEntry, RegionTableHeader, VIRTUAL_DISK_SIZE, bat_state,
    checksum_with_zeroed_field,
};
use crate::parent::encode_locator;
use crate::reader::Vhdx;
use vmbdev_block::{BlockDevice, BlockError, Extent};

/// Log placement and size in written images.
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u32 = MIB as u32;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u32 = MIB as u32;
const BAT_OFFSET: u64 = 3 * MIB;

/// How to lay out a written image.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Payload block size (power of two, 1–256 MiB).
    pub block_size: u32,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// Allocate every block (a fixed image) instead of leaving zero blocks out.
    pub fixed: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            block_size: 32 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            fixed: false,
        }
    }
}

/// An error writing an image.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing the output failed.
    #[error("{path}: write error at offset {offset:#x}: {source}")]
    Io {
        /// Output path.
        path: PathBuf,
        /// Offset written.
        offset: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// Reading the source failed.
    #[error("reading source: {0}")]
    Source(#[from] BlockError),
    /// Opening the parent failed.
    #[error("opening parent: {0}")]
    Parent(#[from] VhdxError),
    /// The options or sizes cannot be written.
    #[error("cannot write image: {0}")]
    Invalid(String),
}

/// What one payload block holds in the output.
enum BlockContent {
    /// Not stored (state given).
    Absent(u8),
    /// Stored in full.
    Present(Vec<u8>),
    /// Stored with a per-sector presence bitmap.
    Partial(Vec<u8>, Vec<bool>),
}

struct Output<'a> {
    file: File,
    path: &'a Path,
}

impl Output<'_> {
    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), WriteError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| WriteError::Io {
                path: self.path.to_owned(),
                offset,
                source,
            })
    }

    /// Writes a payload block's `bytes` at `offset` of the new file,
    /// leaving its all-zero 4 KiB pieces as holes (they read as zeros; the
    /// file's length is set at the end), so a block holding a few sectors
    /// of data takes a few sectors of the host disk.
    fn write_block(&self, offset: u64, bytes: &[u8]) -> Result<(), WriteError> {
        const PIECE: usize = 4096;
        let zero = |piece: &[u8]| piece.iter().fold(0u8, |a, &b| a | b) == 0;
        let mut start = 0;
        while start < bytes.len() {
            let mut end = start;
            while end < bytes.len() && !zero(&bytes[end..(end + PIECE).min(bytes.len())]) {
                end = (end + PIECE).min(bytes.len());
            }
            if end > start {
                self.write(offset + start as u64, &bytes[start..end])?;
            }
            start = (end + PIECE).min(bytes.len());
        }
        Ok(())
    }
}

fn random_guid() -> Guid {
    let mut bytes: [u8; 16] = rand::random();
    bytes[7] = (bytes[7] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Guid(bytes)
}

fn check_options(opts: &WriteOptions, disk_size: u64) -> Result<(), WriteError> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(WriteError::Invalid(format!(
            "block size {bs} is not a power of two in 1–256 MiB"
        )));
    }
    for s in [opts.logical_sector_size, opts.physical_sector_size] {
        if s != 512 && s != 4096 {
            return Err(WriteError::Invalid(format!(
                "sector size {s} is not 512 or 4096"
            )));
        }
    }
    if disk_size == 0
        || disk_size > MAX_DISK_SIZE
        || disk_size % u64::from(opts.logical_sector_size) != 0
    {
        return Err(WriteError::Invalid(format!(
            "disk size {disk_size} is 0, above 64 TiB or not a multiple of {}",
            opts.logical_sector_size
        )));
    }
    Ok(())
}

/// Writes `source` as a fixed or dynamic VHDX at `out`. In a dynamic image
/// all-zero blocks are not allocated (state ZERO).
pub fn write_vhdx(
    source: &dyn BlockDevice,
    out: &Path,
    opts: &WriteOptions,
) -> Result<(), WriteError> {
    let disk_size = source.size_bytes();
    check_options(opts, disk_size)?;
    let block_size = u64::from(opts.block_size);
    let source_sector = u64::from(source.logical_sector_size());
    let content = |block: u64| -> Result<BlockContent, WriteError> {
        let start = block * block_size;
        let len = block_size.min(disk_size - start);
        // A block the source maps as zeros is left out unread, so a large,
        // mostly empty source costs time for its data only.
        if !opts.fixed
            && let Extent::Zero { sectors } =
                source.locate(start / source_sector, len / source_sector)?
            && sectors * source_sector >= len
        {
            return Ok(BlockContent::Absent(bat_state::ZERO));
        }
        let mut data = vec![0u8; block_size as usize];
        source.read_sectors(start / source_sector, &mut data[..len as usize])?;
        if !opts.fixed && data.iter().all(|b| *b == 0) {
            Ok(BlockContent::Absent(bat_state::ZERO))
        } else {
            Ok(BlockContent::Present(data))
        }
    };
    let flags = if opts.fixed {
        LEAVE_BLOCKS_ALLOCATED
    } else {
        0
    };
    write_image(out, opts, disk_size, flags, None, Guid::ZERO, content)
}

/// Writes a differencing child of the VHDX at `parent` to `out`, holding
/// `changes` (first logical sector, bytes — a whole number of sectors). Blocks
/// with every sector changed are FULLY_PRESENT, others PARTIALLY_PRESENT with
/// a sector bitmap; untouched blocks are NOT_PRESENT. The block size comes
/// from `opts`; sector sizes and disk size from the parent.
pub fn write_differencing(
    parent: &Path,
    out: &Path,
    changes: &[(u64, Vec<u8>)],
    opts: &WriteOptions,
) -> Result<(), WriteError> {
    let parent_image = Vhdx::open(parent)?;
    let info = parent_image.info();
    let opts = WriteOptions {
        logical_sector_size: info.logical_sector_size,
        physical_sector_size: info.physical_sector_size,
        fixed: false,
        ..*opts
    };
    let disk_size = info.virtual_size;
    check_options(&opts, disk_size)?;
    let sector = u64::from(opts.logical_sector_size);
    let block_size = u64::from(opts.block_size);
    let mut sectors: BTreeMap<u64, &[u8]> = BTreeMap::new();
    for (lba, bytes) in changes {
        if bytes.len() as u64 % sector != 0
            || (lba + bytes.len() as u64 / sector) * sector > disk_size
        {
            return Err(WriteError::Invalid(format!(
                "change at sector {lba} of {} bytes is unaligned or outside the disk",
                bytes.len()
            )));
        }
        for (i, chunk) in bytes.chunks_exact(sector as usize).enumerate() {
            sectors.insert(lba + i as u64, chunk);
        }
    }
    let per_block = block_size / sector;
    let content = |block: u64| -> Result<BlockContent, WriteError> {
        let first = block * per_block;
        if sectors.range(first..first + per_block).next().is_none() {
            return Ok(BlockContent::Absent(bat_state::NOT_PRESENT));
        }
        let mut data = vec![0u8; block_size as usize];
        let mut present = vec![false; per_block as usize];
        for (&lba, bytes) in sectors.range(first..first + per_block) {
            let i = (lba - first) as usize;
            present[i] = true;
            data[i * sector as usize..(i + 1) * sector as usize].copy_from_slice(bytes);
        }
        if present.iter().all(|p| !p) {
            Ok(BlockContent::Absent(bat_state::NOT_PRESENT))
        } else if present.iter().all(|p| *p) {
            Ok(BlockContent::Present(data))
        } else {
            Ok(BlockContent::Partial(data, present))
        }
    };
    let name = parent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent_abs = std::fs::canonicalize(parent).map_err(|source| WriteError::Io {
        path: parent.to_owned(),
        offset: 0,
        source,
    })?;
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(std::fs::canonicalize)
        .transpose()
        .map_err(|source| WriteError::Io {
            path: out.to_owned(),
            offset: 0,
            source,
        })?;
    let mut pairs = vec![("parent_linkage", format!("{{{}}}", info.data_write_guid))];
    if out_dir.as_deref() == parent_abs.parent() {
        pairs.push(("relative_path", format!(".\\{name}")));
    }
    pairs.push((
        "absolute_win32_path",
        parent_abs.to_string_lossy().replace('/', "\\"),
    ));
    let locator = encode_locator(&pairs);
    let disk_id = info.disk_id;
    write_image(
        out,
        &opts,
        disk_size,
        HAS_PARENT,
        Some(locator),
        disk_id,
        content,
    )
}

/// Lays out and writes the whole image.
fn write_image(
    out: &Path,
    opts: &WriteOptions,
    disk_size: u64,
    param_flags: u32,
    locator: Option<Vec<u8>>,
    disk_id: Guid,
    mut content: impl FnMut(u64) -> Result<BlockContent, WriteError>,
) -> Result<(), WriteError> {
    let geometry = Geometry {
        block_size: opts.block_size,
        logical_sector_size: opts.logical_sector_size,
        disk_size,
        has_parent: param_flags & HAS_PARENT != 0,
    };
    let ratio = geometry.chunk_ratio();
    let data_blocks = geometry.data_blocks();
    let mut bat = vec![0u64; geometry.needed_entries() as usize];
    let bat_length = (bat.len() as u64 * 8).div_ceil(MIB) * MIB;
    if bat_length > u64::from(u32::MAX) {
        return Err(WriteError::Invalid("BAT too large".into()));
    }
    let file = File::create(out).map_err(|source| WriteError::Io {
        path: out.to_owned(),
        offset: 0,
        source,
    })?;
    let output = Output { file, path: out };
    let block_size = u64::from(opts.block_size);
    let sector = u64::from(opts.logical_sector_size);
    let mut next = BAT_OFFSET + bat_length;
    let mut bitmaps: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for block in 0..data_blocks {
        let index = payload_index(block, ratio) as usize;
        match content(block)? {
            BlockContent::Absent(state) => bat[index] = u64::from(state),
            BlockContent::Present(data) => {
                output.write_block(next, &data)?;
                bat[index] = next | u64::from(bat_state::FULLY_PRESENT);
                next += block_size;
            }
            BlockContent::Partial(data, present) => {
                output.write_block(next, &data)?;
                bat[index] = next | u64::from(bat_state::PARTIALLY_PRESENT);
                next += block_size;
                let bitmap = bitmaps
                    .entry(block / ratio)
                    .or_insert_with(|| vec![0u8; MIB as usize]);
                let first_bit = (block % ratio) * (block_size / sector);
                for (i, _) in present.iter().enumerate().filter(|(_, p)| **p) {
                    let bit = first_bit + i as u64;
                    bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
                }
            }
        }
    }
    for (chunk, bitmap) in &bitmaps {
        output.write(next, bitmap)?;
        bat[bitmap_index(*chunk, ratio) as usize] = next | u64::from(bat_state::FULLY_PRESENT);
        next += MIB;
    }
    output.write(BAT_OFFSET, bat.as_bytes())?;
    write_metadata(&output, opts, disk_size, param_flags, locator, disk_id)?;
    write_fixed_area(&output, bat_length)?;
    output.file.set_len(next).map_err(|source| WriteError::Io {
        path: out.to_owned(),
        offset: next,
        source,
    })?;
    output.file.sync_all().map_err(|source| WriteError::Io {
        path: out.to_owned(),
        offset: 0,
        source,
    })
}

fn write_metadata(
    output: &Output<'_>,
    opts: &WriteOptions,
    disk_size: u64,
    param_flags: u32,
    locator: Option<Vec<u8>>,
    disk_id: Guid,
) -> Result<(), WriteError> {
    let disk_id = if disk_id.is_zero() {
        random_guid()
    } else {
        disk_id
    };
    let params = FileParameters {
        block_size: U32::new(opts.block_size),
        flags: U32::new(param_flags),
    };
    let mut items: Vec<(Guid, u32, Vec<u8>)> = vec![
        (
            FILE_PARAMETERS,
            METADATA_REQUIRED,
            params.as_bytes().to_vec(),
        ),
        (
            VIRTUAL_DISK_SIZE,
            METADATA_REQUIRED | METADATA_VIRTUAL_DISK,
            disk_size.to_le_bytes().to_vec(),
        ),
        (
            PAGE83_DATA,
            METADATA_REQUIRED | METADATA_VIRTUAL_DISK,
            disk_id.0.to_vec(),
        ),
        (
            LOGICAL_SECTOR_SIZE,
            METADATA_REQUIRED | METADATA_VIRTUAL_DISK,
            opts.logical_sector_size.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            METADATA_REQUIRED | METADATA_VIRTUAL_DISK,
            opts.physical_sector_size.to_le_bytes().to_vec(),
        ),
    ];
    if let Some(locator) = locator {
        items.push((PARENT_LOCATOR, METADATA_REQUIRED, locator));
    }
    let mut table = vec![0u8; METADATA_TABLE_SIZE];
    let header = MetadataTableHeader {
        signature: *METADATA_SIGNATURE,
        reserved: U16::new(0),
        entry_count: U16::new(items.len() as u16),
        reserved2: [0; 20],
    };
    table[..32].copy_from_slice(header.as_bytes());
    let mut item_offset = METADATA_TABLE_SIZE as u32;
    for (i, (guid, flags, bytes)) in items.iter().enumerate() {
        let entry = MetadataEntry {
            item_id: *guid,
            offset: U32::new(item_offset),
            length: U32::new(bytes.len() as u32),
            flags: U32::new(*flags),
            reserved: U32::new(0),
        };
        let at = 32 + i * 32;
        table[at..at + 32].copy_from_slice(entry.as_bytes());
        output.write(METADATA_OFFSET + u64::from(item_offset), bytes)?;
        item_offset += (bytes.len() as u32).div_ceil(8) * 8;
    }
    output.write(METADATA_OFFSET, &table)
}

fn write_fixed_area(output: &Output<'_>, bat_length: u64) -> Result<(), WriteError> {
    let mut ident = vec![0u8; 64 * 1024];
    ident[..8].copy_from_slice(FILE_SIGNATURE);
    let creator: Vec<u8> = "vmbdev".encode_utf16().flat_map(u16::to_le_bytes).collect();
    ident[8..8 + creator.len()].copy_from_slice(&creator);
    output.write(0, &ident)?;
    let (file_write_guid, data_write_guid) = (random_guid(), random_guid());
    for (sequence, offset) in [(0u64, HEADER1_OFFSET), (1, HEADER2_OFFSET)] {
        let header = Header {
            signature: *HEADER_SIGNATURE,
            checksum: U32::new(0),
            sequence: U64::new(sequence),
            file_write_guid,
            data_write_guid,
            log_guid: Guid::ZERO,
            log_version: U16::new(0),
            version: U16::new(1),
            log_length: U32::new(LOG_LENGTH),
            log_offset: U64::new(LOG_OFFSET),
        };
        let mut buf = vec![0u8; HEADER_SIZE];
        buf[..80].copy_from_slice(header.as_bytes());
        let crc = checksum_with_zeroed_field(&buf, 4);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        output.write(offset, &buf)?;
    }
    let mut table = vec![0u8; REGION_TABLE_SIZE];
    let header = RegionTableHeader {
        signature: *REGION_SIGNATURE,
        checksum: U32::new(0),
        entry_count: U32::new(2),
        reserved: U32::new(0),
    };
    table[..16].copy_from_slice(header.as_bytes());
    let entries = [
        (BAT_REGION, BAT_OFFSET, bat_length as u32),
        (METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH),
    ];
    for (i, (guid, offset, length)) in entries.iter().enumerate() {
        let entry = RegionEntry {
            guid: *guid,
            file_offset: U64::new(*offset),
            length: U32::new(*length),
            flags: U32::new(REGION_REQUIRED),
        };
        table[16 + i * 32..48 + i * 32].copy_from_slice(entry.as_bytes());
    }
    let crc = checksum_with_zeroed_field(&table, 4);
    table[4..8].copy_from_slice(&crc.to_le_bytes());
    output.write(REGION_TABLE1_OFFSET, &table)?;
    output.write(REGION_TABLE2_OFFSET, &table)?;
    // The log area stays zero: a clean, empty log.
    output.write(LOG_OFFSET, &vec![0u8; LOG_LENGTH as usize])
}
