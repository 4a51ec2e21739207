//! On-disk layout of FAT12/16/32 directory entries (the BIOS parameter
//! block is [`vmbdev_partition::boot_sector::Bpb`]) and of the FAT32
//! FSInfo sector. Parsing only; no I/O.

use crate::codepage::CodePage;
use crate::tree::Timestamp;

/// Directory-entry attribute combination marking a long-name fragment.
pub const ATTR_LONG_NAME: u8 = 0x0F;
/// Directory-entry attribute: volume label.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// Directory-entry attribute: directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// NT case flag (byte 12): the base name is shown in lower case.
pub const CASE_LOWER_BASE: u8 = 0x08;
/// NT case flag (byte 12): the extension is shown in lower case.
pub const CASE_LOWER_EXT: u8 = 0x10;
/// First name byte standing for 0xE5, which itself marks a deleted entry.
pub const KANJI_E5_STAND_IN: u8 = 0x05;
/// Size of one directory entry.
pub const DIR_ENTRY_SIZE: usize = 32;

/// Which FAT variant, decided by the cluster count as the FAT spec says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit entries.
    Fat12,
    /// 16-bit entries.
    Fat16,
    /// 28-bit entries in 32-bit slots.
    Fat32,
}

fn u16_at(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A parsed 32-byte short directory entry.
#[derive(Debug, Clone)]
pub struct ShortEntry {
    /// The 8.3 name as displayed (`NAME.EXT`, bytes decoded through the
    /// OEM code page, lower-cased where the NT case flags say so).
    pub name: String,
    /// Attribute byte.
    pub attributes: u8,
    /// First cluster (0 for an empty file).
    pub first_cluster: u32,
    /// File size in bytes.
    pub size: u32,
    /// Creation date and time, to 10 ms.
    pub created: Option<Timestamp>,
    /// Last write date and time, to 2 s.
    pub modified: Option<Timestamp>,
    /// Last access date (midnight).
    pub accessed: Option<Timestamp>,
}

impl ShortEntry {
    /// Parses a short entry (the caller has ruled out end, deleted and
    /// long-name entries).
    pub fn parse(e: &[u8; DIR_ENTRY_SIZE], fat32: bool, code_page: CodePage) -> Self {
        let mut base = [0u8; 8];
        base.copy_from_slice(&e[..8]);
        if base[0] == KANJI_E5_STAND_IN {
            base[0] = 0xE5;
        }
        let case_flags = e[12];
        let stem = decode_part(&base, case_flags & CASE_LOWER_BASE != 0, code_page);
        let ext = decode_part(&e[8..11], case_flags & CASE_LOWER_EXT != 0, code_page);
        let name = if ext.is_empty() {
            stem
        } else {
            format!("{stem}.{ext}")
        };
        let hi = if fat32 { u16_at(e, 20) << 16 } else { 0 };
        let created_ms = u32::from(e[13]).min(199) * 10;
        Self {
            name,
            attributes: e[11],
            first_cluster: hi | u16_at(e, 26),
            size: u32_at(e, 28),
            created: dos_timestamp(u16_at(e, 16), u16_at(e, 14), created_ms),
            modified: dos_timestamp(u16_at(e, 24), u16_at(e, 22), 0),
            accessed: dos_timestamp(u16_at(e, 18), 0, 0),
        }
    }
}

/// One part of an 8.3 name: padding removed, bytes through the code page,
/// lower-cased (as Windows does for the NT case flags) when asked.
fn decode_part(bytes: &[u8], lower: bool, code_page: CodePage) -> String {
    let len = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    bytes[..len]
        .iter()
        .map(|&b| code_page.decode(b))
        .flat_map(|c| {
            let lowered: Vec<char> = if lower {
                c.to_lowercase().collect()
            } else {
                vec![c]
            };
            lowered
        })
        .collect()
}

/// A DOS date (bits 15-9 years since 1980, 8-5 month, 4-0 day) and time
/// (bits 15-11 hours, 10-5 minutes, 4-0 two-second units) plus extra
/// milliseconds; `None` for a zero date or fields out of range.
pub fn dos_timestamp(date: u32, time: u32, extra_ms: u32) -> Option<Timestamp> {
    if date == 0 {
        return None;
    }
    let year = 1980 + i64::from(date >> 9);
    let month = (date >> 5) & 0xF;
    let day = date & 0x1F;
    let (hour, minute, second) = (time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2);
    if hour > 23 || minute > 59 || second > 58 {
        return None;
    }
    let at = Timestamp::from_utc(year, month, day, hour, minute, second)?;
    Some(Timestamp::new(
        at.seconds + i64::from(extra_ms / 1000),
        extra_ms % 1000 * 1_000_000,
    ))
}

/// FSInfo signatures: lead at 0, structure at 484, trail at 508.
const FSINFO_LEAD: u32 = 0x4161_5252;
const FSINFO_STRUCT: u32 = 0x6141_7272;
const FSINFO_TRAIL: u32 = 0xAA55_0000;
/// FSInfo free count meaning "not known".
const FSINFO_UNKNOWN: u32 = 0xFFFF_FFFF;

/// The free-cluster count an FSInfo sector records, when its signatures
/// are right and the count is known and possible for `cluster_count`.
pub fn fsinfo_free_clusters(sector: &[u8; 512], cluster_count: u32) -> Option<u32> {
    let signed = u32_at(sector, 0) == FSINFO_LEAD
        && u32_at(sector, 484) == FSINFO_STRUCT
        && u32_at(sector, 508) == FSINFO_TRAIL;
    let free = u32_at(sector, 488);
    (signed && free != FSINFO_UNKNOWN && free <= cluster_count).then_some(free)
}

/// The checksum of an 8.3 name that each long-name entry repeats.
pub fn short_name_checksum(raw_name: &[u8]) -> u8 {
    raw_name
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The 13 UTF-16 units of one long-name entry.
pub fn long_name_units(e: &[u8; DIR_ENTRY_SIZE]) -> [u16; 13] {
    let mut units = [0u16; 13];
    let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    for (unit, at) in units.iter_mut().zip(offsets) {
        *unit = u16::from_le_bytes([e[at], e[at + 1]]);
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_entry_bytes_decode_stand_in_case_flags_and_centiseconds() {
        let mut e = [0u8; DIR_ENTRY_SIZE];
        e[..11].copy_from_slice(b"\x05X      TXT");
        e[11] = 0x20;
        e[12] = CASE_LOWER_EXT;
        e[13] = 123; // 1.23 s past the 2-second creation time
        let date = (44 << 9 | 2 << 5 | 29) as u16;
        e[16..18].copy_from_slice(&date.to_le_bytes());
        e[14..16].copy_from_slice(&(13u16 << 11 | 5 << 5 | 4).to_le_bytes());
        let cp437 = ShortEntry::parse(&e, false, CodePage::Cp437);
        assert_eq!(cp437.name, "σX.txt");
        assert_eq!(
            cp437.created.map(|t| t.to_string()).as_deref(),
            Some("2024-02-29T13:05:09.230000000Z")
        );
        assert_eq!(cp437.modified, None);
        let cp850 = ShortEntry::parse(&e, false, CodePage::Cp850);
        assert_eq!(cp850.name, "ÕX.txt");
        e[12] = CASE_LOWER_BASE;
        assert_eq!(ShortEntry::parse(&e, false, CodePage::Cp850).name, "õx.TXT");
    }

    #[test]
    fn dos_dates_decode_and_bad_fields_are_none() {
        // 2024-02-29 13:05:08 → date (44 << 9 | 2 << 5 | 29), time (13 << 11 | 5 << 5 | 4).
        let date = 44 << 9 | 2 << 5 | 29;
        let time = 13 << 11 | 5 << 5 | 4;
        assert_eq!(
            dos_timestamp(date, time, 1230).map(|t| t.to_string()),
            Some("2024-02-29T13:05:09.230000000Z".to_owned())
        );
        assert_eq!(dos_timestamp(0, time, 0), None);
        // 2023-02-29 does not exist; month 13 neither; hour 24 neither.
        assert_eq!(dos_timestamp(43 << 9 | 2 << 5 | 29, 0, 0), None);
        assert_eq!(dos_timestamp(44 << 9 | 13 << 5 | 1, 0, 0), None);
        assert_eq!(dos_timestamp(date, 24 << 11, 0), None);
    }
}
