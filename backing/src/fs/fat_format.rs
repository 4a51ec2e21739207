//! On-disk layout of FAT12/16/32: the BIOS parameter block and directory
//! entries. Parsing only; no I/O.

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

/// The BPB fields this reader uses, checked for consistency.
#[derive(Debug, Clone)]
pub struct Bpb {
    /// Bytes per sector (512..=4096, power of two).
    pub bytes_per_sector: u32,
    /// Sectors per cluster (power of two).
    pub sectors_per_cluster: u32,
    /// Reserved sectors before the first FAT.
    pub reserved_sectors: u32,
    /// Number of FAT copies.
    pub fat_count: u32,
    /// Sectors per FAT.
    pub fat_sectors: u32,
    /// Root-directory entries (FAT12/16).
    pub root_entries: u32,
    /// Total sectors of the volume.
    pub total_sectors: u32,
    /// First cluster of the root directory (FAT32).
    pub root_cluster: u32,
}

fn u16_at(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Bpb {
    /// Parses the BPB from the first 512 bytes of a boot sector; returns
    /// the offset and problem of the first bad field.
    pub fn parse(sector: &[u8; 512]) -> Result<Self, (usize, String)> {
        if sector[0] != 0xEB && sector[0] != 0xE9 {
            return Err((
                0,
                format!("jump byte {:#04x} is not 0xEB or 0xE9", sector[0]),
            ));
        }
        let bytes_per_sector = u16_at(sector, 11);
        if !(512..=4096).contains(&bytes_per_sector) || !bytes_per_sector.is_power_of_two() {
            return Err((11, format!("bytes per sector {bytes_per_sector}")));
        }
        let sectors_per_cluster = u32::from(sector[13]);
        if sectors_per_cluster == 0 || !sectors_per_cluster.is_power_of_two() {
            return Err((13, format!("sectors per cluster {sectors_per_cluster}")));
        }
        let reserved_sectors = u16_at(sector, 14);
        if reserved_sectors == 0 {
            return Err((14, "zero reserved sectors".into()));
        }
        let fat_count = u32::from(sector[16]);
        if fat_count == 0 {
            return Err((16, "zero FATs".into()));
        }
        let root_entries = u16_at(sector, 17);
        let total16 = u16_at(sector, 19);
        let total_sectors = if total16 != 0 {
            total16
        } else {
            u32_at(sector, 32)
        };
        if total_sectors == 0 {
            return Err((19, "zero total sectors".into()));
        }
        let fat16 = u16_at(sector, 22);
        let fat_sectors = if fat16 != 0 {
            fat16
        } else {
            u32_at(sector, 36)
        };
        if fat_sectors == 0 {
            return Err((22, "zero sectors per FAT".into()));
        }
        Ok(Self {
            bytes_per_sector,
            sectors_per_cluster,
            reserved_sectors,
            fat_count,
            fat_sectors,
            root_entries,
            total_sectors,
            root_cluster: u32_at(sector, 44),
        })
    }
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
