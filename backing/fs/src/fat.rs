//! A read-only FAT12/16/32 reader with long file names.
//!
//! Written here rather than borrowed so that every on-disk value is checked
//! before use: the BPB against the partition size, every cluster number
//! against the cluster count, every chain against a length bound (so a
//! looping chain ends), directory sizes against a fixed entry limit. Names
//! are matched case-insensitively (Unicode case folding, as Windows
//! compares names), by long name or 8.3 alias. Short names are decoded
//! through the OEM code page given at mount (CP437 by default), including
//! the 0x05 stand-in for a leading 0xE5 and the NT lower-case flags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::codepage::CodePage;
use crate::fat_format::{
    ATTR_DIRECTORY, ATTR_LONG_NAME, ATTR_VOLUME_ID, DIR_ENTRY_SIZE, FatType, ShortEntry,
    fsinfo_free_clusters, long_name_units, short_name_checksum,
};
use crate::names_equal_ignore_case;
use crate::tree::{FileExtent, FileTree, Metadata, TreeError, TreePath};
use vmbdev_block::read_bytes;
use vmbdev_block::{BlockDevice, Extent};
use vmbdev_partition::boot_sector::Bpb;

/// Largest number of entries accepted in one directory (the FAT spec's
/// limit).
const MAX_DIR_ENTRIES: usize = 65536;
/// Directory listings kept in memory.
const DIR_CACHE: usize = 64;
/// Files whose last read position is remembered.
const HANDLE_CACHE: usize = 32;
/// Bytes of the FAT read at once and kept, so following a chain does not
/// read the device once per cluster.
const FAT_WINDOW: u64 = 4096;

/// One listed directory entry.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    short_name: String,
    is_dir: bool,
    first_cluster: u32,
    size: u32,
    /// The directory entry's fields for [`Metadata`].
    short: ShortEntry,
}

/// Where a directory's entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DirLocation {
    /// The fixed FAT12/16 root region.
    FixedRoot,
    /// A cluster chain.
    Chain(u32),
}

/// A mounted FAT volume.
pub struct FatTree {
    device: Arc<dyn BlockDevice>,
    fat_type: FatType,
    cluster_bytes: u64,
    /// Byte offset of the first FAT.
    fat_offset: u64,
    /// Byte offset and length of the FAT12/16 root directory.
    root_offset: u64,
    root_bytes: u64,
    /// Byte offset of cluster 2.
    data_offset: u64,
    cluster_count: u32,
    root_cluster: u32,
    dir_cache: Mutex<HashMap<DirLocation, Arc<Vec<Entry>>>>,
    /// first cluster → (cluster index, cluster number) last reached.
    handles: Mutex<HashMap<u32, (u64, u32)>>,
    /// Byte length of one FAT copy.
    fat_bytes: u64,
    /// The last FAT window read: its offset inside the FAT and its bytes.
    fat_window: Mutex<Option<(u64, Vec<u8>)>>,
    /// How short-name bytes above 0x7F are read.
    code_page: CodePage,
    /// Byte offset of the FAT32 FSInfo sector, when the BPB names one.
    fsinfo_offset: Option<u64>,
}

fn corrupt(what: String) -> TreeError {
    TreeError::Corrupt(format!("FAT: {what}"))
}

fn io(path: &TreePath, e: impl std::fmt::Display) -> TreeError {
    TreeError::Io {
        path: path.to_string(),
        message: e.to_string(),
    }
}

impl FatTree {
    /// Mounts the FAT volume on `device`, checking the BPB against the
    /// device size; short names are read as CP437.
    pub fn mount(device: Arc<dyn BlockDevice>) -> Result<Self, TreeError> {
        Self::mount_with(device, CodePage::default())
    }

