//! Partition tables (GPT, MBR) and the bounded block-device view of one
//! partition.
//!
//! [`list_partitions`] reads the table of a disk: a GPT (behind its
//! protective MBR; the backup header at the last LBA is used when the
//! primary is damaged), an MBR with primary partitions and logical ones in an
//! extended partition, or no table at all, in which case the whole disk is
//! reported as one pseudo-partition so a file system made directly on the
//! disk is found too (told from an MBR by its [`boot_sector`]).
//!
//! Table bytes are untrusted: CRCs, entry sizes and ranges are checked and a
//! bad table is a [`PartitionError`], never a panic. [`build_gpt`] writes a
//! GPT for the pack tool. This crate must not mount file systems.
#![forbid(unsafe_code)]

pub mod boot_sector;
mod gpt;
mod gpt_writer;
mod mbr;

use std::sync::Arc;

pub use gpt_writer::{
    BASIC_DATA_PARTITION, GptPartition, GptTables, GptWriteError, build_gpt, gpt_usable_range,
};

use vmbdev_block::{BlockDevice, BlockError, Extent, check_request, check_sectors};

/// CRC-32 (IEEE, reflected) as GPT headers and entry arrays carry it.
fn crc32(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(bytes)
}

/// Which partitioning scheme a partition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionScheme {
    /// GUID partition table.
    Gpt,
    /// Master boot record (primary or logical partition).
    Mbr,
    /// No partition table: the whole disk.
    WholeDisk,
}

/// The type of a partition as its table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionType {
    /// A GPT partition-type GUID, in on-disk (mixed-endian) byte order.
    Guid([u8; 16]),
    /// An MBR partition-type byte.
    MbrType(u8),
    /// The whole-disk pseudo-partition has no type.
    None,
}

/// One partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Scheme of the table it came from.
    pub scheme: PartitionScheme,
    /// The number an OS gives it (`sda1` is 1; MBR logical partitions start
    /// at 5). The whole-disk pseudo-partition is 0.
    pub number: usize,
    /// Type from the table.
    pub partition_type: PartitionType,
    /// GPT unique partition GUID (on-disk byte order); `None` for MBR.
    pub unique_guid: Option<[u8; 16]>,
    /// First logical sector.
    pub first_lba: u64,
    /// Last logical sector (inclusive).
    pub last_lba: u64,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

impl PartitionInfo {
    /// Number of sectors in the partition.
    pub fn sector_count(&self) -> u64 {
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
    }
}

/// An error reading a partition table.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The disk could not be read.
    #[error("reading partition table: {0}")]
    Block(#[from] BlockError),
    /// The GPT is damaged (both headers, or the entry array).
    #[error("corrupt GPT at LBA {lba}: {what}")]
    CorruptGpt {
        /// Sector of the header or entry array concerned.
        lba: u64,
        /// What is wrong.
        what: String,
    },
    /// An MBR entry is invalid.
    #[error("corrupt MBR entry {number} (sector {lba}): {what}")]
    CorruptMbr {
        /// Partition number of the entry.
        number: usize,
        /// Sector holding the table.
        lba: u64,
        /// What is wrong.
        what: String,
    },
    /// The requested partition does not exist.
    #[error("no partition number {0} on this disk")]
    NoSuchPartition(usize),
}

/// Lists the partitions of `device`: GPT entries, MBR partitions, or the
/// whole disk when there is no table.
pub fn list_partitions(device: &dyn BlockDevice) -> Result<Vec<PartitionInfo>, PartitionError> {
    let sector_size = device.logical_sector_size() as usize;
    if device.sector_count() == 0 {
        return Ok(Vec::new());
    }
    let mut sector0 = vec![0u8; sector_size];
    device.read_sectors(0, &mut sector0)?;
    let has_signature = sector0.get(510..512) == Some(&[0x55, 0xAA][..]);
    if has_signature && mbr::is_protective(&sector0) {
        return gpt::read(device);
    }
    if !has_signature && gpt::has_primary_signature(device)? {
        // A GPT whose protective MBR was wiped.
        return gpt::read(device);
    }
    if has_signature && !boot_sector::looks_like_boot_sector(&sector0) {
        if let Some(parts) = mbr::read(device, &sector0)? {
            return Ok(parts);
        }
    }
    Ok(vec![whole_disk(device)])
}

/// The pseudo-partition covering the whole disk.
pub fn whole_disk(device: &dyn BlockDevice) -> PartitionInfo {
    PartitionInfo {
        scheme: PartitionScheme::WholeDisk,
        number: 0,
        partition_type: PartitionType::None,
        unique_guid: None,
        first_lba: 0,
        last_lba: device.sector_count().saturating_sub(1),
        name: String::new(),
    }
}

/// A bounded view of one partition: sector 0 of the view is the partition's
/// first sector and reads outside it are refused.
pub struct PartitionDevice {
    inner: Arc<dyn BlockDevice>,
    first_lba: u64,
    sector_count: u64,
}

impl std::fmt::Debug for PartitionDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionDevice")
            .field("first_lba", &self.first_lba)
            .field("sector_count", &self.sector_count)
            .finish_non_exhaustive()
    }
}

impl PartitionDevice {
    /// A view of `sector_count` sectors of `inner` from `first_lba`; fails
    /// when that range is not inside `inner`.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        first_lba: u64,
        sector_count: u64,
    ) -> Result<Self, BlockError> {
        let fits = first_lba
            .checked_add(sector_count)
            .is_some_and(|end| end <= inner.sector_count());
        if !fits {
            return Err(BlockError::OutOfRange {
                lba: first_lba,
                len: sector_count.saturating_mul(u64::from(inner.logical_sector_size())),
                sector_count: inner.sector_count(),
            });
        }
        Ok(Self {
            inner,
            first_lba,
            sector_count,
        })
    }

    /// The view of the partition `info` describes.
    pub fn for_partition(
        inner: Arc<dyn BlockDevice>,
        info: &PartitionInfo,
    ) -> Result<Self, BlockError> {
        Self::new(inner, info.first_lba, info.sector_count())
    }
}

impl BlockDevice for PartitionDevice {
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.sector_count
    }
    fn disk_id(&self) -> [u8; 16] {
        self.inner.disk_id()
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(self, lba, buf.len())?;
        self.inner.read_sectors(self.first_lba + lba, buf)
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        check_sectors(
            self.sector_count,
            self.inner.logical_sector_size(),
            lba,
            count,
        )?;
        // Inside the partition, which lies inside the device (checked when
        // the view was made), so the sum does not overflow.
        self.inner.locate(self.first_lba + lba, count)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_is_the_ieee_check_value() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
    }
}
