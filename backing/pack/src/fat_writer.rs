//! Formats a FAT32 volume holding a copy of a [`FileTree`].
//!
//! Three steps, so a caller can size the volume from the tree before
//! committing to a layout:
//!
//! 1. [`FatSource::scan`] walks the tree, checks every name and size against
//!    what FAT32 can hold and assigns 8.3 aliases;
//! 2. [`FatLayout::new`] picks the geometry for a volume size (cluster size
//!    from the usual Microsoft table, two FATs, data area aligned) and
//!    allocates each directory and file one contiguous cluster run;
//! 3. [`FatLayout::write`] writes boot sector, FSInfo and their backups, both
//!    FATs, every directory and every file through a [`WriteAt`] sink,
//!    streaming file bytes in bounded chunks.
//!
//! Only what is written is touched, so the sink can be a sparse file: free
//! clusters stay holes.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use crate::fat_names::{
    ShortNameAllocator, exact_short_name, long_entries, long_entry_count, long_name_problem,
};
use vmbdev_fs::fat_format::{ATTR_DIRECTORY, DIR_ENTRY_SIZE};
use vmbdev_fs::{EntryKind, FileTree, TreeError, TreePath};

/// Fewest clusters a FAT32 volume may have (fewer makes it FAT16).
pub const MIN_FAT32_CLUSTERS: u64 = 65525;
/// Most clusters a FAT32 volume may have.
pub const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;
/// Largest file FAT32 can hold.
pub const MAX_FAT_FILE_SIZE: u64 = u32::MAX as u64;
/// Most entries (long-name entries included) in one directory.
pub const MAX_DIR_ENTRIES: u64 = 65536;
/// Deepest directory nesting accepted from the source tree.
pub const MAX_DEPTH: usize = 256;
/// Reserved sectors before the first FAT (before alignment padding).
const RESERVED_SECTORS: u64 = 32;
/// Sector of the FSInfo structure and of the backup boot sector.
const FSINFO_SECTOR: u64 = 1;
const BACKUP_BOOT_SECTOR: u64 = 6;
/// End-of-chain mark written in the FAT.
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
/// Media descriptor of a fixed disk.
const MEDIA_FIXED: u8 = 0xF8;
/// Attribute of a regular file (archive bit set, as every OS writes it).
const ATTR_ARCHIVE: u8 = 0x20;
/// Bytes copied from the tree per read.
const COPY_CHUNK: usize = 1 << 20;
/// FAT entries generated per write.
const FAT_CHUNK_ENTRIES: u64 = 1 << 16;

/// Positional writes into the volume (byte offsets from its start).
pub trait WriteAt {
    /// Writes all of `bytes` at `offset`.
    fn write_all_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()>;
}

impl WriteAt for std::fs::File {
    fn write_all_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }
}

/// A [`WriteAt`] that shifts every write by a fixed offset (a partition
/// inside a disk).
#[derive(Debug)]
pub struct OffsetWriter<'a, W: ?Sized> {
    /// Where writes go.
    pub inner: &'a W,
    /// Added to every offset.
    pub base: u64,
}

impl<W: WriteAt + ?Sized> WriteAt for OffsetWriter<'_, W> {
    fn write_all_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all_at(self.base + offset, bytes)
    }
}

