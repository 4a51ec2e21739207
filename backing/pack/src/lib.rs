//! Packs a directory tree into a dynamic VHDX: a GPT disk with one
//! "Microsoft basic data" partition (1 MiB aligned) holding a FAT32 volume
//! with the tree's files.
//!
//! The disk is built in a sparse temporary file next to the output (only
//! written regions take space, file bytes are streamed), opened as a
//! [`RawFile`] and handed to [`write_vhdx`], which leaves zero blocks out.
//!
//! This crate owns the writers the tool needs to make disks without
//! external tools: [`fat_writer`] (a FAT32 volume from any [`FileTree`]) and
//! the packing of volume + GPT + VHDX. It reads its sources only; it must
//! never write anything but its own output.
#![forbid(unsafe_code)]

mod fat_names;
pub mod fat_writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fat_writer::{
    FatLayout, FatOptions, FatSource, FatWriteError, OffsetWriter, WriteAt, min_fat32_sectors,
};
use vmbdev_block::{BlockDevice, BlockError, Extent, RawFile, check_request, check_sectors};
use vmbdev_fs::{FileTree, HostDirTree, TreeError};
use vmbdev_partition::{
    BASIC_DATA_PARTITION, GptPartition, GptWriteError, build_gpt, gpt_usable_range,
};
use vmbdev_vhdx::{WriteError, WriteOptions, write_vhdx};

/// Sector size of packed disks.
pub const SECTOR_SIZE: u32 = 512;
/// Partition alignment and disk-size granularity.
const ALIGN: u64 = 1 << 20;
/// Largest default VHDX block size.
const MAX_DEFAULT_BLOCK: u64 = 32 << 20;
/// Smallest VHDX block size.
const MIN_BLOCK: u64 = 1 << 20;

/// The file system to put on the partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PackFs {
    /// FAT32 (long names, up to 4 GiB - 1 per file).
    #[default]
    Fat32,
}

/// How to pack.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// File system of the partition.
    pub fs: PackFs,
    /// Virtual disk size in bytes (a multiple of 512); `None` sizes the disk
    /// from the tree.
    pub disk_size: Option<u64>,
    /// VHDX block size; `None` picks one from the disk size.
    pub block_size: Option<u32>,
    /// Volume label.
    pub label: Option<String>,
    /// Timestamp of every entry (Unix seconds); `None` uses the current
    /// time.
    pub timestamp: Option<u64>,
    /// Told how far the pack has come.
    pub progress: Progress,
}

/// The steps of a pack that take time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackStep {
    /// Writing the volume: the tree's file bytes (counted in bytes of the
    /// tree's files).
    Files,
    /// Writing the VHDX (counted in bytes of the virtual disk looked at;
    /// its unwritten parts are passed over without reading).
    Image,
}

/// A function told `(step, done, total)` as a pack goes; none by default.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<ProgressFn>>);

/// What a [`Progress`] calls.
pub type ProgressFn = dyn Fn(PackStep, u64, u64) + Send + Sync;

impl Progress {
    /// Calls `f` as the pack goes.
    pub fn new(f: impl Fn(PackStep, u64, u64) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    fn tell(&self, step: PackStep, done: u64, total: u64) {
        if let Some(f) = &self.0 {
            f(step, done.min(total), total);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(set)"
        } else {
            "Progress(none)"
        })
    }
}

/// The scratch disk as the volume writer sees it, counting the bytes
/// written (nearly all of them the files' bytes) for the progress.
struct Counting<'a> {
    file: &'a std::fs::File,
    written: std::sync::atomic::AtomicU64,
    total: u64,
    progress: &'a Progress,
}

impl WriteAt for Counting<'_> {
    fn write_all_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self.file, bytes, offset)?;
        let done = self
            .written
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.progress
            .tell(PackStep::Files, done + bytes.len() as u64, self.total);
        Ok(())
    }
}

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackReport {
    /// Files written.
    pub files: u64,
    /// Directories written (the root included).
    pub dirs: u64,
    /// Bytes of file data.
    pub file_bytes: u64,
    /// Virtual disk size.
    pub disk_size: u64,
    /// First sector of the partition.
    pub partition_first_lba: u64,
    /// Sectors in the partition (and the volume).
    pub partition_sectors: u64,
    /// FAT cluster size.
    pub cluster_bytes: u64,
    /// VHDX block size used.
    pub block_size: u32,
    /// Host entries left out: symbolic links, special files and names that
    /// are not UTF-8 (at most [`MAX_SKIPPED_LISTED`] are named).
    pub skipped: Vec<PathBuf>,
    /// How many host entries were left out in all.
    pub skipped_count: u64,
}

