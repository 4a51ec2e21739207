//! Recognising a file system from its first sectors.

use vmbdev_block::{BlockDevice, BlockError, read_bytes};
use vmbdev_partition::boot_sector::{self, BootSectorKind};

/// A file system this crate can mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// FAT12, FAT16 or FAT32.
    Fat,
    /// NTFS.
    Ntfs,
    /// ext2/3/4 (read through the ext4 reader).
    Ext4,
}

/// Offset of the ext superblock.
const EXT_SUPERBLOCK: u64 = 1024;
/// Offset of `s_magic` inside the superblock.
const EXT_MAGIC_OFFSET: usize = 56;

fn boot_sector_kind(sector0: &[u8]) -> Option<FsKind> {
    boot_sector::boot_sector_kind(sector0).map(|kind| match kind {
        BootSectorKind::Fat => FsKind::Fat,
        BootSectorKind::Ntfs => FsKind::Ntfs,
    })
}

/// Detects the file system on `device`; `Ok(None)` when none is
/// recognised.
pub fn detect(device: &dyn BlockDevice) -> Result<Option<FsKind>, BlockError> {
    let size = device.size_bytes();
    if size < 512 {
        return Ok(None);
    }
    let mut sector0 = [0u8; 512];
    read_bytes(device, 0, &mut sector0)?;
    if let Some(kind) = boot_sector_kind(&sector0) {
        return Ok(Some(kind));
    }
    if size >= EXT_SUPERBLOCK + 1024 {
        let mut magic = [0u8; 2];
        read_bytes(device, EXT_SUPERBLOCK + EXT_MAGIC_OFFSET as u64, &mut magic)?;
        if magic == [0x53, 0xEF] {
            return Ok(Some(FsKind::Ext4));
        }
    }
    Ok(None)
}