/// An error formatting a FAT32 volume.
#[derive(Debug, thiserror::Error)]
pub enum FatWriteError {
    /// The source tree could not be read.
    #[error("reading the source tree: {0}")]
    Source(#[from] TreeError),
    /// A name cannot be stored in FAT.
    #[error("{path}: {reason}")]
    BadName {
        /// Path of the entry.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file is larger than FAT32 allows.
    #[error("{path}: {size} bytes is more than FAT32's limit of {MAX_FAT_FILE_SIZE}")]
    FileTooLarge {
        /// Path of the file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A directory has more entries than FAT allows.
    #[error("{path}: needs {entries} directory entries, more than FAT's {MAX_DIR_ENTRIES}")]
    DirectoryTooLarge {
        /// Path of the directory.
        path: String,
        /// Entries needed (long-name entries included).
        entries: u64,
    },
    /// The source nests directories too deeply.
    #[error("{path}: directories nested deeper than {MAX_DEPTH}")]
    TooDeep {
        /// Path of the directory that is too deep.
        path: String,
    },
    /// The volume size cannot be a FAT32 volume.
    #[error(
        "a volume of {sectors} sectors of {sector_size} bytes has {clusters} clusters of {cluster_bytes} bytes; FAT32 needs {MIN_FAT32_CLUSTERS}..={MAX_FAT32_CLUSTERS}"
    )]
    BadVolumeSize {
        /// Volume size in sectors.
        sectors: u64,
        /// Sector size.
        sector_size: u32,
        /// Cluster size chosen for it.
        cluster_bytes: u64,
        /// Clusters that fit.
        clusters: u64,
    },
    /// The tree does not fit in the volume.
    #[error(
        "the tree needs {needed} clusters of {cluster_bytes} bytes; the volume has {available}"
    )]
    DoesNotFit {
        /// Clusters needed.
        needed: u64,
        /// Clusters available.
        available: u64,
        /// Cluster size.
        cluster_bytes: u64,
    },
    /// A file changed size while it was copied.
    #[error("{path}: file shrank while being copied (expected {expected} bytes, got {got})")]
    Changed {
        /// Path of the file.
        path: String,
        /// Size when scanned.
        expected: u64,
        /// Bytes read.
        got: u64,
    },
    /// Writing the volume failed.
    #[error("writing the volume at offset {offset:#x}: {source}")]
    Io {
        /// Volume offset of the failed write.
        offset: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// The sector size is not 512 or 4096.
    #[error("sector size {0} is not 512 or 4096")]
    BadSectorSize(u32),
}

/// Writes bytes at a volume offset, mapping I/O errors to [`FatWriteError`].
type Put<'a> = dyn Fn(u64, &[u8]) -> Result<(), FatWriteError> + 'a;

/// One entry of a directory to write.
#[derive(Debug, Clone)]
struct Child {
    long_name: String,
    short_name: [u8; 11],
    /// Whether long-name entries precede the short entry.
    has_long_name: bool,
    kind: ChildKind,
    /// First cluster, set by the layout (0 for an empty file).
    first_cluster: u32,
}

#[derive(Debug, Clone, Copy)]
enum ChildKind {
    File { size: u64 },
    Dir { index: usize },
}

/// One directory to write.
#[derive(Debug, Clone)]
struct Dir {
    path: TreePath,
    /// Index of the parent directory (0, the root, for the root itself).
    parent: usize,
    children: Vec<Child>,
    /// Entries including `.`, `..` and long-name entries.
    entry_count: u64,
}

/// A scanned source tree: every name checked and aliased, every size known.
#[derive(Debug, Clone)]
pub struct FatSource {
    /// Directories, the root first, each before its subdirectories.
    dirs: Vec<Dir>,
    file_count: u64,
    file_bytes: u64,
}