/// Most left-out host entries named in a [`PackReport`].
pub const MAX_SKIPPED_LISTED: usize = 16;

/// An error packing a tree.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The source directory could not be opened.
    #[error("{path}: {source}")]
    OpenSource {
        /// Source directory.
        path: PathBuf,
        /// Why.
        source: TreeError,
    },
    /// The tree cannot be laid out as FAT32.
    #[error(transparent)]
    Fat(#[from] FatWriteError),
    /// The partition table cannot be built.
    #[error(transparent)]
    Gpt(#[from] GptWriteError),
    /// The disk size cannot hold a FAT32 partition.
    #[error(
        "a disk of {disk_size} bytes is too small: a FAT32 partition needs a disk of at least {min_disk} bytes"
    )]
    DiskTooSmall {
        /// Disk size asked for.
        disk_size: u64,
        /// Smallest disk that works.
        min_disk: u64,
    },
    /// The disk size is more than a FAT32 volume can fill.
    #[error(
        "a disk of {disk_size} bytes is too large: a FAT32 volume of {SECTOR_SIZE}-byte sectors counts at most {} sectors, so the disk may be at most {max_disk} bytes",
        u32::MAX
    )]
    DiskTooLarge {
        /// Disk size asked for.
        disk_size: u64,
        /// Largest disk that works.
        max_disk: u64,
    },
    /// The VHDX block size is larger than the disk.
    #[error("a VHDX block size of {block_size} bytes is larger than the {disk_size}-byte disk")]
    BlockLargerThanDisk {
        /// Block size asked for.
        block_size: u32,
        /// Disk size.
        disk_size: u64,
    },
    /// The disk size is not a whole number of sectors.
    #[error("disk size {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedDiskSize(u64),
    /// The scratch disk could not be made.
    #[error("{path}: scratch disk: {source}")]
    Scratch {
        /// Directory or file concerned.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The scratch disk could not be read back.
    #[error("scratch disk: {0}")]
    ScratchRead(#[from] BlockError),
    /// Writing the VHDX failed.
    #[error(transparent)]
    Vhdx(#[from] WriteError),
}

/// A packed disk in a sparse temporary file, deleted when dropped. As a
/// [`BlockDevice`] it reads holes as zeros without touching the file, so
/// converting a large, mostly empty disk stays quick.
#[derive(Debug)]
pub struct PackedDisk {
    file: tempfile::NamedTempFile,
    device: RawFile,
    report: PackReport,
    progress: Progress,
}

impl PackedDisk {
    /// What was packed.
    pub fn report(&self) -> &PackReport {
        &self.report
    }

    /// Whether `len` bytes at `offset` lie entirely in a hole of the file.
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        match rustix::fs::seek(self.file.as_file(), rustix::fs::SeekFrom::Data(offset)) {
            Ok(next_data) => next_data >= offset + len,
            Err(rustix::io::Errno::NXIO) => true,
            Err(_) => false,
        }
    }
}

impl BlockDevice for PackedDisk {
    fn logical_sector_size(&self) -> u32 {
        self.device.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.device.physical_sector_size()
    }
    fn sector_count(&self) -> u64 {
        self.device.sector_count()
    }
    fn disk_id(&self) -> [u8; 16] {
        self.device.disk_id()
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = check_request(self, lba, buf.len())?;
        let end = offset + buf.len() as u64;
        self.progress.tell(PackStep::Image, end, self.size_bytes());
        if self.is_hole(offset, buf.len() as u64) {
            buf.fill(0);
            return Ok(());
        }
        self.device.read_sectors(lba, buf)
    }
    fn locate(&self, lba: u64, count: u64) -> Result<Extent<'_>, BlockError> {
        check_sectors(self.sector_count(), SECTOR_SIZE, lba, count)?;
        let ss = u64::from(SECTOR_SIZE);
        let (offset, len) = (lba * ss, count * ss);
        // Holes are what was never written: the free clusters, the unused
        // tail of each FAT, the gaps around the partition.
        let hole = match rustix::fs::seek(self.file.as_file(), rustix::fs::SeekFrom::Data(offset)) {
            Ok(next_data) => next_data.saturating_sub(offset).min(len) / ss,
            Err(rustix::io::Errno::NXIO) => count,
            Err(_) => 0,
        };
        if hole > 0 {
            let end = offset + hole * ss;
            self.progress.tell(PackStep::Image, end, self.size_bytes());
            return Ok(Extent::Zero { sectors: hole });
        }
        let data_end =
            match rustix::fs::seek(self.file.as_file(), rustix::fs::SeekFrom::Hole(offset)) {
                Ok(end) => end.saturating_sub(offset).div_ceil(ss).clamp(1, count),
                Err(_) => count,
            };
        self.device.locate(lba, data_end)
    }
}

