//! Cheap facts about a detected file system, read from its boot sector or
//! superblock without mounting it: the volume label and the size the file
//! system says it has; and how much of it is used ([`usage`], which
//! mounts FAT to count free clusters).

use std::sync::Arc;

use crate::detect::FsKind;
use crate::fat_format::FatType;
use crate::tree::TreeError;
use crate::{CodePage, FatTree};
use vmbdev_block::read_bytes;
use vmbdev_block::{BlockDevice, BlockError};
use vmbdev_partition::boot_sector::Bpb;

/// Offset of the ext superblock.
const EXT_SUPERBLOCK: u64 = 1024;
/// Bytes of the ext superblock read (up to and including `s_blocks_count_hi`).
const EXT_SUPERBLOCK_READ: usize = 0x154;
/// ext `INCOMPAT_64BIT`: `s_blocks_count_hi` is meaningful.
const EXT_INCOMPAT_64BIT: u32 = 0x80;
/// Largest ext `s_log_block_size` (64 KiB blocks).
const EXT_MAX_LOG_BLOCK_SIZE: u32 = 6;
/// FAT label of a volume without one.
const FAT_NO_NAME: &[u8; 11] = b"NO NAME    ";

/// What the boot sector or superblock of a file system says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsDetails {
    /// The volume label when one is set: from the boot sector (FAT), the
    /// superblock (ext) or the `$Volume` file's VOLUME_NAME attribute
    /// (NTFS).
    pub label: Option<String>,
    /// The size the file system records for itself in bytes, when the
    /// recorded fields are consistent.
    pub size_bytes: Option<u64>,
}

/// Reads the label and recorded size of the `kind` file system on `device`
/// (a FAT label read in code page 437, like [`details_with`]'s default).
pub fn details(device: &dyn BlockDevice, kind: FsKind) -> Result<FsDetails, BlockError> {
    details_with(device, kind, CodePage::default())
}

/// Reads the label and recorded size of the `kind` file system on
/// `device`; a FAT label's bytes above 0x7F are read in `code_page` (the
/// boot sector stores it in the OEM code page, like short names).
pub fn details_with(
    device: &dyn BlockDevice,
    kind: FsKind,
    code_page: CodePage,
) -> Result<FsDetails, BlockError> {
    match kind {
        FsKind::Fat => fat_details(device, code_page),
        FsKind::Ntfs => ntfs_details(device),
        FsKind::Ext4 => ext_details(device),
    }
}

/// Cluster size and free space of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// FAT12, FAT16 or FAT32 (FAT only).
    pub fat_type: Option<FatType>,
    /// Bytes per cluster (FAT) or block (ext).
    pub cluster_bytes: u64,
    /// Free bytes: FSInfo's count when valid, otherwise counted in the FAT
    /// (FAT); the superblock's free-block count (ext).
    pub free_bytes: u64,
}

