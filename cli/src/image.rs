//! Opening a disk image the way every subcommand does: refuse what is not
//! a disk image we read (by its signatures, unless `--format` says), lock
//! it and its VHDX or VHD parents for reading, and name the image once in any
//! error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_partition::{PartitionDevice, PartitionInfo, PartitionScheme, list_partitions};
use vmbdev_vhd::{Vhd, VhdError};
use vmbdev_vhdx::Vhdx;
use vmbdev_vhdx::VhdxError;

use crate::detect::{Format, detect, refusal};
use crate::error::CliError;
use crate::lock::ImageLocks;
use crate::messages::os_error;

/// The `--format` option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatChoice {
    /// Decide by the file's signatures; refuse formats vmbdev does not read.
    #[default]
    Auto,
    /// Read the file as a raw disk, whatever it holds.
    Raw,
    /// Read the file as a VHDX.
    Vhdx,
    /// Read the file as a VHD (fixed, dynamic or differencing).
    Vhd,
}

/// The opened disk.
pub enum Disk {
    /// A VHDX (and its parents).
    Vhdx(Box<Vhdx>),
    /// A VHD (and its parents).
    Vhd(Box<Vhd>),
    /// A raw disk.
    Raw(RawFile),
}

impl Disk {
    /// The disk as a block device.
    pub fn into_device(self) -> Arc<dyn BlockDevice> {
        match self {
            Disk::Vhdx(v) => Arc::<Vhdx>::from(v),
            Disk::Vhd(v) => Arc::<Vhd>::from(v),
            Disk::Raw(r) => Arc::new(r),
        }
    }
}

/// What stays locked while an opened image is read.
#[derive(Debug)]
pub struct Guard {
    /// The image and every parent of its differencing chain: what no
    /// output may overwrite.
    pub files: Vec<PathBuf>,
    /// The locks held on `files`; released on drop.
    _locks: ImageLocks,
}

/// An opened image, locked for reading while its guard lives.
pub struct Opened {
    /// The disk.
    pub disk: Disk,
    /// The locks.
    pub guard: Guard,
}

/// `message` about `path`: prefixed with the path unless it already
/// starts with it, and without Rust's `(os error N)` decoration.
pub fn about(path: &Path, message: impl std::fmt::Display) -> CliError {
    let shown = path.display().to_string();
    let mut message = message.to_string();
    if let Some(at) = message.rfind(" (os error ")
        && message.ends_with(')')
    {
        message.truncate(at);
    }
    if message == shown || message.starts_with(&format!("{shown}: ")) {
        CliError::new(message)
    } else {
        CliError::new(format!("{shown}: {message}"))
    }
}

/// A VHDX error in words: paths listed plainly and bytes as hex, never the
/// reader's `Debug` forms.
pub fn vhdx_error_text(e: &VhdxError) -> String {
    match e {
        VhdxError::BadIdentifier { found } => {
            let hex: Vec<String> = found.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "not a VHDX: the file identifier at offset 0 is {}, not \"vhdxfile\"",
                hex.join(" ")
            )
        }
        VhdxError::ParentNotFound { tried } => {
            let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            format!("parent image not found at {}", tried.join(", "))
        }
        VhdxError::Parent { path, source } => {
            let inner = vhdx_error_text(source);
            let shown = path.display().to_string();
            if inner.starts_with(&format!("{shown}: ")) {
                format!("parent {inner}")
            } else {
                format!("parent {shown}: {inner}")
            }
        }
        VhdxError::Open { path, source } => format!("{}: {}", path.display(), os_error(source)),
        other => other.to_string(),
    }
}

/// A VHD error in words: paths listed plainly, never the reader's `Debug`
/// forms.
pub fn vhd_error_text(e: &VhdError) -> String {
    match e {
        VhdError::ParentNotFound { tried } => {
            let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            format!("parent image not found at {}", tried.join(", "))
        }
        VhdError::Parent { path, source } => {
            let inner = vhd_error_text(source);
            let shown = path.display().to_string();
            if inner.starts_with(&format!("{shown}: ")) {
                format!("parent {inner}")
            } else {
                format!("parent {shown}: {inner}")
            }
        }
        VhdError::Open { path, source } => format!("{}: {}", path.display(), os_error(source)),
        other => other.to_string(),
    }
}

