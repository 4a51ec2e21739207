//! Building the device a server process serves from what is on disk: a
//! vmbfs device over a host directory or an image's file system, or a
//! storvsp controller with one disk over an image.

use std::path::Path;
use std::sync::Arc;

use vmbdev_block::BlockDevice;
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::{FileTree, HostDirTree, open_tree};

/// Which device to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The SCSI controller, one disk (LUN 0:0:0) over the image.
    Storvsp,
    /// The boot file system: the image's file system or a host directory.
    Vmbfs,
}

/// Why a device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The image could not be opened.
    #[error("{path}: cannot open the image: {reason}")]
    Image {
        /// The image.
        path: String,
        /// Why.
        reason: String,
    },
    /// No file tree could be read from the source.
    #[error("{path}: no file tree to serve: {reason}")]
    Tree {
        /// The source.
        path: String,
        /// Why.
        reason: String,
    },
    /// The storvsp configuration was refused.
    #[error("storvsp configuration: {0}")]
    Config(String),
}

/// Builds `kind` over `source` (an image; for vmbfs also a host
/// directory). `sub_channels` is the most storvsp sub-channels offered.
pub fn build_device(
    kind: DeviceKind,
    source: &Path,
    sub_channels: u16,
) -> Result<Arc<dyn VmbusDevice>, BuildError> {
    let path = source.display().to_string();
    match kind {
        DeviceKind::Vmbfs => {
            let tree: Arc<dyn FileTree> = if source.is_dir() {
                Arc::new(HostDirTree::open(source).map_err(|e| BuildError::Tree {
                    path: path.clone(),
                    reason: e.to_string(),
                })?)
            } else {
                open_tree(open_disk(source)?, None).map_err(|e| BuildError::Tree {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            };
            Ok(Arc::new(VmbfsDevice::new(VmbfsConfig {
                tree,
                rdma_enabled: true,
            })))
        }
        DeviceKind::Storvsp => {
            let controller = Arc::new(Controller::new());
            let lun = LunAddress {
                path: 0,
                target: 0,
                lun: 0,
            };
            controller.insert(lun, Arc::new(ScsiDisk::new(open_disk(source)?)));
            let config = StorvspConfig {
                max_sub_channels: sub_channels,
                multi_channel: sub_channels > 0,
                ..StorvspConfig::default()
            };
            let device = StorvspDevice::new(config, controller)
                .map_err(|e| BuildError::Config(e.to_string()))?;
            Ok(Arc::new(device))
        }
    }
}

fn open_disk(source: &Path) -> Result<Arc<dyn BlockDevice>, BuildError> {
    vmbdev_vhdx::open_image(source)
        .map(Arc::from)
        .map_err(|e| BuildError::Image {
            path: source.display().to_string(),
            reason: e.to_string(),
        })
}
