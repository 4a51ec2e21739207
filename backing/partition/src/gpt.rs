//! GUID partition table: header and entry array, both CRC-checked, with the
//! backup header at the last LBA used when the primary is damaged.

use crate::crc32;
use crate::{PartitionError, PartitionInfo, PartitionScheme, PartitionType};
use vmbdev_block::BlockDevice;

/// Bytes 0..8 of a GPT header.
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The smallest header the UEFI spec defines.
const MIN_HEADER_SIZE: usize = 92;
/// The smallest entry the UEFI spec defines.
const MIN_ENTRY_SIZE: usize = 128;
/// Upper bound on the entry array we are willing to read (the usual array is
/// 16 KiB); a header asking for more is treated as corrupt.
const MAX_ENTRY_ARRAY_BYTES: u64 = 4 << 20;

/// The fields of a GPT header that locate and check the entry array.
struct Header {
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fn corrupt(lba: u64, what: impl Into<String>) -> PartitionError {
    PartitionError::CorruptGpt {
        lba,
        what: what.into(),
    }
}

/// Reads the partitions of a GPT disk, trying the primary header at LBA 1
/// and then the backup at the last LBA.
pub(super) fn read(device: &dyn BlockDevice) -> Result<Vec<PartitionInfo>, PartitionError> {
    let last_lba = device.sector_count().saturating_sub(1);
    match read_at(device, 1) {
        Ok(parts) => Ok(parts),
        Err(primary) => {
            tracing::warn!(%primary, "primary GPT unusable, trying the backup at LBA {last_lba}");
            read_at(device, last_lba).map_err(|backup| {
                corrupt(1, format!("primary GPT: {primary}; backup GPT: {backup}"))
            })
        }
    }
}

/// Whether LBA 1 starts with the GPT signature.
pub(super) fn has_primary_signature(device: &dyn BlockDevice) -> Result<bool, PartitionError> {
    if device.sector_count() < 2 {
        return Ok(false);
    }
    let mut sector = vec![0u8; device.logical_sector_size() as usize];
    device.read_sectors(1, &mut sector)?;
    Ok(sector.get(..8) == Some(&SIGNATURE[..]))
}

fn read_at(device: &dyn BlockDevice, lba: u64) -> Result<Vec<PartitionInfo>, PartitionError> {
    let header = read_header(device, lba)?;
    let entries = read_entries(device, &header)?;
    parse_entries(device, &header, &entries)
}

fn read_header(device: &dyn BlockDevice, lba: u64) -> Result<Header, PartitionError> {
    let sector_size = device.logical_sector_size() as usize;
    let mut sector = vec![0u8; sector_size];
    device.read_sectors(lba, &mut sector)?;
    if sector.get(..8) != Some(&SIGNATURE[..]) {
        return Err(corrupt(lba, "no \"EFI PART\" signature"));
    }
    let header_size = le_u32(&sector, 12) as usize;
    if !(MIN_HEADER_SIZE..=sector_size).contains(&header_size) {
        return Err(corrupt(
            lba,
            format!("header size {header_size} at offset 12"),
        ));
    }
    let stored_crc = le_u32(&sector, 16);
    let mut copy = sector[..header_size].to_vec();
    copy[16..20].fill(0);
    let actual_crc = crc32(&copy);
    if stored_crc != actual_crc {
        return Err(corrupt(
            lba,
            format!("header CRC32 {stored_crc:#010x} at offset 16, computed {actual_crc:#010x}"),
        ));
    }
    let my_lba = le_u64(&sector, 24);
    if my_lba != lba {
        return Err(corrupt(lba, format!("header says it is at LBA {my_lba}")));
    }
    let entry_size = le_u32(&sector, 84);
    if (entry_size as usize) < MIN_ENTRY_SIZE || entry_size % 8 != 0 {
        return Err(corrupt(
            lba,
            format!("entry size {entry_size} at offset 84"),
        ));
    }
    Ok(Header {
        entries_lba: le_u64(&sector, 72),
        entry_count: le_u32(&sector, 80),
        entry_size,
        entries_crc: le_u32(&sector, 88),
    })
}

fn read_entries(device: &dyn BlockDevice, header: &Header) -> Result<Vec<u8>, PartitionError> {
    let sector_size = u64::from(device.logical_sector_size());
    let bytes = u64::from(header.entry_count) * u64::from(header.entry_size);
    if bytes > MAX_ENTRY_ARRAY_BYTES {
        return Err(corrupt(
            header.entries_lba,
            format!(
                "entry array of {} entries of {} bytes is too large",
                header.entry_count, header.entry_size
            ),
        ));
    }
    let sectors = bytes.div_ceil(sector_size);
    let fits = header
        .entries_lba
        .checked_add(sectors)
        .is_some_and(|end| end <= device.sector_count());
    if !fits {
        return Err(corrupt(
            header.entries_lba,
            format!("entry array of {sectors} sectors runs past the disk end"),
        ));
    }
    let mut array = vec![0u8; (sectors * sector_size) as usize];
    device.read_sectors(header.entries_lba, &mut array)?;
    array.truncate(bytes as usize);
    let actual = crc32(&array);
    if actual != header.entries_crc {
        return Err(corrupt(
            header.entries_lba,
            format!(
                "entry array CRC32 {:#010x}, computed {actual:#010x}",
                header.entries_crc
            ),
        ));
    }
    Ok(array)
}

fn parse_entries(
    device: &dyn BlockDevice,
    header: &Header,
    array: &[u8],
) -> Result<Vec<PartitionInfo>, PartitionError> {
    let mut parts = Vec::new();
    for (index, entry) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&entry[..16]);
        if type_guid == [0; 16] {
            continue;
        }
        let mut unique = [0u8; 16];
        unique.copy_from_slice(&entry[16..32]);
        let first_lba = le_u64(entry, 32);
        let last_lba = le_u64(entry, 40);
        if first_lba > last_lba || last_lba >= device.sector_count() {
            return Err(corrupt(
                header.entries_lba,
                format!(
                    "entry {index}: LBAs {first_lba}..={last_lba} outside a disk of {} sectors",
                    device.sector_count()
                ),
            ));
        }
        let name_units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(PartitionInfo {
            scheme: PartitionScheme::Gpt,
            number: index + 1,
            partition_type: PartitionType::Guid(type_guid),
            unique_guid: Some(unique),
            first_lba,
            last_lba,
            name: String::from_utf16_lossy(&name_units),
        });
    }
    Ok(parts)
}