/// Opens the image at `path` (see the module docs).
pub fn open(path: &Path, choice: FormatChoice) -> Result<Opened, CliError> {
    let file = vmbdev_block::open_image_file(path).map_err(|e| about(path, os_error(&e)))?;
    let meta = file.metadata().map_err(|e| about(path, os_error(&e)))?;
    if meta.is_dir() {
        return Err(about(path, "is a directory, not a disk image"));
    }
    let mut locks = ImageLocks::default();
    locks.add(path)?;
    let format = match choice {
        FormatChoice::Raw => Format::Raw,
        FormatChoice::Vhdx => Format::Vhdx,
        FormatChoice::Vhd => Format::Vhd,
        FormatChoice::Auto => detect(&file, meta.len())
            .map_err(|e| about(path, format!("reading the signatures: {}", os_error(&e))))?,
    };
    drop(file);
    let mut files = vec![path.to_owned()];
    let disk = match format {
        Format::Vhdx => {
            let vhdx = Vhdx::open(path).map_err(|e| about(path, vhdx_error_text(&e)))?;
            for parent in &vhdx.info().parent_chain {
                locks.add(parent)?;
                files.push(parent.clone());
            }
            Disk::Vhdx(Box::new(vhdx))
        }
        Format::Vhd => {
            let vhd =
                Vhd::open(path).map_err(|e| about(path, format!("VHD: {}", vhd_error_text(&e))))?;
            for parent in &vhd.info().parent_chain {
                locks.add(parent)?;
                files.push(parent.clone());
            }
            Disk::Vhd(Box::new(vhd))
        }
        Format::Raw => Disk::Raw(RawFile::open(path).map_err(|e| about(path, e))?),
        other => return Err(CliError::new(refusal(path, other))),
    };
    Ok(Opened {
        disk,
        guard: Guard {
            files,
            _locks: locks,
        },
    })
}

/// Why `--partition number` names nothing on `device`, in words: `no
/// partition 3 (the disk has 1 partition)`.
fn no_such_partition(number: usize, parts: &[PartitionInfo]) -> String {
    if parts.iter().all(|p| p.scheme == PartitionScheme::WholeDisk) {
        return format!("no partition {number} (the disk has no partition table)");
    }
    let numbers: Vec<usize> = parts.iter().map(|p| p.number).collect();
    let listed = if numbers.iter().copied().eq(1..=numbers.len()) {
        String::new()
    } else {
        let shown: Vec<String> = numbers.iter().map(usize::to_string).collect();
        format!(", numbered {}", shown.join(", "))
    };
    format!(
        "no partition {number} (the disk has {}{listed})",
        crate::messages::count(numbers.len() as u64, "partition", "partitions")
    )
}

/// The partition `number` of the image at `path` (as `info` numbers
/// them), refused with a message naming it when the disk has no such
/// partition.
pub fn find_partition(
    path: &Path,
    device: &dyn BlockDevice,
    number: usize,
) -> Result<PartitionInfo, CliError> {
    let parts = list_partitions(device).map_err(|e| about(path, e))?;
    parts
        .iter()
        .find(|p| p.number == number)
        .cloned()
        .ok_or_else(|| about(path, no_such_partition(number, &parts)))
}

/// The bytes of partition `number` of the image at `path`, as a device.
pub fn partition_device(
    path: &Path,
    device: Arc<dyn BlockDevice>,
    number: usize,
) -> Result<Arc<dyn BlockDevice>, CliError> {
    let info = find_partition(path, &*device, number)?;
    let view = PartitionDevice::for_partition(device, &info)
        .map_err(|e| about(path, format!("partition {number}: {e}")))?;
    Ok(Arc::new(view))
}