/// Cluster size and free space of the `kind` file system on `device`;
/// `None` where not known (NTFS).
pub fn usage(device: Arc<dyn BlockDevice>, kind: FsKind) -> Result<Option<FsUsage>, TreeError> {
    match kind {
        FsKind::Fat => {
            let fat = FatTree::mount(device)?;
            let free = u64::from(fat.free_clusters()?);
            Ok(Some(FsUsage {
                fat_type: Some(fat.fat_type()),
                cluster_bytes: fat.cluster_bytes(),
                free_bytes: free * fat.cluster_bytes(),
            }))
        }
        FsKind::Ext4 => {
            let mut sb = [0u8; EXT_SUPERBLOCK_READ + 8];
            read_bytes(&*device, EXT_SUPERBLOCK, &mut sb).map_err(|e| TreeError::Io {
                path: "/".into(),
                message: e.to_string(),
            })?;
            let log_block_size = u32_at(&sb, 24);
            if log_block_size > EXT_MAX_LOG_BLOCK_SIZE {
                return Ok(None);
            }
            let mut free = u64::from(u32_at(&sb, 12));
            if u32_at(&sb, 96) & EXT_INCOMPAT_64BIT != 0 {
                free |= u64::from(u32_at(&sb, 0x158)) << 32;
            }
            let block = 1024u64 << log_block_size;
            Ok(Some(FsUsage {
                fat_type: None,
                cluster_bytes: block,
                free_bytes: free.saturating_mul(block),
            }))
        }
        FsKind::Ntfs => Ok(None),
    }
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A label from fixed-width bytes, padding (spaces, NULs) removed; `None`
/// when nothing is left.
fn trimmed_label(text: String) -> Option<String> {
    let trimmed = text.trim_end_matches([' ', '\0']);
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn fat_details(device: &dyn BlockDevice, code_page: CodePage) -> Result<FsDetails, BlockError> {
    let mut sector = [0u8; 512];
    read_bytes(device, 0, &mut sector)?;
    let Ok(bpb) = Bpb::parse(&sector) else {
        return Ok(FsDetails::default());
    };
    // FAT32 has no 16-bit FAT size, and its extended boot record (with the
    // label) sits after the FAT32-only BPB fields.
    let (signature_at, label_at) = if u16_at(&sector, 22) == 0 {
        (66, 71)
    } else {
        (38, 43)
    };
    let raw_label = &sector[label_at..label_at + 11];
    let label = if sector[signature_at] == 0x29 && raw_label != FAT_NO_NAME {
        trimmed_label(raw_label.iter().map(|&b| code_page.decode(b)).collect())
    } else {
        None
    };
    Ok(FsDetails {
        label,
        size_bytes: u64::from(bpb.total_sectors).checked_mul(u64::from(bpb.bytes_per_sector)),
    })
}

fn ntfs_details(device: &dyn BlockDevice) -> Result<FsDetails, BlockError> {
    let mut sector = [0u8; 512];
    read_bytes(device, 0, &mut sector)?;
    let bytes_per_sector = u16_at(&sector, 0x0B);
    let total_sectors = u64::from_le_bytes(sector[0x28..0x30].try_into().unwrap_or_default());
    let size_bytes = (bytes_per_sector.is_power_of_two()
        && (256..=4096).contains(&bytes_per_sector))
    .then(|| total_sectors.checked_mul(bytes_per_sector))
    .flatten();
    Ok(FsDetails {
        label: ntfs_label(device),
        size_bytes,
    })
}

/// The NTFS volume label, read by the `ntfs` crate after the boot sector
/// passed the mount checks; `None` when unset or unreadable.
fn ntfs_label(device: &dyn BlockDevice) -> Option<String> {
    crate::ntfs::check_boot_sector(device).ok()?;
    let mut cursor = BorrowedCursor {
        device,
        position: 0,
    };
    let read = crate::contain_panic("reading the NTFS volume name", || {
        let fail = |e: ntfs::NtfsError| TreeError::Corrupt(e.to_string());
        let ntfs = ntfs::Ntfs::new(&mut cursor).map_err(fail)?;
        match ntfs.volume_name(&mut cursor) {
            None => Ok(None),
            Some(name) => Ok(Some(name.map_err(fail)?.name().to_string_lossy())),
        }
    });
    match read {
        Ok(label) => label.filter(|l| !l.is_empty()),
        Err(e) => {
            tracing::warn!(error = %e, "reading the NTFS volume name");
            None
        }
    }
}

/// `Read + Seek` over a borrowed device, for one crate call.
struct BorrowedCursor<'a> {
    device: &'a dyn BlockDevice,
    position: u64,
}

impl std::io::Read for BorrowedCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.device.size_bytes().saturating_sub(self.position);
        let n = (buf.len() as u64).min(left) as usize;
        read_bytes(self.device, self.position, &mut buf[..n]).map_err(std::io::Error::other)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for BorrowedCursor<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(at) => Some(at),
            std::io::SeekFrom::End(delta) => self.device.size_bytes().checked_add_signed(delta),
            std::io::SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before byte 0")
        })?;
        Ok(self.position)
    }
}

