//! A fault-injecting [`BlockDevice`] for failing-media tests: I/O errors
//! and short reads at chosen byte ranges, latency spikes, and counts of
//! what was hit and of the bytes read through it (with no faults, it is
//! the byte counter the readers' cost tests use). It never reports where its sectors live (no
//! [`locate`](BlockDevice::locate) override), so every read goes through
//! it and the devices above take their copying path.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vmbdev_block::{BlockDevice, BlockError};

/// What happens to a read that touches a fault's byte range.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The read fails with `EIO`.
    Eio,
    /// The read returns fewer bytes than asked (as a file cut short).
    Short,
    /// The read succeeds after this delay.
    Delay(Duration),
}

/// A device over `inner` whose reads touching one of `faults`' byte ranges
/// fail or stall as the fault says.
pub struct FaultyDevice {
    inner: Arc<dyn BlockDevice>,
    faults: Vec<(Range<u64>, Fault)>,
    hits: AtomicU64,
    bytes: AtomicU64,
}

impl FaultyDevice {
    /// `inner` with `faults` (byte ranges of the device).
    pub fn new(inner: Arc<dyn BlockDevice>, faults: Vec<(Range<u64>, Fault)>) -> Self {
        Self {
            inner,
            faults,
            hits: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Bytes asked for through this device so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Reads that met a fault so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn fault_for(&self, start: u64, len: u64) -> Option<&Fault> {
        let end = start.saturating_add(len);
        self.faults
            .iter()
            .find(|(range, _)| range.start < end && start < range.end)
            .map(|(_, fault)| fault)
    }
}

impl BlockDevice for FaultyDevice {
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn disk_id(&self) -> [u8; 16] {
        self.inner.disk_id()
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let offset = lba * u64::from(self.logical_sector_size());
        let Some(fault) = self.fault_for(offset, buf.len() as u64) else {
            return self.inner.read_sectors(lba, buf);
        };
        self.hits.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from("faulty-media");
        match fault {
            Fault::Eio => Err(BlockError::Io {
                path,
                offset,
                source: std::io::Error::from_raw_os_error(5),
            }),
            Fault::Short => Err(BlockError::ShortRead {
                path,
                offset,
                wanted: buf.len(),
                got: buf.len() / 2,
            }),
            Fault::Delay(delay) => {
                std::thread::sleep(*delay);
                self.inner.read_sectors(lba, buf)
            }
        }
    }
}
