//! Master boot record: four primary entries, the protective MBR that marks a
//! GPT disk, and logical partitions chained through an extended partition.

use crate::{PartitionError, PartitionInfo, PartitionScheme, PartitionType};
use vmbdev_block::BlockDevice;

/// Offset of the first of the four partition entries.
const TABLE_OFFSET: usize = 446;
/// Size of one entry.
const ENTRY_SIZE: usize = 16;
/// Type byte of a GPT protective partition.
const PROTECTIVE_TYPE: u8 = 0xEE;
/// Type bytes of extended partitions (CHS, LBA, Linux).
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// Upper bound on logical partitions followed, so a looping chain ends.
const MAX_LOGICAL: usize = 128;

/// One raw MBR entry.
struct Entry {
    status: u8,
    kind: u8,
    start: u64,
    count: u64,
}

fn entry(sector: &[u8], slot: usize) -> Entry {
    let at = TABLE_OFFSET + slot * ENTRY_SIZE;
    let e = sector.get(at..at + ENTRY_SIZE).unwrap_or(&[0; ENTRY_SIZE]);
    Entry {
        status: e[0],
        kind: e[4],
        start: u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]])),
        count: u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]])),
    }
}

/// Whether sector 0 is a protective MBR (an entry of type 0xEE).
pub(super) fn is_protective(sector0: &[u8]) -> bool {
    (0..4).any(|slot| entry(sector0, slot).kind == PROTECTIVE_TYPE)
}

/// Reads the MBR partitions; `Ok(None)` when sector 0 does not hold a
/// plausible table (bad status bytes or no entries), so the caller can treat
/// the disk as having no table.
pub(super) fn read(
    device: &dyn BlockDevice,
    sector0: &[u8],
) -> Result<Option<Vec<PartitionInfo>>, PartitionError> {
    let entries: Vec<Entry> = (0..4).map(|slot| entry(sector0, slot)).collect();
    if entries.iter().any(|e| e.status != 0 && e.status != 0x80)
        || entries.iter().all(|e| e.kind == 0)
    {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for (slot, e) in entries.iter().enumerate() {
        if e.kind == 0 {
            continue;
        }
        let number = slot + 1;
        check_range(device, number, 0, e.start, e.count)?;
        if EXTENDED_TYPES.contains(&e.kind) {
            read_logical(device, e.start, e.count, &mut parts)?;
            continue;
        }
        parts.push(info(number, e.kind, e.start, e.count));
    }
    Ok(Some(parts))
}

fn info(number: usize, kind: u8, start: u64, count: u64) -> PartitionInfo {
    PartitionInfo {
        scheme: PartitionScheme::Mbr,
        number,
        partition_type: PartitionType::MbrType(kind),
        unique_guid: None,
        first_lba: start,
        last_lba: start + count.saturating_sub(1),
        name: String::new(),
    }
}

fn check_range(
    device: &dyn BlockDevice,
    number: usize,
    table_lba: u64,
    start: u64,
    count: u64,
) -> Result<(), PartitionError> {
    let inside = count > 0
        && start > 0
        && start
            .checked_add(count)
            .is_some_and(|end| end <= device.sector_count());
    if inside {
        Ok(())
    } else {
        Err(PartitionError::CorruptMbr {
            number,
            lba: table_lba,
            what: format!(
                "sectors {start}+{count} outside a disk of {} sectors",
                device.sector_count()
            ),
        })
    }
}

/// Follows the chain of extended boot records inside the extended partition
/// at `ext_start`. Each EBR's first entry is a logical partition relative to
/// that EBR; its second links to the next EBR relative to `ext_start`.
fn read_logical(
    device: &dyn BlockDevice,
    ext_start: u64,
    ext_count: u64,
    parts: &mut Vec<PartitionInfo>,
) -> Result<(), PartitionError> {
    let mut sector = vec![0u8; device.logical_sector_size() as usize];
    let mut ebr_lba = ext_start;
    for number in 5..5 + MAX_LOGICAL {
        device.read_sectors(ebr_lba, &mut sector)?;
        if sector.get(510..512) != Some(&[0x55, 0xAA][..]) {
            return Err(PartitionError::CorruptMbr {
                number,
                lba: ebr_lba,
                what: "extended boot record without 0x55AA signature".into(),
            });
        }
        let logical = entry(&sector, 0);
        if logical.kind != 0 {
            let start = ebr_lba.saturating_add(logical.start);
            check_range(device, number, ebr_lba, start, logical.count)?;
            parts.push(info(number, logical.kind, start, logical.count));
        }
        let next = entry(&sector, 1);
        if next.kind == 0 || next.start == 0 || next.start >= ext_count {
            return Ok(());
        }
        ebr_lba = ext_start + next.start;
    }
    Err(PartitionError::CorruptMbr {
        number: 5 + MAX_LOGICAL,
        lba: ebr_lba,
        what: format!("more than {MAX_LOGICAL} logical partitions (a looping chain?)"),
    })
}