fn ext_details(device: &dyn BlockDevice) -> Result<FsDetails, BlockError> {
    let mut sb = [0u8; EXT_SUPERBLOCK_READ];
    read_bytes(device, EXT_SUPERBLOCK, &mut sb)?;
    let log_block_size = u32_at(&sb, 24);
    let blocks_lo = u64::from(u32_at(&sb, 4));
    let blocks_hi = if u32_at(&sb, 96) & EXT_INCOMPAT_64BIT != 0 {
        u64::from(u32_at(&sb, 0x150))
    } else {
        0
    };
    let size_bytes = (log_block_size <= EXT_MAX_LOG_BLOCK_SIZE)
        .then(|| (blocks_hi << 32 | blocks_lo).checked_mul(1024 << log_block_size))
        .flatten();
    Ok(FsDetails {
        label: trimmed_label(String::from_utf8_lossy(&sb[120..136]).into_owned()),
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use vmbdev_block::RawFile;

    const MIB: u64 = 1 << 20;

    fn run(program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap_or_else(|e| panic!("{program} is required for this test: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn sized_file(path: &Path, bytes: u64) {
        std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
    }

    fn details_of(path: &Path, kind: FsKind) -> FsDetails {
        let dev = RawFile::open(path).unwrap();
        assert_eq!(crate::detect(&dev).unwrap(), Some(kind));
        details(&dev, kind).unwrap()
    }

    #[test]
    fn fat_label_and_size_match_mkfs() {
        let dir = tempfile::tempdir().unwrap();
        for (bits, mib, label) in [
            ("12", 2, Some("SMALL")),
            ("16", 20, Some("MY DISK")),
            ("32", 40, Some("BIG32")),
            ("16", 20, None),
        ] {
            let img = dir.path().join(format!("fat{bits}-{mib}.img"));
            std::fs::remove_file(&img).ok();
            let kib = (mib * MIB / 1024).to_string();
            let mut args = vec!["-C", "-F", bits, "-S", "512", "-s", "1"];
            if let Some(label) = label {
                args.extend(["-n", label]);
            }
            args.extend([img.to_str().unwrap(), kib.as_str()]);
            run("mkfs.vfat", &args);
            let d = details_of(&img, FsKind::Fat);
            assert_eq!(d.label.as_deref(), label, "FAT{bits}");
            assert_eq!(d.size_bytes, Some(mib * MIB), "FAT{bits}");
        }
    }

    #[test]
    fn ext_label_and_size_match_mke2fs() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ext4.img");
        sized_file(&img, 8 * MIB);
        // Only 6 MiB of the 8 MiB file belong to the file system.
        run(
            "mke2fs",
            &[
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "1024",
                "-L",
                "rootfs",
                img.to_str().unwrap(),
                "6144",
            ],
        );
        let d = details_of(&img, FsKind::Ext4);
        assert_eq!(d.label.as_deref(), Some("rootfs"));
        assert_eq!(d.size_bytes, Some(6 * MIB));
    }

    #[test]
    fn ntfs_size_matches_mkntfs() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ntfs.img");
        sized_file(&img, 8 * MIB);
        run(
            "mkntfs",
            &[
                "-q",
                "-F",
                "-Q",
                "-s",
                "512",
                "-L",
                "WIN",
                img.to_str().unwrap(),
            ],
        );
        let d = details_of(&img, FsKind::Ntfs);
        assert_eq!(d.label.as_deref(), Some("WIN"));
        // mkntfs leaves the last sector for the backup boot sector.
        assert_eq!(d.size_bytes, Some(8 * MIB - 512));
    }

    #[test]
    fn garbage_fields_yield_no_size() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ext.img");
        let mut bytes = vec![0u8; 4096];
        bytes[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        bytes[1024 + 24..1024 + 28].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&img, &bytes).unwrap();
        let d = details_of(&img, FsKind::Ext4);
        assert_eq!(d, FsDetails::default());
    }
}
