//! Log replay into an in-memory overlay: finds the active sequence of log
//! entries for the header's log GUID and turns its descriptors into replayed
//! 4 KiB pages, never writing the file.

use std::collections::BTreeMap;

use zerocopy::FromBytes;

use crate::error::VhdxError;
use crate::file::{FileView, Page};
use crate::format::{
    Guid, LOG_DATA_SIGNATURE, LOG_DESC_SIGNATURE, LOG_ENTRY_SIGNATURE, LOG_SECTOR,
    LOG_ZERO_SIGNATURE, LogDescriptor, LogEntryHeader, REGION_TABLE1_OFFSET,
    checksum_with_zeroed_field,
};

/// Largest log this reader replays (qemu and Hyper-V use 1 MiB).
pub const MAX_REPLAY_LOG: u64 = 256 << 20;
/// Most bytes the overlay may cover (data and zero pages together).
pub const MAX_OVERLAY_BYTES: u64 = 1 << 30;

/// What the log looked like when the image was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// The header's log GUID is zero: nothing to replay.
    Clean {
        /// Entries left in the log with other GUIDs (ignored).
        stale_entries: u64,
    },
    /// The log was dirty and was replayed in memory.
    Replayed {
        /// Entries applied.
        entries: u64,
        /// Entries with other GUIDs (ignored).
        stale_entries: u64,
    },
}

/// A validated log entry found in the log.
struct Entry {
    offset: u64,
    bytes: Vec<u8>,
    header: LogEntryHeader,
}

/// The result of replay: pages and logical file length.
pub(crate) struct Replay {
    pub(crate) pages: BTreeMap<u64, Page>,
    pub(crate) logical_len: u64,
    pub(crate) state: LogState,
}

/// Reads the log and, if `log_guid` is non-zero, replays it.
pub(crate) fn replay(
    file: &FileView,
    log_offset: u64,
    log_length: u32,
    log_guid: Guid,
) -> Result<Replay, VhdxError> {
    let log_len = u64::from(log_length);
    if log_guid.is_zero() {
        let stale = if log_len <= MAX_REPLAY_LOG && log_len > 0 {
            let mut log = vec![0u8; log_len as usize];
            file.read_raw(log_offset, &mut log)?;
            (0..log_len)
                .step_by(LOG_SECTOR as usize)
                .filter(|&offset| parse_entry(&log, offset).is_some())
                .count() as u64
        } else {
            0
        };
        return Ok(Replay {
            pages: BTreeMap::new(),
            logical_len: file.len(),
            state: LogState::Clean {
                stale_entries: stale,
            },
        });
    }
    if log_len > MAX_REPLAY_LOG {
        return Err(VhdxError::LogTooLarge {
            length: log_length,
            limit: MAX_REPLAY_LOG,
        });
    }
    let mut log = vec![0u8; log_len as usize];
    file.read_raw(log_offset, &mut log)?;
    let mut candidates = Vec::new();
    let mut stale = 0u64;
    for offset in (0..log_len).step_by(LOG_SECTOR as usize) {
        match parse_entry(&log, offset) {
            Some(entry) if entry.header.log_guid == log_guid => candidates.push(entry),
            Some(_) => stale += 1,
            None => {}
        }
    }
    candidates.sort_by_key(|e| std::cmp::Reverse(e.header.sequence.get()));
    let mut sequence = Vec::new();
    for head in &candidates {
        if let Some(found) = active_sequence(&log, head, log_guid) {
            sequence = found;
            break;
        }
    }
    let mut pages = BTreeMap::new();
    let mut logical_len = file.len();
    let mut overlay_bytes = 0u64;
    let log_range = (log_offset, log_offset + log_len);
    for entry in &sequence {
        apply_entry(entry, log_range, &mut pages, &mut overlay_bytes)?;
        logical_len = logical_len.max(entry.header.last_file_offset.get());
    }
    if !sequence.is_empty() {
        tracing::debug!(entries = sequence.len(), "replayed VHDX log in memory");
    }
    Ok(Replay {
        pages,
        logical_len,
        state: LogState::Replayed {
            entries: sequence.len() as u64,
            stale_entries: stale,
        },
    })
}

/// Copies `len` bytes of the circular log starting at `offset`.
fn circular_copy(log: &[u8], offset: u64, len: u64) -> Option<Vec<u8>> {
    let log_len = log.len() as u64;
    if len > log_len || offset >= log_len {
        return None;
    }
    let start = offset as usize;
    let first = (log_len - offset).min(len) as usize;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(log.get(start..start + first)?);
    out.extend_from_slice(log.get(..len as usize - first)?);
    Some(out)
}