impl FatSource {
    /// Walks `tree` from its root and checks that FAT32 can hold it.
    pub fn scan(tree: &dyn FileTree) -> Result<Self, FatWriteError> {
        let mut source = Self {
            dirs: Vec::new(),
            file_count: 0,
            file_bytes: 0,
        };
        source.dirs.push(scan_dir(tree, TreePath::root())?);
        let mut next = 0;
        while next < source.dirs.len() {
            let depth = source.dirs[next].path.components().len();
            let subdirs: Vec<(usize, TreePath)> = source.dirs[next]
                .children
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c.kind, ChildKind::Dir { .. }))
                .map(|(i, c)| (i, source.dirs[next].path.join(&c.long_name)))
                .collect();
            if !subdirs.is_empty() && depth >= MAX_DEPTH {
                return Err(FatWriteError::TooDeep {
                    path: source.dirs[next].path.to_string(),
                });
            }
            for (i, path) in subdirs {
                let index = source.dirs.len();
                let mut dir = scan_dir(tree, path)?;
                dir.parent = next;
                source.dirs.push(dir);
                source.dirs[next].children[i].kind = ChildKind::Dir { index };
            }
            for child in &source.dirs[next].children {
                if let ChildKind::File { size } = child.kind {
                    source.file_count += 1;
                    source.file_bytes += size;
                }
            }
            next += 1;
        }
        Ok(source)
    }

    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.file_count
    }

    /// Number of directories, the root included.
    pub fn dir_count(&self) -> u64 {
        self.dirs.len() as u64
    }

    /// Total bytes of all files.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Clusters of `cluster_bytes` needed for every directory and file.
    pub fn clusters_needed(&self, cluster_bytes: u64) -> u64 {
        self.dirs
            .iter()
            .map(|d| {
                let dir = dir_clusters(d.entry_count, cluster_bytes);
                let files: u64 = d
                    .children
                    .iter()
                    .map(|c| match c.kind {
                        ChildKind::File { size } => size.div_ceil(cluster_bytes),
                        ChildKind::Dir { .. } => 0,
                    })
                    .sum();
                dir + files
            })
            .sum()
    }

    /// A volume size (in sectors) that holds this tree with some slack:
    /// about 5 % plus 1 MiB free, and never below the FAT32 minimum.
    pub fn default_volume_sectors(&self, sector_size: u32) -> u64 {
        let ss = u64::from(sector_size);
        let mut sectors = min_fat32_sectors(sector_size);
        for _ in 0..32 {
            let cluster_bytes = cluster_bytes_for(sectors * ss, sector_size);
            let data = self.clusters_needed(cluster_bytes) * cluster_bytes;
            let wanted_data = data + data / 20 + (1 << 20);
            let spc = cluster_bytes / ss;
            let data_sectors = wanted_data.div_ceil(ss).div_ceil(spc) * spc;
            let fat = (data_sectors / spc + 2).saturating_mul(4).div_ceil(ss);
            let total = RESERVED_SECTORS + 2 * spc.max(8) + 2 * fat + data_sectors;
            if total <= sectors {
                break;
            }
            sectors = total;
        }
        sectors
    }
}

fn dir_clusters(entry_count: u64, cluster_bytes: u64) -> u64 {
    (entry_count * DIR_ENTRY_SIZE as u64)
        .div_ceil(cluster_bytes)
        .max(1)
}

/// Lists one directory of the source and names its entries for FAT.
fn scan_dir(tree: &dyn FileTree, path: TreePath) -> Result<Dir, FatWriteError> {
    let listing = tree.read_dir(&path)?;
    let mut folded = HashSet::new();
    let mut names = ShortNameAllocator::new();
    let mut exact = Vec::with_capacity(listing.len());
    for (name, meta) in &listing {
        let child_path = path.join(name);
        if let Some(reason) = long_name_problem(name) {
            return Err(FatWriteError::BadName {
                path: child_path.to_string(),
                reason,
            });
        }
        let key: String = name.chars().flat_map(char::to_lowercase).collect();
        if !folded.insert(key) {
            return Err(FatWriteError::BadName {
                path: child_path.to_string(),
                reason: "another name in this directory differs only in letter case".into(),
            });
        }
        if meta.kind == EntryKind::File && meta.size > MAX_FAT_FILE_SIZE {
            return Err(FatWriteError::FileTooLarge {
                path: child_path.to_string(),
                size: meta.size,
            });
        }
        exact.push(exact_short_name(name).filter(|raw| names.reserve(*raw)));
    }
    let mut children = Vec::with_capacity(listing.len());
    let mut entry_count: u64 = if path.is_root() { 0 } else { 2 };
    for ((name, meta), exact) in listing.into_iter().zip(exact) {
        let (short_name, has_long_name) = match exact {
            Some(raw) => (raw, false),
            None => {
                let raw = names.alias(&name).ok_or_else(|| FatWriteError::BadName {
                    path: path.join(&name).to_string(),
                    reason: "no free 8.3 alias left in this directory".into(),
                })?;
                (raw, true)
            }
        };
        entry_count += 1;
        if has_long_name {
            entry_count += long_entry_count(&name) as u64;
        }
        let kind = match meta.kind {
            EntryKind::File => ChildKind::File { size: meta.size },
            EntryKind::Directory => ChildKind::Dir { index: 0 },
            // FAT holds only files and directories.
            other => {
                return Err(FatWriteError::BadName {
                    path: path.join(&name).to_string(),
                    reason: format!("a {other:?} entry cannot be stored in FAT"),
                });
            }
        };
        children.push(Child {
            long_name: name,
            short_name,
            has_long_name,
            kind,
            first_cluster: 0,
        });
    }
    if entry_count > MAX_DIR_ENTRIES {
        return Err(FatWriteError::DirectoryTooLarge {
            path: path.to_string(),
            entries: entry_count,
        });
    }
    Ok(Dir {
        path,
        parent: 0,
        children,
        entry_count,
    })
}