    /// Mounts the FAT volume on `device`, reading short names through
    /// `code_page`.
    pub fn mount_with(
        device: Arc<dyn BlockDevice>,
        code_page: CodePage,
    ) -> Result<Self, TreeError> {
        let mut boot = [0u8; 512];
        read_bytes(&*device, 0, &mut boot).map_err(|e| io(&TreePath::root(), e))?;
        let bpb = Bpb::parse(&boot)
            .map_err(|(at, what)| corrupt(format!("boot sector offset {at}: {what}")))?;
        let bps = u64::from(bpb.bytes_per_sector);
        let total = u64::from(bpb.total_sectors);
        if total * bps > device.size_bytes() {
            return Err(corrupt(format!(
                "volume of {total} sectors of {bps} bytes is larger than its partition of {} bytes",
                device.size_bytes()
            )));
        }
        let root_dir_sectors = (u64::from(bpb.root_entries) * 32).div_ceil(bps);
        let fat_sectors = u64::from(bpb.fat_count) * u64::from(bpb.fat_sectors);
        let data_start = u64::from(bpb.reserved_sectors) + fat_sectors + root_dir_sectors;
        let Some(data_sectors) = total.checked_sub(data_start).filter(|&d| d > 0) else {
            return Err(corrupt(format!(
                "metadata of {data_start} sectors leaves no data area in {total} sectors"
            )));
        };
        let cluster_count = data_sectors / u64::from(bpb.sectors_per_cluster);
        let fat_type = match cluster_count {
            0 => return Err(corrupt("no clusters".into())),
            1..4085 => FatType::Fat12,
            4085..65525 => FatType::Fat16,
            _ => FatType::Fat32,
        };
        let entry_bits = match fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        if (cluster_count + 2) * entry_bits > u64::from(bpb.fat_sectors) * bps * 8 {
            return Err(corrupt(format!(
                "FAT of {} sectors cannot map {cluster_count} clusters",
                bpb.fat_sectors
            )));
        }
        if cluster_count > 0x0FFF_FFF5 {
            return Err(corrupt(format!("{cluster_count} clusters")));
        }
        let tree = Self {
            device,
            fat_type,
            cluster_bytes: bps * u64::from(bpb.sectors_per_cluster),
            fat_offset: u64::from(bpb.reserved_sectors) * bps,
            root_offset: (u64::from(bpb.reserved_sectors) + fat_sectors) * bps,
            root_bytes: root_dir_sectors * bps,
            data_offset: data_start * bps,
            cluster_count: cluster_count as u32,
            root_cluster: bpb.root_cluster,
            dir_cache: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            fat_bytes: u64::from(bpb.fat_sectors) * bps,
            fat_window: Mutex::new(None),
            code_page,
            fsinfo_offset: fsinfo_sector(&boot, fat_type)
                .filter(|&sector| sector > 0 && sector < bpb.reserved_sectors)
                .map(|sector| u64::from(sector) * bps),
        };
        if fat_type == FatType::Fat32 {
            tree.check_cluster(bpb.root_cluster, "root cluster")?;
        } else if bpb.root_entries == 0 {
            return Err(corrupt(
                "FAT12/16 volume with no root-directory entries".into(),
            ));
        }
        tracing::debug!(?fat_type, cluster_count, "mounted FAT volume");
        Ok(tree)
    }

