//! The volume boot record: what sector 0 of a FAT or NTFS volume holds.
//!
//! It carries the same 0x55AA signature as an MBR, so a disk formatted
//! without a partition table must be told apart from one with a table by
//! its BIOS parameter block. The BPB is parsed here, once, for both that
//! check and the FAT reader. Parsing only; no I/O.

/// The file system a volume boot record announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootSectorKind {
    /// FAT12, FAT16 or FAT32 (a valid BPB).
    Fat,
    /// NTFS (OEM id `"NTFS    "`).
    Ntfs,
}

/// What kind of volume boot record `sector0` is, if it is one.
pub fn boot_sector_kind(sector0: &[u8]) -> Option<BootSectorKind> {
    let first: &[u8; 512] = sector0.get(..512)?.try_into().ok()?;
    if &first[3..11] == b"NTFS    " {
        return Some(BootSectorKind::Ntfs);
    }
    let fat_label =
        &first[54..59] == b"FAT12" || &first[54..59] == b"FAT16" || &first[82..87] == b"FAT32";
    if Bpb::parse(first).is_ok() && (fat_label || first[21] >= 0xF0) {
        return Some(BootSectorKind::Fat);
    }
    None
}

/// Whether a sector 0 is a FAT or NTFS boot sector rather than an MBR.
pub fn looks_like_boot_sector(sector0: &[u8]) -> bool {
    boot_sector_kind(sector0).is_some()
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