/// The cluster size the Microsoft table gives a FAT32 volume of `bytes`:
/// 512 B up to 260 MiB, 4 KiB up to 8 GiB, 8 KiB up to 16 GiB, 16 KiB up
/// to 32 GiB, 32 KiB above; never smaller than a sector.
pub fn cluster_bytes_for(bytes: u64, sector_size: u32) -> u64 {
    const MIB: u64 = 1 << 20;
    let by_table = match bytes {
        b if b <= 260 * MIB => 512,
        b if b <= 8192 * MIB => 4096,
        b if b <= 16384 * MIB => 8192,
        b if b <= 32768 * MIB => 16384,
        _ => 32768,
    };
    by_table.max(u64::from(sector_size))
}

/// Sizes of the regions of a FAT32 volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatGeometry {
    /// Bytes per sector.
    pub sector_size: u32,
    /// Sectors in the volume.
    pub total_sectors: u32,
    /// Sectors per cluster.
    pub sectors_per_cluster: u32,
    /// Sectors before the first FAT.
    pub reserved_sectors: u32,
    /// Sectors of one FAT.
    pub fat_sectors: u32,
    /// Clusters in the data area.
    pub cluster_count: u32,
}

impl FatGeometry {
    /// The geometry of a FAT32 volume of `total_sectors`: cluster size from
    /// [`cluster_bytes_for`], FATs just large enough, the data area aligned
    /// to the cluster size (at least 4 KiB).
    pub fn new(total_sectors: u64, sector_size: u32) -> Result<Self, FatWriteError> {
        if sector_size != 512 && sector_size != 4096 {
            return Err(FatWriteError::BadSectorSize(sector_size));
        }
        let ss = u64::from(sector_size);
        let cluster_bytes = cluster_bytes_for(total_sectors.saturating_mul(ss), sector_size);
        let spc = cluster_bytes / ss;
        let bad = |clusters| FatWriteError::BadVolumeSize {
            sectors: total_sectors,
            sector_size,
            cluster_bytes,
            clusters,
        };
        if total_sectors > u64::from(u32::MAX) {
            return Err(bad(total_sectors / spc));
        }
        // Grow the FAT until it maps every cluster left beside it; each
        // step only shrinks the data area, so this ends.
        let mut fat = 1u64;
        loop {
            let Some(data) = total_sectors.checked_sub(RESERVED_SECTORS + 2 * fat) else {
                return Err(bad(0));
            };
            let needed = ((data / spc + 2) * 4).div_ceil(ss);
            if needed <= fat {
                break;
            }
            fat = needed;
        }
        let align = spc.max(4096 / ss);
        let pad = (align - (RESERVED_SECTORS + 2 * fat) % align) % align;
        let reserved = RESERVED_SECTORS + pad;
        let clusters = total_sectors.saturating_sub(reserved + 2 * fat) / spc;
        if !(MIN_FAT32_CLUSTERS..=MAX_FAT32_CLUSTERS).contains(&clusters) {
            return Err(bad(clusters));
        }
        Ok(Self {
            sector_size,
            total_sectors: total_sectors as u32,
            sectors_per_cluster: spc as u32,
            reserved_sectors: reserved as u32,
            fat_sectors: fat as u32,
            cluster_count: clusters as u32,
        })
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        u64::from(self.sector_size) * u64::from(self.sectors_per_cluster)
    }