/// Packs the host directory `src` into the dynamic VHDX `out`.
pub fn pack_directory(
    src: &Path,
    out: &Path,
    options: &PackOptions,
) -> Result<PackReport, PackError> {
    let tree = HostDirTree::open(src).map_err(|source| PackError::OpenSource {
        path: src.to_owned(),
        source,
    })?;
    let mut report = pack_tree(&tree, out, options)?;
    (report.skipped, report.skipped_count) = skipped_host_entries(src);
    Ok(report)
}

/// Packs any file tree into the dynamic VHDX `out` (a GPT disk with one
/// FAT32 partition holding the tree).
pub fn pack_tree(
    tree: &dyn FileTree,
    out: &Path,
    options: &PackOptions,
) -> Result<PackReport, PackError> {
    let scratch_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let disk = build_disk(tree, scratch_dir, options)?;
    let mut report = disk.report().clone();
    let block_size = options
        .block_size
        .unwrap_or_else(|| default_block_size(report.disk_size));
    if u64::from(block_size) > report.disk_size {
        return Err(PackError::BlockLargerThanDisk {
            block_size,
            disk_size: report.disk_size,
        });
    }
    report.block_size = block_size;
    let opts = WriteOptions {
        block_size,
        logical_sector_size: SECTOR_SIZE,
        ..WriteOptions::default()
    };
    // Written under a temporary name and renamed, so a failed pack leaves
    // no half-written image at `out`.
    let staged = tempfile::Builder::new()
        .prefix(".vmbdev-pack-out-")
        // What `File::create` asks for; the umask still applies.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(scratch_dir)
        .map_err(|source| PackError::Scratch {
            path: scratch_dir.to_owned(),
            source,
        })?;
    write_vhdx(&disk, staged.path(), &opts)?;
    staged.persist(out).map_err(|e| PackError::Scratch {
        path: out.to_owned(),
        source: e.error,
    })?;
    tracing::info!(?report, "packed");
    Ok(report)
}

/// A VHDX block size for a disk of `disk_size` bytes: about 1/32 of the
/// disk, a power of two between 1 and 32 MiB, so small images do not
/// allocate whole 32 MiB blocks for a few files.
pub fn default_block_size(disk_size: u64) -> u32 {
    let target = (disk_size / 32).clamp(MIN_BLOCK, MAX_DEFAULT_BLOCK);
    // Largest power of two not above the target.
    (1u64 << (63 - target.leading_zeros())) as u32
}

/// The disk size that holds `volume_sectors` in a partition that starts
/// and ends on 1 MiB boundaries, with the last MiB left for the backup
/// table.
fn disk_bytes_for_volume(volume_sectors: u64) -> u64 {
    let volume = (volume_sectors * u64::from(SECTOR_SIZE)).div_ceil(ALIGN) * ALIGN;
    ALIGN + volume + ALIGN
}

