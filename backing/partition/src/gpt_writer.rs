//! Builds a GUID partition table: the protective MBR, the primary header
//! and entry array at the start of the disk, and the backup entry array and
//! header at its end, with their CRC-32s.

use crate::crc32;

/// Entries in the array (the usual 128, 16 KiB).
const ENTRY_COUNT: u32 = 128;
/// Bytes per entry.
const ENTRY_SIZE: u32 = 128;
/// Bytes of the header covered by its CRC.
const HEADER_SIZE: u32 = 92;
/// UTF-16 units of a partition name.
const NAME_UNITS: usize = 36;

/// "Microsoft basic data" (EBD0A0A2-B9E5-4433-87C0-68B6B72699C7) in on-disk
/// byte order.
pub const BASIC_DATA_PARTITION: [u8; 16] = [
    0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];

/// One partition to record.
#[derive(Debug, Clone)]
pub struct GptPartition {
    /// Partition-type GUID, on-disk byte order.
    pub type_guid: [u8; 16],
    /// Unique partition GUID, on-disk byte order.
    pub unique_guid: [u8; 16],
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (at most 36 UTF-16 units).
    pub name: String,
}

/// An error building a table.
#[derive(Debug, thiserror::Error)]
pub enum GptWriteError {
    /// The sector size is not 512 or 4096.
    #[error("sector size {0} is not 512 or 4096")]
    BadSectorSize(u32),
    /// The disk is too small for the two tables.
    #[error("a disk of {0} sectors is too small for a GPT")]
    DiskTooSmall(u64),
    /// More partitions than entries.
    #[error("{0} partitions, more than the {ENTRY_COUNT} entries of the table")]
    TooManyPartitions(usize),
    /// A partition lies outside the usable sectors or overlaps another.
    #[error(
        "partition {index}: sectors {first}..={last} are outside {usable_first}..={usable_last} or overlap another partition"
    )]
    BadRange {
        /// Index of the partition (0-based).
        index: usize,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
        /// First usable sector of the disk.
        usable_first: u64,
        /// Last usable sector of the disk.
        usable_last: u64,
    },
    /// A name is longer than an entry holds.
    #[error("partition {index}: name of {units} UTF-16 units is longer than {NAME_UNITS}")]
    NameTooLong {
        /// Index of the partition.
        index: usize,
        /// Its length.
        units: usize,
    },
}

/// The bytes of a table, ready to write.
#[derive(Debug, Clone)]
pub struct GptTables {
    /// Sectors 0 onwards: protective MBR, primary header, entry array.
    pub primary: Vec<u8>,
    /// The backup entry array then the backup header (the disk's last
    /// sector).
    pub backup: Vec<u8>,
    /// First sector of `backup`.
    pub backup_lba: u64,
}

fn array_sectors(sector_size: u32) -> u64 {
    u64::from(ENTRY_COUNT * ENTRY_SIZE).div_ceil(u64::from(sector_size))
}

/// First and last sector partitions may use on a disk of `sector_count`
/// sectors; `None` when the disk cannot hold both tables.
pub fn gpt_usable_range(sector_count: u64, sector_size: u32) -> Option<(u64, u64)> {
    let array = array_sectors(sector_size);
    let first = 2 + array;
    let last = sector_count.checked_sub(2 + array)?;
    (first <= last).then_some((first, last))
}

/// Builds the tables of a disk of `sector_count` sectors holding
/// `partitions`.
pub fn build_gpt(
    sector_count: u64,
    sector_size: u32,
    disk_guid: [u8; 16],
    partitions: &[GptPartition],
) -> Result<GptTables, GptWriteError> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(GptWriteError::BadSectorSize(sector_size));
    }
    let (usable_first, usable_last) = gpt_usable_range(sector_count, sector_size)
        .ok_or(GptWriteError::DiskTooSmall(sector_count))?;
    if partitions.len() > ENTRY_COUNT as usize {
        return Err(GptWriteError::TooManyPartitions(partitions.len()));
    }
    let ss = sector_size as usize;
    let mut array = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (index, p) in partitions.iter().enumerate() {
        let overlaps = partitions[..index]
            .iter()
            .any(|q| p.first_lba <= q.last_lba && q.first_lba <= p.last_lba);
        if p.first_lba < usable_first
            || p.last_lba > usable_last
            || p.first_lba > p.last_lba
            || overlaps
        {
            return Err(GptWriteError::BadRange {
                index,
                first: p.first_lba,
                last: p.last_lba,
                usable_first,
                usable_last,
            });
        }
        let units: Vec<u16> = p.name.encode_utf16().collect();
        if units.len() > NAME_UNITS {
            return Err(GptWriteError::NameTooLong {
                index,
                units: units.len(),
            });
        }
        let e = &mut array[index * ENTRY_SIZE as usize..(index + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid);
        e[16..32].copy_from_slice(&p.unique_guid);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (i, unit) in units.iter().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let array_crc = crc32(&array);
    let last_lba = sector_count - 1;
    let array_len = array_sectors(sector_size);
    let backup_array_lba = last_lba - array_len;
    let header = |my_lba: u64, alternate: u64, entries_lba: u64| {
        let mut h = vec![0u8; ss];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&usable_first.to_le_bytes());
        h[48..56].copy_from_slice(&usable_last.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let array_padded = {
        let mut a = array.clone();
        a.resize(array_len as usize * ss, 0);
        a
    };
    let mut primary = protective_mbr(sector_count, ss);
    primary.extend_from_slice(&header(1, last_lba, 2));
    primary.extend_from_slice(&array_padded);
    let mut backup = array_padded;
    backup.extend_from_slice(&header(last_lba, 1, backup_array_lba));
    Ok(GptTables {
        primary,
        backup,
        backup_lba: backup_array_lba,
    })
}

/// Sector 0: one partition of type 0xEE covering the disk (capped at what
/// 32 bits can say).
fn protective_mbr(sector_count: u64, sector_size: usize) -> Vec<u8> {
    let mut m = vec![0u8; sector_size];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (sector_count - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

#[cfg(test)]
mod tests {
    use vmbdev_block::MemoryDisk;

    use super::*;

    #[test]
    fn reader_accepts_both_copies() {
        let sectors = 8192u64;
        let part = GptPartition {
            type_guid: BASIC_DATA_PARTITION,
            unique_guid: [9; 16],
            first_lba: 2048,
            last_lba: sectors - 34,
            attributes: 0,
            name: "data".into(),
        };
        let t = build_gpt(sectors, 512, [3; 16], std::slice::from_ref(&part)).unwrap();
        assert_eq!(t.backup_lba, sectors - 33);
        let mut disk = vec![0u8; sectors as usize * 512];
        disk[..t.primary.len()].copy_from_slice(&t.primary);
        disk[t.backup_lba as usize * 512..].copy_from_slice(&t.backup);
        let parts = crate::list_partitions(&MemoryDisk::new(disk.clone())).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            (parts[0].first_lba, parts[0].last_lba),
            (2048, sectors - 34)
        );
        assert_eq!(parts[0].name, "data");
        // Primary wiped: the backup alone gives the same table.
        disk[512..1024].fill(0);
        let parts = crate::list_partitions(&MemoryDisk::new(disk)).unwrap();
        assert_eq!(parts[0].unique_guid, Some([9; 16]));

        let outside = GptPartition {
            last_lba: sectors - 33,
            ..part
        };
        assert!(build_gpt(sectors, 512, [3; 16], &[outside]).is_err());
    }
}