    /// Byte offset of FAT copy `copy` (0 or 1).
    fn fat_offset(&self, copy: u64) -> u64 {
        (u64::from(self.reserved_sectors) + copy * u64::from(self.fat_sectors))
            * u64::from(self.sector_size)
    }

    /// Byte offset of `cluster` (≥ 2).
    fn cluster_offset(&self, cluster: u32) -> u64 {
        let data = u64::from(self.reserved_sectors) + 2 * u64::from(self.fat_sectors);
        data * u64::from(self.sector_size) + u64::from(cluster - 2) * self.cluster_bytes()
    }
}

/// The smallest volume (in sectors) that can be FAT32.
pub fn min_fat32_sectors(sector_size: u32) -> u64 {
    let (mut lo, mut hi) = (MIN_FAT32_CLUSTERS, MIN_FAT32_CLUSTERS * 128);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if FatGeometry::new(mid, sector_size).is_ok() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    // Alignment padding can make the test non-monotonic by a few sectors.
    while FatGeometry::new(lo, sector_size).is_err() && lo < MIN_FAT32_CLUSTERS * 256 {
        lo += 1;
    }
    lo
}

/// Options for the volume itself.
#[derive(Debug, Clone)]
pub struct FatOptions {
    /// Volume label (up to 11 upper-case 8.3 characters); `None` writes
    /// `NO NAME` and no label entry.
    pub label: Option<String>,
    /// Volume serial number.
    pub serial: u32,
    /// Sectors before the volume on its disk (the partition start), stored
    /// in the BPB.
    pub hidden_sectors: u32,
    /// Timestamp of every entry, seconds since the Unix epoch (UTC).
    pub timestamp: u64,
}

/// A tree placed on a volume: geometry plus the cluster run of every
/// directory and file.
#[derive(Debug, Clone)]
pub struct FatLayout {
    source: FatSource,
    geometry: FatGeometry,
    /// First cluster and cluster count of each directory.
    dir_runs: Vec<(u32, u32)>,
    /// One past the last allocated cluster.
    next_free: u32,
    label: Option<[u8; 11]>,
    options: FatOptions,
}

impl FatLayout {
    /// Places `source` on a volume of `total_sectors`: the root directory at
    /// cluster 2, then each directory followed by its files.
    pub fn new(
        source: FatSource,
        total_sectors: u64,
        sector_size: u32,
        options: FatOptions,
    ) -> Result<Self, FatWriteError> {
        let geometry = FatGeometry::new(total_sectors, sector_size)?;
        let cluster_bytes = geometry.cluster_bytes();
        // A label takes one more entry in the root, maybe one more cluster.
        let root_entries = source.dirs.first().map_or(0, |d| d.entry_count);
        let label_cluster = if options.label.is_some() {
            dir_clusters(root_entries + 1, cluster_bytes)
                - dir_clusters(root_entries, cluster_bytes)
        } else {
            0
        };
        if options.label.is_some() && root_entries + 1 > MAX_DIR_ENTRIES {
            return Err(FatWriteError::DirectoryTooLarge {
                path: "/".into(),
                entries: root_entries + 1,
            });
        }
        let needed = source.clusters_needed(cluster_bytes) + label_cluster;
        let available = u64::from(geometry.cluster_count);
        if needed > available {
            return Err(FatWriteError::DoesNotFit {
                needed,
                available,
                cluster_bytes,
            });
        }
        let label = match &options.label {
            None => None,
            Some(text) => Some(label_bytes(text)?),
        };
        let mut layout = Self {
            source,
            geometry,
            dir_runs: Vec::new(),
            next_free: 2,
            label,
            options,
        };
        layout.allocate();
        Ok(layout)
    }

    /// The chosen geometry.
    pub fn geometry(&self) -> &FatGeometry {
        &self.geometry
    }

    /// The scanned source.
    pub fn source(&self) -> &FatSource {
        &self.source
    }

    /// Clusters left free.
    pub fn free_clusters(&self) -> u64 {
        u64::from(self.geometry.cluster_count) + 2 - u64::from(self.next_free)
    }