    /// The FAT variant of this volume.
    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_bytes
    }

    /// Number of data clusters.
    pub fn cluster_count(&self) -> u32 {
        self.cluster_count
    }

    /// Free clusters: the FSInfo count when its signatures are right and
    /// the count is possible, otherwise counted in the FAT.
    pub fn free_clusters(&self) -> Result<u32, TreeError> {
        if let Some(offset) = self.fsinfo_offset {
            let mut sector = [0u8; 512];
            if read_bytes(&*self.device, offset, &mut sector).is_ok() {
                if let Some(free) = fsinfo_free_clusters(&sector, self.cluster_count) {
                    return Ok(free);
                }
            }
        }
        self.count_free_clusters()
    }

    /// Counts zero FAT entries for clusters 2.. in one pass over the FAT.
    pub fn count_free_clusters(&self) -> Result<u32, TreeError> {
        let entry_bits: u64 = match self.fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        let last = u64::from(self.cluster_count) + 2;
        let needed = (last * entry_bits).div_ceil(8).min(self.fat_bytes);
        let mut fat = vec![0u8; needed as usize];
        read_bytes(&*self.device, self.fat_offset, &mut fat)
            .map_err(|e| corrupt(format!("reading the FAT: {e}")))?;
        let entry = |c: u64| -> u32 {
            match self.fat_type {
                FatType::Fat12 => {
                    let at = (c + c / 2) as usize;
                    let pair = u32::from(fat[at]) | u32::from(fat[at + 1]) << 8;
                    if c % 2 == 1 { pair >> 4 } else { pair & 0xFFF }
                }
                FatType::Fat16 => {
                    let at = (c * 2) as usize;
                    u32::from(u16::from_le_bytes([fat[at], fat[at + 1]]))
                }
                FatType::Fat32 => {
                    let at = (c * 4) as usize;
                    u32::from_le_bytes([fat[at], fat[at + 1], fat[at + 2], fat[at + 3]])
                        & 0x0FFF_FFFF
                }
            }
        };
        Ok((2..last).filter(|&c| entry(c) == 0).count() as u32)
    }

    fn check_cluster(&self, cluster: u32, what: &str) -> Result<(), TreeError> {
        if cluster < 2 || cluster - 2 >= self.cluster_count {
            return Err(corrupt(format!(
                "{what} {cluster} outside clusters 2..{}",
                u64::from(self.cluster_count) + 2
            )));
        }
        Ok(())
    }

    /// The FAT entry of `cluster`: `Some(next)` or `None` at end of chain.
    fn next_cluster(&self, cluster: u32) -> Result<Option<u32>, TreeError> {
        self.check_cluster(cluster, "cluster")?;
        let c = u64::from(cluster);
        let (offset, width) = match self.fat_type {
            FatType::Fat12 => (c + c / 2, 2),
            FatType::Fat16 => (c * 2, 2),
            FatType::Fat32 => (c * 4, 4),
        };
        let mut raw = [0u8; 4];
        self.read_fat(offset, &mut raw[..width])
            .map_err(|e| corrupt(format!("reading FAT entry {cluster}: {e}")))?;
        let value = u32::from_le_bytes(raw);
        let (next, end) = match self.fat_type {
            FatType::Fat12 => {
                let v = if cluster % 2 == 1 {
                    value >> 4
                } else {
                    value & 0xFFF
                };
                (v & 0xFFF, 0xFF8)
            }
            FatType::Fat16 => (value & 0xFFFF, 0xFFF8),
            FatType::Fat32 => (value & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        if next >= end {
            return Ok(None);
        }
        if self.check_cluster(next, "").is_err() {
            // Worded here, not up front: this runs for every cluster read.
            self.check_cluster(next, &format!("FAT entry of cluster {cluster} links to"))?;
        }
        Ok(Some(next))
    }

    /// Reads bytes at `offset` inside the first FAT through the window.
    fn read_fat(&self, offset: u64, out: &mut [u8]) -> Result<(), vmbdev_block::BlockError> {
        let start = offset - offset % FAT_WINDOW;
        let end = offset + out.len() as u64;
        let window_len = FAT_WINDOW.min(self.fat_bytes - start);
        if end > start + window_len {
            // An entry straddling the window edge (FAT12): read it directly.
            return read_bytes(&*self.device, self.fat_offset + offset, out);
        }
        let mut window = self
            .fat_window
            .lock()
            .map_err(|_| vmbdev_block::BlockError::Corrupt("FAT window lock poisoned".into()))?;
        if window.as_ref().is_none_or(|(at, _)| *at != start) {
            let mut bytes = vec![0u8; window_len as usize];
            read_bytes(&*self.device, self.fat_offset + start, &mut bytes)?;
            *window = Some((start, bytes));
        }
        if let Some((_, bytes)) = window.as_ref() {
            let within = (offset - start) as usize;
            out.copy_from_slice(&bytes[within..within + out.len()]);
        }
        Ok(())
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_bytes
    }

    /// Reads a directory's raw bytes cluster by cluster and decodes them.
    fn read_dir_entries(&self, location: DirLocation) -> Result<Arc<Vec<Entry>>, TreeError> {
        if let Ok(cache) = self.dir_cache.lock() {
            if let Some(entries) = cache.get(&location) {
                return Ok(entries.clone());
            }
        }
        let mut decoder = DirDecoder::new(self.fat_type == FatType::Fat32, self.code_page);
        match location {
            DirLocation::FixedRoot => {
                let mut raw = vec![0u8; self.root_bytes as usize];
                read_bytes(&*self.device, self.root_offset, &mut raw)
                    .map_err(|e| corrupt(format!("reading root directory: {e}")))?;
                decoder.feed(&raw)?;
            }
            DirLocation::Chain(first) => {
                let mut raw = vec![0u8; self.cluster_bytes as usize];
                let mut cluster = Some(first);
                let mut visited = 0u64;
                while let Some(c) = cluster {
                    visited += 1;
                    if visited > u64::from(self.cluster_count) {
                        return Err(corrupt(format!(
                            "directory chain from cluster {first} loops"
                        )));
                    }
                    self.check_cluster(c, "directory cluster")?;
                    read_bytes(&*self.device, self.cluster_offset(c), &mut raw)
                        .map_err(|e| corrupt(format!("reading directory cluster {c}: {e}")))?;
                    if decoder.feed(&raw)? {
                        break;
                    }
                    cluster = self.next_cluster(c)?;
                }
            }
        }
        let entries = Arc::new(decoder.entries);
        if let Ok(mut cache) = self.dir_cache.lock() {
            if cache.len() >= DIR_CACHE {
                cache.clear();
            }
            cache.insert(location, entries.clone());
        }
        Ok(entries)
    }

    fn root_location(&self) -> DirLocation {
        match self.fat_type {
            FatType::Fat32 => DirLocation::Chain(self.root_cluster),
            _ => DirLocation::FixedRoot,
        }
    }

    fn dir_location(&self, entry: &Entry) -> Result<DirLocation, TreeError> {
        if entry.first_cluster == 0 {
            // ".." of a first-level directory points to cluster 0, but real
            // directories never start there.
            return Err(corrupt(format!(
                "directory {:?} starts at cluster 0",
                entry.name
            )));
        }
        Ok(DirLocation::Chain(entry.first_cluster))
    }

    /// Resolves `path` to its entry; `None` for the root.
    fn resolve(&self, path: &TreePath) -> Result<Option<Entry>, TreeError> {
        let mut location = self.root_location();
        let mut found = None;
        for (depth, name) in path.components().iter().enumerate() {
            if depth > 0 {
                let parent: &Entry = found
                    .as_ref()
                    .ok_or_else(|| TreeError::NotFound(path.to_string()))?;
                if !parent.is_dir {
                    return Err(TreeError::NotADirectory(path.to_string()));
                }
                location = self.dir_location(parent)?;
            }
            let entries = self.read_dir_entries(location)?;
            let entry = entries
                .iter()
                .find(|e| names_equal_ignore_case(&e.name, name))
                .or_else(|| {
                    entries
                        .iter()
                        .find(|e| names_equal_ignore_case(&e.short_name, name))
                })
                .ok_or_else(|| TreeError::NotFound(path.to_string()))?;
            found = Some(entry.clone());
        }
        Ok(found)
    }

    /// The file entry at `path`; directories are refused.
    fn file_entry(&self, path: &TreePath) -> Result<Entry, TreeError> {
        match self.resolve(path)? {
            Some(entry) if !entry.is_dir => Ok(entry),
            _ => Err(TreeError::IsADirectory(path.to_string())),
        }
    }

    /// How many of `len` bytes from `offset` the file holds.
    fn bytes_left(&self, entry: &Entry, offset: u64, len: u64) -> u64 {
        len.min(u64::from(entry.size).saturating_sub(offset))
    }

    /// The volume byte offset of file byte `offset` and how many of the
    /// next `want` bytes follow it contiguously on the volume: clusters
    /// that follow each other make one run, read in one request.
    fn run_at(&self, entry: &Entry, offset: u64, want: u64) -> Result<(u64, u64), TreeError> {
        let index = offset / self.cluster_bytes;
        let cluster = self.seek_cluster(entry.first_cluster, index)?;
        let within = offset % self.cluster_bytes;
        let mut n = (self.cluster_bytes - within).min(want);
        let mut last = cluster;
        while n < want && self.next_cluster(last)? == Some(last + 1) {
            last += 1;
            n = (n + self.cluster_bytes).min(want);
        }
        if last != cluster {
            self.remember(entry.first_cluster, index + u64::from(last - cluster), last);
        }
        Ok((self.cluster_offset(cluster) + within, n))
    }

    /// The cluster holding byte `offset` of a file starting at `first`,
    /// resuming from the last position reached in this file when possible.
    fn seek_cluster(&self, first: u32, index: u64) -> Result<u32, TreeError> {
        self.check_cluster(first, "first cluster of a file")?;
        let (mut at, mut cluster) = (0u64, first);
        if let Ok(handles) = self.handles.lock() {
            if let Some(&(i, c)) = handles.get(&first) {
                if i <= index {
                    (at, cluster) = (i, c);
                }
            }
        }
        if index > u64::from(self.cluster_count) {
            return Err(corrupt(format!(
                "file at cluster {first} longer than the volume"
            )));
        }
        while at < index {
            cluster = self.next_cluster(cluster)?.ok_or_else(|| {
                corrupt(format!(
                    "chain from cluster {first} ends before its file size"
                ))
            })?;
            at += 1;
        }
        self.remember(first, index, cluster);
        Ok(cluster)
    }

    /// Notes that cluster `index` of the chain from `first` is `cluster`,
    /// so the next seek along it starts there.
    fn remember(&self, first: u32, index: u64, cluster: u32) {
        if let Ok(mut handles) = self.handles.lock() {
            if handles.len() >= HANDLE_CACHE && !handles.contains_key(&first) {
                handles.clear();
            }
            handles.insert(first, (index, cluster));
        }
    }
}

fn metadata(entry: &Entry) -> Metadata {
    let mut meta = if entry.is_dir {
        Metadata::directory()
    } else {
        Metadata::file(u64::from(entry.size))
    };
    meta.created = entry.short.created;
    meta.modified = entry.short.modified;
    meta.accessed = entry.short.accessed;
    meta.attributes = Some(u32::from(entry.short.attributes));
    meta
}

/// The FSInfo sector number a FAT32 boot sector names (offset 48).
fn fsinfo_sector(boot: &[u8; 512], fat_type: FatType) -> Option<u32> {
    (fat_type == FatType::Fat32).then(|| u32::from(u16::from_le_bytes([boot[48], boot[49]])))
}

impl FileTree for FatTree {
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        Ok(match self.resolve(path)? {
            None => Metadata::directory(),
            Some(entry) => metadata(&entry),
        })
    }

    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        let entry = self.file_entry(path)?;
        let want = self.bytes_left(&entry, offset, buf.len() as u64) as usize;
        let mut done = 0usize;
        while done < want {
            let (at, n) = self.run_at(&entry, offset + done as u64, (want - done) as u64)?;
            let n = n as usize;
            read_bytes(&*self.device, at, &mut buf[done..done + n]).map_err(|e| io(path, e))?;
            done += n;
        }
        Ok(done)
    }

    fn locate(
        &self,
        path: &TreePath,
        offset: u64,
        len: u64,
    ) -> Result<Option<FileExtent<'_>>, TreeError> {
        let entry = self.file_entry(path)?;
        let want = self.bytes_left(&entry, offset, len);
        if want == 0 {
            return Ok(Some(FileExtent::Zero { len: 0 }));
        }
        let (at, n) = self.run_at(&entry, offset, want)?;
        // The device maps whole sectors: ask for those covering the run,
        // then cut the answer back to the run's bytes.
        let sector = u64::from(self.device.logical_sector_size());
        let skip = at % sector;
        let sectors = (skip + n).div_ceil(sector);
        let extent = self
            .device
            .locate(at / sector, sectors)
            .map_err(|e| io(path, e))?;
        let mapped = (extent.sectors() * sector).saturating_sub(skip).min(n);
        if mapped == 0 {
            return Ok(None);
        }
        Ok(match extent {
            Extent::File { fd, offset, .. } => Some(FileExtent::Borrowed {
                fd,
                offset: offset + skip,
                len: mapped,
            }),
            Extent::Zero { .. } => Some(FileExtent::Zero { len: mapped }),
            Extent::Memory { .. } | Extent::Copy { .. } => None,
        })
    }

    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        let location = match self.resolve(path)? {
            None => self.root_location(),
            Some(entry) if entry.is_dir => self.dir_location(&entry)?,
            Some(_) => return Err(TreeError::NotADirectory(path.to_string())),
        };
        let entries = self.read_dir_entries(location)?;
        Ok(entries
            .iter()
            .map(|e| (e.name.clone(), metadata(e)))
            .collect())
    }
}

