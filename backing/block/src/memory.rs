//! A disk held in memory: what tests, fuzz targets and disk builders read
//! instead of a file.

use crate::{BlockDevice, BlockError, Extent, check_request, check_sectors};

/// A read-only disk over bytes in memory.
///
/// Reads go through [`check_request`] like every other device's, so a test
/// against a `MemoryDisk` exercises the same bounds rules a file would. A
/// trailing partial sector is not exposed.
#[derive(Debug, Clone)]
pub struct MemoryDisk {
    bytes: Vec<u8>,
    logical_sector_size: u32,
    physical_sector_size: u32,
    disk_id: [u8; 16],
}

impl MemoryDisk {
    /// A disk of 512-byte sectors over `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self::with_sector_sizes(bytes, 512, 512)
    }

    /// A disk with the given logical and physical sector sizes.
    ///
    /// # Panics
    ///
    /// If `logical_sector_size` is zero: a disk's geometry is the caller's
    /// own choice, never input.
    pub fn with_sector_sizes(
        mut bytes: Vec<u8>,
        logical_sector_size: u32,
        physical_sector_size: u32,
    ) -> Self {
        assert!(logical_sector_size > 0, "zero logical sector size");
        let sector = logical_sector_size as usize;
        bytes.truncate(bytes.len() / sector * sector);
        Self {
            bytes,
            logical_sector_size,
            physical_sector_size,
            disk_id: [0; 16],
        }
    }

    /// The same disk reporting `disk_id`.
    pub fn with_disk_id(mut self, disk_id: [u8; 16]) -> Self {
        self.disk_id = disk_id;
        self
    }

    /// The disk's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl BlockDevice for MemoryDisk {
    fn logical_sector_size(&self) -> u32 {
        self.logical_sector_size
    }
    fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }
    fn sector_count(&self) -> u64 {
        self.bytes.len() as u64 / u64::from(self.logical_sector_size)
    }
    fn disk_id(&self) -> [u8; 16] {
        self.disk_id
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = check_request(self, lba, buf.len())? as usize;
        buf.copy_from_slice(&self.bytes[offset..offset + buf.len()]);
        Ok(())
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        let sector = u64::from(self.logical_sector_size);
        check_sectors(self.sector_count(), self.logical_sector_size, lba, count)?;
        // In bounds (checked above), so the products fit the byte length.
        let start = (lba * sector) as usize;
        let end = start + (count * sector) as usize;
        Ok(Extent::Memory {
            bytes: &self.bytes[start..end],
            sectors: count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked_and_partial_sectors_dropped() {
        let bytes: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let disk = MemoryDisk::new(bytes.clone());
        assert_eq!(disk.sector_count(), 2);
        let mut buf = [0u8; 512];
        disk.read_sectors(1, &mut buf).unwrap();
        assert_eq!(&buf[..], &bytes[512..1024]);
        assert!(matches!(
            disk.read_sectors(2, &mut buf),
            Err(BlockError::OutOfRange { lba: 2, .. })
        ));
        assert!(matches!(
            disk.read_sectors(0, &mut buf[..100]),
            Err(BlockError::UnalignedBuffer { len: 100, .. })
        ));
    }

    #[test]
    fn geometry_and_id_are_as_given() {
        let disk = MemoryDisk::with_sector_sizes(vec![0; 8192], 4096, 4096).with_disk_id([9; 16]);
        assert_eq!(disk.sector_count(), 2);
        assert_eq!(disk.size_bytes(), 8192);
        assert_eq!(disk.disk_id(), [9; 16]);
    }

    #[test]
    fn bytes_read_at_clamps_at_the_end() {
        let bytes = vec![1u8, 2, 3];
        let mut buf = [0u8; 4];
        assert_eq!(crate::ReadAt::read_at(&bytes, 1, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], &[2, 3]);
        assert_eq!(crate::ReadAt::read_at(&bytes, 9, &mut buf).unwrap(), 0);
        assert_eq!(
            crate::ReadAt::read_at(&bytes, u64::MAX, &mut buf).unwrap(),
            0
        );
    }
}