/// Parses and checks one entry at `offset` (signature, length, checksum,
/// descriptor sequence numbers); `None` if it is not a valid entry.
fn parse_entry(log: &[u8], offset: u64) -> Option<Entry> {
    let head = log.get(offset as usize..offset as usize + 64)?;
    let header = LogEntryHeader::read_from_bytes(head).ok()?;
    if &header.signature != LOG_ENTRY_SIGNATURE {
        return None;
    }
    let length = u64::from(header.entry_length.get());
    if length == 0 || length % LOG_SECTOR != 0 || length > log.len() as u64 {
        return None;
    }
    let bytes = circular_copy(log, offset, length)?;
    if checksum_with_zeroed_field(&bytes, 4) != header.checksum.get() {
        return None;
    }
    let count = u64::from(header.descriptor_count.get());
    let descriptor_area = (64 + 32 * count).div_ceil(LOG_SECTOR) * LOG_SECTOR;
    if descriptor_area > length {
        return None;
    }
    let sequence = header.sequence.get();
    let mut data_index = 0u64;
    for i in 0..count {
        let at = (64 + 32 * i) as usize;
        let desc = LogDescriptor::read_from_bytes(bytes.get(at..at + 32)?).ok()?;
        if desc.sequence.get() != sequence {
            return None;
        }
        if &desc.signature == LOG_DESC_SIGNATURE {
            let at = descriptor_area + data_index * LOG_SECTOR;
            let sector = bytes.get(at as usize..(at + LOG_SECTOR) as usize)?;
            if !sector.starts_with(LOG_DATA_SIGNATURE) {
                return None;
            }
            let high = u32::from_le_bytes(sector.get(4..8)?.try_into().ok()?);
            let low = u32::from_le_bytes(sector.get(4092..4096)?.try_into().ok()?);
            if (u64::from(high) << 32 | u64::from(low)) != sequence {
                return None;
            }
            data_index += 1;
        } else if &desc.signature != LOG_ZERO_SIGNATURE {
            return None;
        }
    }
    if descriptor_area + data_index * LOG_SECTOR > length {
        return None;
    }
    Some(Entry {
        offset,
        bytes,
        header,
    })
}

/// Walks from the head's tail to the head; returns the entries in order if
/// they form a contiguous sequence with consecutive numbers.
fn active_sequence(log: &[u8], head: &Entry, log_guid: Guid) -> Option<Vec<Entry>> {
    let log_len = log.len() as u64;
    let tail = u64::from(head.header.tail.get());
    if tail % LOG_SECTOR != 0 || tail >= log_len {
        return None;
    }
    let mut out = Vec::new();
    let mut offset = tail;
    let mut expected: Option<u64> = None;
    for _ in 0..=log_len / LOG_SECTOR {
        let entry = parse_entry(log, offset)?;
        if entry.header.log_guid != log_guid {
            return None;
        }
        let seq = entry.header.sequence.get();
        if let Some(want) = expected
            && seq != want
        {
            return None;
        }
        let done = entry.offset == head.offset && seq == head.header.sequence.get();
        offset = (offset + u64::from(entry.header.entry_length.get())) % log_len;
        expected = Some(seq.checked_add(1)?);
        out.push(entry);
        if done {
            return Some(out);
        }
    }
    None
}

/// Applies one entry's descriptors to the overlay.
fn apply_entry(
    entry: &Entry,
    log_range: (u64, u64),
    pages: &mut BTreeMap<u64, Page>,
    overlay_bytes: &mut u64,
) -> Result<(), VhdxError> {
    let count = u64::from(entry.header.descriptor_count.get());
    let descriptor_area = (64 + 32 * count).div_ceil(LOG_SECTOR) * LOG_SECTOR;
    let mut data_index = 0u64;
    for i in 0..count {
        let at = (64 + 32 * i) as usize;
        let Some(desc) = entry
            .bytes
            .get(at..at + 32)
            .and_then(|b| LogDescriptor::read_from_bytes(b).ok())
        else {
            continue;
        };
        let file_offset = desc.file_offset.get();
        let is_data = &desc.signature == LOG_DESC_SIGNATURE;
        let length = if is_data {
            LOG_SECTOR
        } else {
            u64::from_le_bytes(desc.leading_bytes)
        };
        let bad = |reason| VhdxError::LogImpossibleDescriptor {
            entry_offset: entry.offset,
            index: i as u32,
            file_offset,
            length,
            reason,
        };
        if file_offset % LOG_SECTOR != 0 || length % LOG_SECTOR != 0 {
            return Err(bad("target or length not 4 KiB aligned"));
        }
        if file_offset < REGION_TABLE1_OFFSET {
            return Err(bad("target inside the file identifier or headers"));
        }
        if length > MAX_OVERLAY_BYTES {
            return Err(bad("length exceeds the replay limit"));
        }
        let Some(end) = file_offset.checked_add(length) else {
            return Err(bad("range overflows"));
        };
        if file_offset < log_range.1 && end > log_range.0 {
            return Err(bad("target inside the log"));
        }
        *overlay_bytes += length;
        if *overlay_bytes > MAX_OVERLAY_BYTES {
            return Err(VhdxError::LogOverlayTooLarge {
                entry_offset: entry.offset,
                limit: MAX_OVERLAY_BYTES,
            });
        }
        if is_data {
            let at = (descriptor_area + data_index * LOG_SECTOR) as usize;
            data_index += 1;
            let Some(sector) = entry.bytes.get(at..at + LOG_SECTOR as usize) else {
                return Err(bad("data sector missing"));
            };
            let mut page = sector.to_vec().into_boxed_slice();
            page[..8].copy_from_slice(&desc.leading_bytes);
            page[4092..].copy_from_slice(&desc.trailing_bytes);
            pages.insert(file_offset, Page::Data(page));
        } else {
            for page in (file_offset..end).step_by(LOG_SECTOR as usize) {
                pages.insert(page, Page::Zero);
            }
        }
    }
    Ok(())
}
