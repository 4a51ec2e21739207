//! On-disk layout of FAT12/16/32 directory entries (the BIOS parameter
//! block is [`vmbdev_partition::boot_sector::Bpb`]). Parsing only; no I/O.

/// Directory-entry attribute: read-only.
pub const ATTR_LONG_NAME: u8 = 0x0F;
/// Directory-entry attribute: volume label.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// Directory-entry attribute: directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
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
    /// The 8.3 name as displayed (`NAME.EXT`, lower-cased where the NT
    /// case flags say so).
    pub name: String,
    /// Attribute byte.
    pub attributes: u8,
    /// First cluster (0 for an empty file).
    pub first_cluster: u32,
    /// File size in bytes.
    pub size: u32,
}

impl ShortEntry {
    /// Parses a short entry (the caller has ruled out end, deleted and
    /// long-name entries).
    pub fn parse(e: &[u8; DIR_ENTRY_SIZE], fat32: bool) -> Self {
        let mut base = e[..8].to_vec();
        if base[0] == 0x05 {
            base[0] = 0xE5;
        }
        let case_flags = e[12];
        let decode = |bytes: &[u8], lower: bool| -> String {
            let s: String = bytes
                .iter()
                .map(|&b| char::from(b))
                .collect::<String>()
                .trim_end_matches(' ')
                .to_owned();
            if lower { s.to_lowercase() } else { s }
        };
        let stem = decode(&base, case_flags & 0x08 != 0);
        let ext = decode(&e[8..11], case_flags & 0x10 != 0);
        let name = if ext.is_empty() {
            stem
        } else {
            format!("{stem}.{ext}")
        };
        let hi = if fat32 { u16_at(e, 20) << 16 } else { 0 };
        Self {
            name,
            attributes: e[11],
            first_cluster: hi | u16_at(e, 26),
            size: u32_at(e, 28),
        }
    }
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
