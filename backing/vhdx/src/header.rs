//! Headers and region tables: picks the current header, checks the log
//! fields, and validates the region table.

use zerocopy::FromBytes;

use crate::error::VhdxError;
use crate::file::FileView;
use crate::format::{
    BAT_REGION, HEADER_SIGNATURE, HEADER_SIZE, HEADER1_OFFSET, HEADER2_OFFSET, Header,
    MAX_REGION_ENTRIES, METADATA_REGION, MIB, REGION_REQUIRED, REGION_SIGNATURE, REGION_TABLE_SIZE,
    REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET, RegionEntry, RegionTableHeader,
    checksum_with_zeroed_field,
};

/// The current header and where it was found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CurrentHeader {
    pub(crate) header: Header,
    pub(crate) offset: u64,
}

/// Reads both headers and returns the valid one with the higher sequence,
/// after checking its version and log fields against `file_len`.
pub(crate) fn read_current_header(
    file: &FileView,
    file_len: u64,
) -> Result<CurrentHeader, VhdxError> {
    let mut best: Option<CurrentHeader> = None;
    for offset in [HEADER1_OFFSET, HEADER2_OFFSET] {
        let mut buf = vec![0u8; HEADER_SIZE];
        file.read_raw(offset, &mut buf)?;
        let Ok((header, _)) = Header::read_from_prefix(&buf) else {
            continue;
        };
        if &header.signature != HEADER_SIGNATURE
            || checksum_with_zeroed_field(&buf, 4) != header.checksum.get()
        {
            tracing::debug!(offset, "VHDX header invalid");
            continue;
        }
        if best.is_none_or(|b| header.sequence.get() > b.header.sequence.get()) {
            best = Some(CurrentHeader { header, offset });
        }
    }
    let current = best.ok_or(VhdxError::NoValidHeader)?;
    let h = &current.header;
    if h.version.get() != 1 {
        return Err(VhdxError::UnsupportedVersion {
            offset: current.offset,
            version: h.version.get(),
        });
    }
    if h.log_version.get() != 0 {
        return Err(VhdxError::UnsupportedLogVersion {
            offset: current.offset,
            version: h.log_version.get(),
        });
    }
    let (offset, length) = (h.log_offset.get(), h.log_length.get());
    if offset % MIB != 0 || u64::from(length) % MIB != 0 || offset < MIB || length == 0 {
        return Err(VhdxError::LogMisaligned { offset, length });
    }
    if offset
        .checked_add(u64::from(length))
        .is_none_or(|end| end > file_len)
    {
        return Err(VhdxError::LogBeyondEof {
            offset,
            length,
            file_len,
        });
    }
    Ok(current)
}

/// A region from the region table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub(crate) offset: u64,
    pub(crate) length: u32,
}

/// The regions this reader uses, plus every region's extent (for overlap
/// checks against payload blocks).
#[derive(Debug, Clone)]
pub(crate) struct Regions {
    pub(crate) bat: Region,
    pub(crate) metadata: Region,
}

/// Reads the first valid region table (through the log overlay) and checks
/// every entry.
pub(crate) fn read_regions(
    file: &FileView,
    log_offset: u64,
    log_length: u32,
) -> Result<Regions, VhdxError> {
    let mut table = None;
    for offset in [REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET] {
        let mut buf = vec![0u8; REGION_TABLE_SIZE];
        file.read_at(offset, &mut buf)?;
        let Ok((header, _)) = RegionTableHeader::read_from_prefix(&buf) else {
            continue;
        };
        if &header.signature == REGION_SIGNATURE
            && checksum_with_zeroed_field(&buf, 4) == header.checksum.get()
        {
            table = Some((offset, header, buf));
            break;
        }
        tracing::debug!(offset, "VHDX region table invalid");
    }
    let (table_offset, header, buf) = table.ok_or(VhdxError::NoValidRegionTable)?;
    let count = header.entry_count.get();
    if count > MAX_REGION_ENTRIES {
        return Err(VhdxError::RegionCountTooLarge {
            offset: table_offset,
            count,
        });
    }
    let file_len = file.len();
    let mut seen: Vec<RegionEntry> = Vec::new();
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let at = 16 + i * 32;
        let Some(entry) = buf
            .get(at..at + 32)
            .and_then(|b| RegionEntry::read_from_bytes(b).ok())
        else {
            return Err(VhdxError::NoValidRegionTable);
        };
        let (guid, offset, length) = (entry.guid, entry.file_offset.get(), entry.length.get());
        if seen.iter().any(|e| e.guid == guid) {
            return Err(VhdxError::DuplicateRegion { guid });
        }
        if offset % MIB != 0 || u64::from(length) % MIB != 0 || length == 0 || offset < MIB {
            return Err(VhdxError::RegionMisaligned {
                guid,
                offset,
                length,
            });
        }
        let end = offset.checked_add(u64::from(length));
        if end.is_none_or(|end| end > file_len) {
            return Err(VhdxError::RegionBeyondEof {
                guid,
                offset,
                length,
                file_len,
            });
        }
        let end = offset + u64::from(length);
        for other in &seen {
            let o = other.file_offset.get();
            if offset < o + u64::from(other.length.get()) && o < end {
                return Err(VhdxError::RegionsOverlap {
                    first_offset: o,
                    second_offset: offset,
                });
            }
        }
        if offset < log_offset + u64::from(log_length) && log_offset < end {
            return Err(VhdxError::LogOverlapsRegion {
                log_offset,
                log_length,
                region: guid,
                region_offset: offset,
            });
        }
        let region = Region { offset, length };
        if guid == BAT_REGION {
            bat = Some(region);
        } else if guid == METADATA_REGION {
            metadata = Some(region);
        } else if entry.flags.get() & REGION_REQUIRED != 0 {
            return Err(VhdxError::UnknownRequiredRegion { guid, offset });
        }
        seen.push(entry);
    }
    Ok(Regions {
        bat: bat.ok_or(VhdxError::MissingRegion { name: "BAT" })?,
        metadata: metadata.ok_or(VhdxError::MissingRegion { name: "metadata" })?,
    })
}
