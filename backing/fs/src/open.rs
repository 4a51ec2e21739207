//! Choosing the partition to serve and mounting its file system.

use std::sync::Arc;

use vmbdev_block::{BlockDevice, BlockError};
use vmbdev_partition::{PartitionDevice, PartitionError, PartitionInfo, list_partitions};

use crate::tree::{FileTree, TreeError};
use crate::{CodePage, Ext4Tree, FatTree, FsKind, NtfsTree, detect};

/// Choices a mount takes that the image does not record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// The OEM code page of FAT short names (CP437 unless told).
    pub fat_code_page: CodePage,
}

/// An error choosing and mounting the file system to serve.
#[derive(Debug, thiserror::Error)]
pub enum OpenTreeError {
    /// The partition table could not be read.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// The device could not be read.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The requested partition holds no recognised file system.
    #[error("partition {number}: no FAT, NTFS or ext4 file system found")]
    Unrecognised {
        /// Partition number.
        number: usize,
    },
    /// No partition holds a recognised file system.
    #[error("no partition holds a FAT, NTFS or ext4 file system ({0} partitions examined)")]
    NothingMountable(usize),
    /// The file system was recognised but could not be mounted.
    #[error("partition {number}: mounting {kind:?}: {source}")]
    Mount {
        /// Partition number.
        number: usize,
        /// File-system kind detected.
        kind: FsKind,
        /// Why mounting failed.
        source: TreeError,
    },
}

/// Mounts the file system of kind `kind` on `device` with default options.
pub fn mount(device: Arc<dyn BlockDevice>, kind: FsKind) -> Result<Arc<dyn FileTree>, TreeError> {
    mount_with(device, kind, MountOptions::default())
}

/// Mounts the file system of kind `kind` on `device`.
pub fn mount_with(
    device: Arc<dyn BlockDevice>,
    kind: FsKind,
    options: MountOptions,
) -> Result<Arc<dyn FileTree>, TreeError> {
    Ok(match kind {
        FsKind::Fat => Arc::new(FatTree::mount_with(device, options.fat_code_page)?),
        FsKind::Ntfs => Arc::new(NtfsTree::mount(device)?),
        FsKind::Ext4 => Arc::new(Ext4Tree::mount(device)?),
    })
}

/// Opens the file tree to serve from a disk: partition `number` (as
/// [`PartitionInfo::number`] gives it) when given, otherwise the first
/// partition holding a recognised file system. Default mount options.
pub fn open_tree(
    device: Arc<dyn BlockDevice>,
    partition: Option<usize>,
) -> Result<Arc<dyn FileTree>, OpenTreeError> {
    open_tree_with(device, partition, MountOptions::default())
}

/// [`open_tree`] with mount options.
pub fn open_tree_with(
    device: Arc<dyn BlockDevice>,
    partition: Option<usize>,
    options: MountOptions,
) -> Result<Arc<dyn FileTree>, OpenTreeError> {
    let parts = list_partitions(&*device)?;
    let candidates: Vec<&PartitionInfo> = match partition {
        Some(n) => vec![
            parts
                .iter()
                .find(|p| p.number == n)
                .ok_or(PartitionError::NoSuchPartition(n))?,
        ],
        None => parts.iter().collect(),
    };
    let mut first_error = None;
    for info in &candidates {
        let view: Arc<dyn BlockDevice> =
            Arc::new(PartitionDevice::for_partition(device.clone(), info)?);
        let Some(kind) = detect(&*view)? else {
            if partition.is_some() {
                return Err(OpenTreeError::Unrecognised {
                    number: info.number,
                });
            }
            continue;
        };
        match mount_with(view, kind, options) {
            Ok(tree) => return Ok(tree),
            Err(source) => {
                let err = OpenTreeError::Mount {
                    number: info.number,
                    kind,
                    source,
                };
                if partition.is_some() {
                    return Err(err);
                }
                tracing::warn!(%err, "skipping partition");
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or(OpenTreeError::NothingMountable(candidates.len())))
}

/// A partition and the file system found on it, for `vmbdev info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSummary {
    /// The partition.
    pub info: PartitionInfo,
    /// The file system detected on it, if any (detection only reads the
    /// first sectors; it does not mount).
    pub file_system: Option<FsKind>,
}

/// Lists the partitions of `device` with the file system detected on each.
/// A partition that cannot be read is reported with no file system.
pub fn survey(device: Arc<dyn BlockDevice>) -> Result<Vec<PartitionSummary>, OpenTreeError> {
    let parts = list_partitions(&*device)?;
    Ok(parts
        .into_iter()
        .map(|info| {
            let file_system = PartitionDevice::for_partition(device.clone(), &info)
                .ok()
                .and_then(|view| detect(&view).ok().flatten());
            PartitionSummary { info, file_system }
        })
        .collect())
}

/// Whether two names are equal ignoring letter case (Unicode lower-case
/// mapping, as Windows file systems compare names).
pub(crate) fn names_equal_ignore_case(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.eq_ignore_ascii_case(b)
        || a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

/// Runs `f`, turning a panic inside a third-party crate into
/// [`TreeError::Corrupt`] naming `what`.
pub(crate) fn contain_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, TreeError>,
) -> Result<T, TreeError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::warn!(what, message, "file-system crate panicked");
            Err(TreeError::Corrupt(format!(
                "{what}: the image made the reader fail: {message}"
            )))
        }
    }
}
