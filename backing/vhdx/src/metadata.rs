//! The metadata region: the table, the known items and their checks.

use zerocopy::FromBytes;
use zerocopy::little_endian::{U32, U64};

use crate::error::VhdxError;
use crate::file::FileView;
use crate::format::{
    FILE_PARAMETERS, FileParameters, Guid, HAS_PARENT, LOGICAL_SECTOR_SIZE, MAX_BLOCK_SIZE,
    MAX_DISK_SIZE, MAX_METADATA_ENTRIES, MAX_METADATA_ITEM, METADATA_REQUIRED, METADATA_SIGNATURE,
    METADATA_TABLE_SIZE, MIN_BLOCK_SIZE, MetadataEntry, MetadataTableHeader, PAGE83_DATA,
    PARENT_LOCATOR, PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_SIZE,
};
use crate::header::Region;

/// The parsed metadata items.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) block_size: u32,
    pub(crate) has_parent: bool,
    pub(crate) leave_blocks_allocated: bool,
    pub(crate) disk_size: u64,
    pub(crate) logical_sector_size: u32,
    pub(crate) physical_sector_size: u32,
    pub(crate) disk_id: Guid,
    pub(crate) parent_locator: Option<Vec<u8>>,
}

/// Reads and validates the metadata table and items.
pub(crate) fn read_metadata(file: &FileView, region: Region) -> Result<Metadata, VhdxError> {
    let mut table = vec![0u8; METADATA_TABLE_SIZE];
    file.read_at(region.offset, &mut table)?;
    let bad_sig = VhdxError::BadMetadataSignature {
        offset: region.offset,
    };
    let (header, _) = MetadataTableHeader::read_from_prefix(&table).map_err(|_| bad_sig)?;
    if &header.signature != METADATA_SIGNATURE {
        return Err(VhdxError::BadMetadataSignature {
            offset: region.offset,
        });
    }
    let count = header.entry_count.get();
    if count > MAX_METADATA_ENTRIES {
        return Err(VhdxError::MetadataCountTooLarge {
            offset: region.offset,
            count,
        });
    }
    let mut entries: Vec<MetadataEntry> = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = 32 + i * 32;
        let Some(entry) = table
            .get(at..at + 32)
            .and_then(|b| MetadataEntry::read_from_bytes(b).ok())
        else {
            return Err(VhdxError::BadMetadataSignature {
                offset: region.offset,
            });
        };
        check_entry(&entry, &entries, region.length)?;
        entries.push(entry);
    }
    let read_item = |id: Guid| -> Result<Option<Vec<u8>>, VhdxError> {
        let Some(entry) = entries.iter().find(|e| e.item_id == id) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; entry.length.get() as usize];
        file.read_at(region.offset + u64::from(entry.offset.get()), &mut buf)?;
        Ok(Some(buf))
    };
    let params_bytes = read_item(FILE_PARAMETERS)?.ok_or(VhdxError::MissingMetadataItem {
        name: "file parameters",
    })?;
    let params: FileParameters = fixed_item(&params_bytes, "file parameters")?;
    let size: U64 = fixed_item(
        &read_item(VIRTUAL_DISK_SIZE)?.ok_or(VhdxError::MissingMetadataItem {
            name: "virtual disk size",
        })?,
        "virtual disk size",
    )?;
    let logical: U32 = fixed_item(
        &read_item(LOGICAL_SECTOR_SIZE)?.ok_or(VhdxError::MissingMetadataItem {
            name: "logical sector size",
        })?,
        "logical sector size",
    )?;
    let physical: U32 = fixed_item(
        &read_item(PHYSICAL_SECTOR_SIZE)?.ok_or(VhdxError::MissingMetadataItem {
            name: "physical sector size",
        })?,
        "physical sector size",
    )?;
    let disk_id: Guid = match read_item(PAGE83_DATA)? {
        Some(bytes) => fixed_item(&bytes, "page 83 data")?,
        None => Guid::ZERO,
    };
    let block_size = params.block_size.get();
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(VhdxError::BadBlockSize { block_size });
    }
    for (which, size) in [("logical", logical.get()), ("physical", physical.get())] {
        if size != 512 && size != 4096 {
            return Err(VhdxError::BadSectorSize { which, size });
        }
    }
    let disk_size = size.get();
    if disk_size == 0 {
        return Err(VhdxError::DiskSizeZero);
    }
    if disk_size > MAX_DISK_SIZE {
        return Err(VhdxError::DiskSizeTooLarge { size: disk_size });
    }
    if disk_size % u64::from(logical.get()) != 0 {
        return Err(VhdxError::DiskSizeUnaligned {
            size: disk_size,
            sector_size: logical.get(),
        });
    }
    let has_parent = params.flags.get() & HAS_PARENT != 0;
    let parent_locator = if has_parent {
        Some(read_item(PARENT_LOCATOR)?.ok_or(VhdxError::MissingParentLocator)?)
    } else {
        None
    };
    Ok(Metadata {
        block_size,
        has_parent,
        leave_blocks_allocated: params.flags.get() & crate::format::LEAVE_BLOCKS_ALLOCATED != 0,
        disk_size,
        logical_sector_size: logical.get(),
        physical_sector_size: physical.get(),
        disk_id,
        parent_locator,
    })
}

/// Checks one entry's placement against the region and earlier entries.
fn check_entry(
    entry: &MetadataEntry,
    earlier: &[MetadataEntry],
    region_length: u32,
) -> Result<(), VhdxError> {
    let guid = entry.item_id;
    if earlier.iter().any(|e| e.item_id == guid) {
        return Err(VhdxError::DuplicateMetadataItem { guid });
    }
    let known = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        PAGE83_DATA,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PARENT_LOCATOR,
    ];
    if !known.contains(&guid) && entry.flags.get() & METADATA_REQUIRED != 0 {
        return Err(VhdxError::UnknownRequiredMetadata { guid });
    }
    let (offset, length) = (entry.offset.get(), entry.length.get());
    if length == 0 {
        // An empty item occupies nothing (the spec requires offset 0 then).
        return Ok(());
    }
    let end = u64::from(offset) + u64::from(length);
    if (offset as usize) < METADATA_TABLE_SIZE
        || length > MAX_METADATA_ITEM
        || end > u64::from(region_length)
    {
        return Err(VhdxError::MetadataItemOutOfRegion {
            guid,
            offset,
            length,
            region_length,
        });
    }
    for other in earlier.iter().filter(|e| e.length.get() != 0) {
        let o = u64::from(other.offset.get());
        if u64::from(offset) < o + u64::from(other.length.get()) && o < end {
            return Err(VhdxError::MetadataItemsOverlap {
                first: other.item_id,
                second: guid,
                offset,
            });
        }
    }
    Ok(())
}

/// Decodes a fixed-size item, refusing any other length.
fn fixed_item<T: FromBytes>(bytes: &[u8], name: &'static str) -> Result<T, VhdxError> {
    let expected = size_of::<T>() as u32;
    T::read_from_bytes(bytes).map_err(|_| VhdxError::BadMetadataItemLength {
        name,
        length: bytes.len() as u32,
        expected,
    })
}