/// Lays out `tree` as a GPT disk with a FAT32 partition in a sparse
/// temporary file created in `scratch_dir`.
pub fn build_disk(
    tree: &dyn FileTree,
    scratch_dir: &Path,
    options: &PackOptions,
) -> Result<PackedDisk, PackError> {
    let PackFs::Fat32 = options.fs;
    let ss = u64::from(SECTOR_SIZE);
    let source = FatSource::scan(tree)?;
    let disk_size = match options.disk_size {
        Some(size) if size % ss != 0 => return Err(PackError::UnalignedDiskSize(size)),
        Some(size) => size,
        None => disk_bytes_for_volume(source.default_volume_sectors(SECTOR_SIZE)),
    };
    let sector_count = disk_size / ss;
    let first_lba = ALIGN / ss;
    let too_small = || PackError::DiskTooSmall {
        disk_size,
        min_disk: disk_bytes_for_volume(min_fat32_sectors(SECTOR_SIZE)),
    };
    let (_, last_usable) = gpt_usable_range(sector_count, SECTOR_SIZE).ok_or_else(too_small)?;
    // End on a 1 MiB boundary too, as partitioning tools do.
    let align_sectors = ALIGN / ss;
    let end = (last_usable + 1) / align_sectors * align_sectors;
    if end <= first_lba {
        return Err(too_small());
    }
    let last_lba = end - 1;
    let volume_sectors = end - first_lba;
    // The boot sector counts the volume's sectors in 32 bits.
    if volume_sectors > u64::from(u32::MAX) {
        return Err(PackError::DiskTooLarge {
            disk_size,
            max_disk: disk_bytes_for_volume(u64::from(u32::MAX) / (ALIGN / ss) * (ALIGN / ss)),
        });
    }
    if volume_sectors < min_fat32_sectors(SECTOR_SIZE) {
        return Err(too_small());
    }
    let timestamp = options.timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let fat_options = FatOptions {
        label: options.label.clone(),
        serial: rand::random(),
        hidden_sectors: first_lba as u32,
        timestamp,
    };
    let layout = FatLayout::new(source, volume_sectors, SECTOR_SIZE, fat_options)?;
    let tables = build_gpt(
        sector_count,
        SECTOR_SIZE,
        random_guid(),
        &[GptPartition {
            type_guid: BASIC_DATA_PARTITION,
            unique_guid: random_guid(),
            first_lba,
            last_lba,
            attributes: 0,
            name: "Basic data partition".into(),
        }],
    )?;

    let scratch_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PackError::Scratch { path, source }
    };
    let file = tempfile::Builder::new()
        .prefix(".vmbdev-pack-")
        .tempfile_in(scratch_dir)
        .map_err(scratch_err(scratch_dir))?;
    let path = file.path().to_owned();
    file.as_file()
        .set_len(disk_size)
        .map_err(scratch_err(&path))?;
    let disk = file.as_file();
    disk.write_all_at(0, &tables.primary)
        .map_err(scratch_err(&path))?;
    disk.write_all_at(tables.backup_lba * ss, &tables.backup)
        .map_err(scratch_err(&path))?;
    let counting = Counting {
        file: disk,
        written: 0.into(),
        total: layout.source().file_bytes(),
        progress: &options.progress,
    };
    layout.write(
        tree,
        &OffsetWriter {
            inner: &counting,
            base: first_lba * ss,
        },
    )?;
    let device = RawFile::open(&path)?;
    let report = PackReport {
        files: layout.source().file_count(),
        dirs: layout.source().dir_count(),
        file_bytes: layout.source().file_bytes(),
        disk_size,
        partition_first_lba: first_lba,
        partition_sectors: volume_sectors,
        cluster_bytes: layout.geometry().cluster_bytes(),
        block_size: 0,
        skipped: Vec::new(),
        skipped_count: 0,
    };
    Ok(PackedDisk {
        file,
        device,
        report,
        progress: options.progress.clone(),
    })
}

/// The entries under `root` that [`HostDirTree`] does not serve (so they
/// are not packed): symbolic links, special files and names that are not
/// UTF-8. Unreadable directories are not descended into.
fn skipped_host_entries(root: &Path) -> (Vec<PathBuf>, u64) {
    let mut named = Vec::new();
    let mut count = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let served =
                entry.file_name().to_str().is_some() && (file_type.is_file() || file_type.is_dir());
            if !served {
                count += 1;
                if named.len() < MAX_SKIPPED_LISTED {
                    named.push(entry.path());
                }
            } else if file_type.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (named, count)
}

fn random_guid() -> [u8; 16] {
    let mut bytes: [u8; 16] = rand::random();
    bytes[7] = (bytes[7] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_block_sizes() {
        assert_eq!(default_block_size(36 << 20), 1 << 20);
        assert_eq!(default_block_size(100 << 20), 2 << 20);
        assert_eq!(default_block_size(1 << 30), 32 << 20);
        assert_eq!(default_block_size(1 << 40), 32 << 20);
    }
}