    fn take(&mut self, count: u64) -> u32 {
        let first = self.next_free;
        self.next_free += count as u32;
        first
    }

    fn allocate(&mut self) {
        let cluster_bytes = self.geometry.cluster_bytes();
        let extra = u64::from(self.label.is_some());
        for index in 0..self.source.dirs.len() {
            let entries = self.source.dirs[index].entry_count + if index == 0 { extra } else { 0 };
            let count = dir_clusters(entries, cluster_bytes);
            let first = self.take(count);
            self.dir_runs.push((first, count as u32));
        }
        for index in 0..self.source.dirs.len() {
            for c in 0..self.source.dirs[index].children.len() {
                let child = &self.source.dirs[index].children[c];
                let first = match child.kind {
                    ChildKind::File { size: 0 } => 0,
                    ChildKind::File { size } => self.take(size.div_ceil(cluster_bytes)),
                    ChildKind::Dir { index } => self.dir_runs[index].0,
                };
                self.source.dirs[index].children[c].first_cluster = first;
            }
        }
    }

    /// Writes the whole volume through `out`, reading file bytes from
    /// `tree` (the tree that was scanned).
    pub fn write(&self, tree: &dyn FileTree, out: &dyn WriteAt) -> Result<(), FatWriteError> {
        let put = |offset: u64, bytes: &[u8]| {
            out.write_all_at(offset, bytes)
                .map_err(|source| FatWriteError::Io { offset, source })
        };
        let ss = u64::from(self.geometry.sector_size);
        let boot = self.boot_sector();
        let fsinfo = self.fsinfo_sector();
        let mut third = vec![0u8; ss as usize];
        third[510] = 0x55;
        third[511] = 0xAA;
        for base in [0, BACKUP_BOOT_SECTOR] {
            put(base * ss, &boot)?;
            put((base + FSINFO_SECTOR) * ss, &fsinfo)?;
            put((base + 2) * ss, &third)?;
        }
        self.write_fats(&put)?;
        for (index, dir) in self.source.dirs.iter().enumerate() {
            let bytes = self.dir_bytes(index, dir);
            put(self.geometry.cluster_offset(self.dir_runs[index].0), &bytes)?;
        }
        let mut buf = vec![0u8; COPY_CHUNK];
        for dir in &self.source.dirs {
            for child in &dir.children {
                if let ChildKind::File { size } = child.kind {
                    if size > 0 {
                        let path = dir.path.join(&child.long_name);
                        let at = self.geometry.cluster_offset(child.first_cluster);
                        copy_file(tree, &path, size, at, &mut buf, &put)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn boot_sector(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut b = vec![0u8; g.sector_size as usize];
        b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
        b[3..11].copy_from_slice(b"MSWIN4.1");
        b[11..13].copy_from_slice(&(g.sector_size as u16).to_le_bytes());
        b[13] = g.sectors_per_cluster as u8;
        b[14..16].copy_from_slice(&(g.reserved_sectors as u16).to_le_bytes());
        b[16] = 2; // FAT copies
        b[21] = MEDIA_FIXED;
        b[24..26].copy_from_slice(&63u16.to_le_bytes()); // sectors per track
        b[26..28].copy_from_slice(&255u16.to_le_bytes()); // heads
        b[28..32].copy_from_slice(&self.options.hidden_sectors.to_le_bytes());
        b[32..36].copy_from_slice(&g.total_sectors.to_le_bytes());
        b[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root cluster
        b[48..50].copy_from_slice(&(FSINFO_SECTOR as u16).to_le_bytes());
        b[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
        b[64] = 0x80; // drive number
        b[66] = 0x29; // extended boot signature
        b[67..71].copy_from_slice(&self.options.serial.to_le_bytes());
        b[71..82].copy_from_slice(&self.label.unwrap_or(*b"NO NAME    "));
        b[82..90].copy_from_slice(b"FAT32   ");
        // Not bootable: INT 18h asks the firmware for the next boot device,
        // then halt.
        b[90..94].copy_from_slice(&[0xCD, 0x18, 0xEB, 0xFE]);
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    fn fsinfo_sector(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.geometry.sector_size as usize];
        b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        b[488..492].copy_from_slice(&(self.free_clusters() as u32).to_le_bytes());
        let next = if self.free_clusters() > 0 {
            self.next_free
        } else {
            u32::MAX
        };
        b[492..496].copy_from_slice(&next.to_le_bytes());
        b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
        b
    }

    /// Writes both FATs chunk by chunk: entries 0 and 1, then one chain per
    /// allocated run; the free tail stays unwritten (zero).
    fn write_fats(&self, put: &Put<'_>) -> Result<(), FatWriteError> {
        let mut run_ends: Vec<u32> = self.dir_runs.iter().map(|(f, n)| f + n - 1).collect();
        let cluster_bytes = self.geometry.cluster_bytes();
        for dir in &self.source.dirs {
            for child in &dir.children {
                if let ChildKind::File { size } = child.kind {
                    if size > 0 {
                        run_ends
                            .push(child.first_cluster + size.div_ceil(cluster_bytes) as u32 - 1);
                    }
                }
            }
        }
        run_ends.sort_unstable();
        let end = u64::from(self.next_free);
        let mut ends = run_ends.iter().peekable();
        let mut at = 0u64;
        while at < end {
            let stop = (at + FAT_CHUNK_ENTRIES).min(end);
            let mut chunk = Vec::with_capacity(((stop - at) * 4) as usize);
            for cluster in at..stop {
                let value = match cluster {
                    0 => 0x0FFF_FF00 | u32::from(MEDIA_FIXED),
                    1 => END_OF_CHAIN,
                    c => {
                        if ends.peek().is_some_and(|&&e| u64::from(e) == c) {
                            ends.next();
                            END_OF_CHAIN
                        } else {
                            c as u32 + 1
                        }
                    }
                };
                chunk.extend_from_slice(&value.to_le_bytes());
            }
            for copy in 0..2 {
                put(self.geometry.fat_offset(copy) + at * 4, &chunk)?;
            }
            at = stop;
        }
        Ok(())
    }

    /// The raw bytes of directory `index`, padded to its clusters.
    fn dir_bytes(&self, index: usize, dir: &Dir) -> Vec<u8> {
        let (first, count) = self.dir_runs[index];
        let mut out = Vec::with_capacity(count as usize * self.geometry.cluster_bytes() as usize);
        let (time, date) = fat_time(self.options.timestamp);
        if index == 0 {
            if let Some(label) = self.label {
                let mut e = [0u8; DIR_ENTRY_SIZE];
                e[..11].copy_from_slice(&label);
                e[11] = vmbdev_fs::fat_format::ATTR_VOLUME_ID;
                put_times(&mut e, time, date);
                out.extend_from_slice(&e);
            }
        } else {
            let parent = self.parent_cluster(index);
            out.extend_from_slice(&short_entry(
                b".          ",
                ATTR_DIRECTORY,
                first,
                0,
                (time, date),
            ));
            out.extend_from_slice(&short_entry(
                b"..         ",
                ATTR_DIRECTORY,
                parent,
                0,
                (time, date),
            ));
        }
        for child in &dir.children {
            if child.has_long_name {
                for e in long_entries(&child.long_name, &child.short_name) {
                    out.extend_from_slice(&e);
                }
            }
            let (attr, size) = match child.kind {
                ChildKind::File { size } => (ATTR_ARCHIVE, size as u32),
                ChildKind::Dir { .. } => (ATTR_DIRECTORY, 0),
            };
            out.extend_from_slice(&short_entry(
                &child.short_name,
                attr,
                child.first_cluster,
                size,
                (time, date),
            ));
        }
        out.resize(count as usize * self.geometry.cluster_bytes() as usize, 0);
        out
    }

    /// The cluster `..` of directory `index` points at: 0 for the root.
    fn parent_cluster(&self, index: usize) -> u32 {
        match self.source.dirs[index].parent {
            0 => 0,
            p => self.dir_runs[p].0,
        }
    }
}

fn label_bytes(text: &str) -> Result<[u8; 11], FatWriteError> {
    let upper = text.to_ascii_uppercase();
    let ok = !upper.is_empty()
        && upper.len() <= 11
        && upper.bytes().all(|b| {
            b == b' ' || b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-".contains(&b)
        });
    if !ok {
        return Err(FatWriteError::BadName {
            path: "volume label".into(),
            reason: format!("{text:?} is not 1-11 letters, digits, spaces, '-' or '_'"),
        });
    }
    let mut raw = [b' '; 11];
    raw[..upper.len()].copy_from_slice(upper.as_bytes());
    Ok(raw)
}

fn put_times(e: &mut [u8; DIR_ENTRY_SIZE], time: u16, date: u16) {
    e[14..16].copy_from_slice(&time.to_le_bytes()); // created
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes()); // accessed
    e[22..24].copy_from_slice(&time.to_le_bytes()); // written
    e[24..26].copy_from_slice(&date.to_le_bytes());
}

fn short_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    (time, date): (u16, u16),
) -> [u8; DIR_ENTRY_SIZE] {
    let mut e = [0u8; DIR_ENTRY_SIZE];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    put_times(&mut e, time, date);
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// FAT time and date of a Unix time (UTC), clamped to 1980–2107.
fn fat_time(unix: u64) -> (u16, u16) {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year < 1980 {
        return (0, (1 << 5) | 1);
    }
    if year > 2107 {
        return ((23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31);
    }
    let time = ((secs / 3600) << 11) | (((secs / 60) % 60) << 5) | ((secs % 60) / 2);
    let date = ((year - 1980) << 9) | (month << 5) | day;
    (time as u16, date as u16)
}

fn copy_file(
    tree: &dyn FileTree,
    path: &TreePath,
    size: u64,
    at: u64,
    buf: &mut [u8],
    put: &Put<'_>,
) -> Result<(), FatWriteError> {
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(buf.len() as u64) as usize;
        let n = tree.read_at(path, done, &mut buf[..want])?;
        if n == 0 {
            return Err(FatWriteError::Changed {
                path: path.to_string(),
                expected: size,
                got: done,
            });
        }
        put(at + done, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_sizes_follow_the_microsoft_table() {
        const MIB: u64 = 1 << 20;
        assert_eq!(cluster_bytes_for(100 * MIB, 512), 512);
        assert_eq!(cluster_bytes_for(260 * MIB, 512), 512);
        assert_eq!(cluster_bytes_for(261 * MIB, 512), 4096);
        assert_eq!(cluster_bytes_for(8 << 30, 512), 4096);
        assert_eq!(cluster_bytes_for(12 << 30, 512), 8192);
        assert_eq!(cluster_bytes_for(20 << 30, 512), 16384);
        assert_eq!(cluster_bytes_for(100 << 30, 512), 32768);
        assert_eq!(cluster_bytes_for(100 * MIB, 4096), 4096);
    }

    #[test]
    fn geometry_has_room_for_its_fat_and_aligned_data() {
        let min = min_fat32_sectors(512);
        assert!(FatGeometry::new(min - 1, 512).is_err());
        for total in [min, min + 1, 100_000, 532_480, 532_481, 4_000_000] {
            let g = FatGeometry::new(total, 512).unwrap();
            let data = u64::from(g.reserved_sectors) + 2 * u64::from(g.fat_sectors);
            assert_eq!(data % u64::from(g.sectors_per_cluster.max(8)), 0);
            assert!(u64::from(g.fat_sectors) * 512 >= (u64::from(g.cluster_count) + 2) * 4);
            assert!(data + u64::from(g.cluster_count) * u64::from(g.sectors_per_cluster) <= total);
            assert!(u64::from(g.cluster_count) >= MIN_FAT32_CLUSTERS);
        }
    }

    #[test]
    fn fat_dates() {
        // 2024-02-29 13:45:58 UTC
        let (time, date) = fat_time(1_709_214_358);
        assert_eq!(date, ((2024 - 1980) << 9) | (2 << 5) | 29);
        assert_eq!(time, (13 << 11) | (45 << 5) | 29);
        assert_eq!(fat_time(0).1, (1 << 5) | 1);
    }
}