/// Decodes raw directory bytes into entries, joining long-name fragments to
/// the short entry that follows them.
struct DirDecoder {
    fat32: bool,
    code_page: CodePage,
    entries: Vec<Entry>,
    /// Long-name fragments by sequence number (1-based), the expected count
    /// and checksum.
    long_parts: Vec<Option<[u16; 13]>>,
    long_checksum: u8,
    seen: usize,
}

impl DirDecoder {
    fn new(fat32: bool, code_page: CodePage) -> Self {
        Self {
            fat32,
            code_page,
            entries: Vec::new(),
            long_parts: Vec::new(),
            long_checksum: 0,
            seen: 0,
        }
    }

    /// Feeds raw entries; returns true at the end-of-directory marker.
    fn feed(&mut self, raw: &[u8]) -> Result<bool, TreeError> {
        for chunk in raw.chunks_exact(DIR_ENTRY_SIZE) {
            let mut e = [0u8; DIR_ENTRY_SIZE];
            e.copy_from_slice(chunk);
            self.seen += 1;
            if self.seen > MAX_DIR_ENTRIES {
                return Err(corrupt(format!(
                    "directory with more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            match e[0] {
                0x00 => return Ok(true),
                0xE5 => self.long_parts.clear(),
                _ if e[11] & 0x3F == ATTR_LONG_NAME => self.long_fragment(&e),
                _ => self.short_entry(&e),
            }
        }
        Ok(false)
    }

    fn long_fragment(&mut self, e: &[u8; DIR_ENTRY_SIZE]) {
        let seq = usize::from(e[0] & 0x1F);
        if e[0] & 0x40 != 0 {
            self.long_parts = vec![None; seq];
            self.long_checksum = e[13];
        }
        if seq == 0 || seq > self.long_parts.len() || e[13] != self.long_checksum {
            self.long_parts.clear();
            return;
        }
        self.long_parts[seq - 1] = Some(long_name_units(e));
    }

    fn short_entry(&mut self, e: &[u8; DIR_ENTRY_SIZE]) {
        let long = std::mem::take(&mut self.long_parts);
        if e[11] & ATTR_VOLUME_ID != 0 {
            return;
        }
        let short = ShortEntry::parse(e, self.fat32, self.code_page);
        if short.name == "." || short.name == ".." {
            return;
        }
        let long_name = if !long.is_empty()
            && long.iter().all(Option::is_some)
            && short_name_checksum(&e[..11]) == self.long_checksum
        {
            let units: Vec<u16> = long
                .iter()
                .flatten()
                .flat_map(|part| part.iter().copied())
                .take_while(|&u| u != 0 && u != 0xFFFF)
                .collect();
            Some(String::from_utf16_lossy(&units))
        } else {
            None
        };
        self.entries.push(Entry {
            name: long_name.unwrap_or_else(|| short.name.clone()),
            short_name: short.name.clone(),
            is_dir: short.attributes & ATTR_DIRECTORY != 0,
            first_cluster: short.first_cluster,
            size: short.size,
            short,
        });
    }
}
