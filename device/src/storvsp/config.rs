//! Controller configuration and the LUN map: the settings a controller
//! reports in QUERY_PROPERTIES, their validation, and the map from SRB
//! addresses to disks that all channels of a controller share.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::scsi_disk::ScsiDisk;

/// Default largest transfer of one SRB.
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 2 * 1024 * 1024;
/// Largest `max_transfer_bytes` a guest accepts (UEFI refuses larger).
pub const MAX_MAX_TRANSFER_BYTES: u32 = 8 * 1024 * 1024;

/// An invalid controller configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_transfer_bytes` is 0 or above 8 MiB.
    #[error("max_transfer_bytes {0} is not in 1..=8 MiB")]
    MaxTransferBytes(u32),
}

/// Controller settings reported in QUERY_PROPERTIES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorvspConfig {
    /// Largest data buffer of one SRB, in bytes (1..=8 MiB).
    pub max_transfer_bytes: u32,
    /// Most sub-channels a guest may create.
    pub max_sub_channels: u16,
    /// Whether sub-channels are offered at all.
    pub multi_channel: bool,
}

impl Default for StorvspConfig {
    fn default() -> Self {
        Self {
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            max_sub_channels: 0,
            multi_channel: false,
        }
    }
}

impl StorvspConfig {
    /// Checks the limits guests rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_transfer_bytes == 0 || self.max_transfer_bytes > MAX_MAX_TRANSFER_BYTES {
            return Err(ConfigError::MaxTransferBytes(self.max_transfer_bytes));
        }
        Ok(())
    }
}

/// Where a logical unit sits: path (bus), target and LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LunAddress {
    /// SRB `path_id`.
    pub path: u8,
    /// SRB `target_id`.
    pub target: u8,
    /// SRB `lun`.
    pub lun: u8,
}

/// The LUN map of one controller, shared by all its channels.
#[derive(Debug, Default)]
pub struct Controller {
    luns: RwLock<BTreeMap<LunAddress, Arc<ScsiDisk>>>,
    /// Bumped by every change of the map, so channels may keep the disk
    /// they last looked up (see [`LunCache`]).
    generation: AtomicU64,
}

impl Controller {
    /// A controller with no LUNs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `disk` at `address`, returning the disk it replaced.
    pub fn insert(&self, address: LunAddress, disk: Arc<ScsiDisk>) -> Option<Arc<ScsiDisk>> {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.insert(address, disk)
    }

    /// Detaches the disk at `address`.
    pub fn remove(&self, address: LunAddress) -> Option<Arc<ScsiDisk>> {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.remove(&address)
    }

    /// The disk at `address`.
    pub fn get(&self, address: LunAddress) -> Option<Arc<ScsiDisk>> {
        let map = self.luns.read().unwrap_or_else(|e| e.into_inner());
        map.get(&address).cloned()
    }

    /// How many changes the map has seen.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The LUNs present at `path`/`target`, ascending.
    pub fn luns_of(&self, path: u8, target: u8) -> Vec<u8> {
        let map = self.luns.read().unwrap_or_else(|e| e.into_inner());
        map.keys()
            .filter(|a| a.path == path && a.target == target)
            .map(|a| a.lun)
            .collect()
    }
}

/// The disk a channel looked up last, kept while the controller's map is
/// unchanged: a request to the same LUN then costs one atomic load instead
/// of the map's lock and a lookup. A disk removed (or replaced) is never
/// reached again: the change bumps the generation before the next lookup
/// can see it.
#[derive(Debug, Default)]
pub(crate) struct LunCache(RefCell<Option<CachedLun>>);

#[derive(Debug)]
struct CachedLun {
    generation: u64,
    address: LunAddress,
    disk: Option<Arc<ScsiDisk>>,
}

impl LunCache {
    /// The disk at `address` in `controller`.
    pub(crate) fn get(
        &self,
        controller: &Controller,
        address: LunAddress,
    ) -> Option<Arc<ScsiDisk>> {
        // Read before the map: a change racing the lookup leaves an older
        // generation cached, which the next request refreshes.
        let generation = controller.generation();
        let mut slot = self.0.borrow_mut();
        if let Some(cached) = slot.as_ref() {
            if cached.generation == generation && cached.address == address {
                return cached.disk.clone();
            }
        }
        let disk = controller.get(address);
        *slot = Some(CachedLun {
            generation,
            address,
            disk: disk.clone(),
        });
        disk
    }
}
