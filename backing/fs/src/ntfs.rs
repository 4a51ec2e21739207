//! NTFS through the `ntfs` crate, made safe for hostile images.
//!
//! The boot sector is checked against the partition size before the crate
//! sees it, every crate call runs under `catch_unwind` on the volume's own
//! thread (the crate needs `&mut` access to its reader), and file data is
//! read at an offset through the data attribute, never whole. Lookups are
//! case-insensitive through the volume's `$UpCase` table. Resolved paths are
//! cached as file-record numbers, so a read reopens one record instead of
//! walking the directories again.
//!
//! Metadata comes from `$STANDARD_INFORMATION` (times, attribute bits) and
//! the attribute list (size of the unnamed data stream, names of alternate
//! data streams, which are listed but not served). Sparse runs read as
//! zeros (the crate maps them so); compressed and encrypted data is
//! refused with [`TreeError::Unsupported`].

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::Arc;

use ntfs::NtfsIndex;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileNamespace, NtfsIndexRoot, NtfsStandardInformation};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsFile, NtfsReadSeek};

use crate::tree::{EntryKind, FileTree, Metadata, Timestamp, TreeError, TreePath};
use crate::worker::Worker;
use vmbdev_block::BlockDevice;
use vmbdev_block::{DeviceCursor, read_bytes};

/// Resolved paths remembered.
const PATH_CACHE: usize = 1024;
/// Record numbers below this are NTFS metadata files ($MFT, $Bitmap, ...),
/// which are not served.
const FIRST_USER_RECORD: u64 = 24;
/// Largest index record accepted. NTFS uses 4 KiB; the crate allocates
/// whatever the index root says, so a larger value is refused first.
const MAX_INDEX_RECORD: u32 = 64 * 1024;
/// Most alternate data stream names reported for one file.
const MAX_STREAMS: usize = 256;
/// Largest number of entries accepted in one directory.
const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Most bytes one directory-index walk (a listing, or finding one name)
/// may read. The crate follows subnode pointers as the image gives them
/// and keeps each index record it descends into, so a subnode pointing
/// back up the tree would read and buffer records without end; a listing
/// of [`MAX_DIR_ENTRIES`] short names needs about a tenth of this.
const INDEX_WALK_READ_BUDGET: u64 = 256 << 20;
/// Reads a sound index walk may make beyond its index records.
const INDEX_WALK_SLACK: u64 = 1 << 20;

/// A mounted NTFS volume.
pub struct NtfsTree {
    worker: Worker<State>,
}

struct State {
    ntfs: Ntfs,
    cursor: DeviceCursor,
    paths: HashMap<TreePath, (u64, Metadata)>,
}

fn corrupt(what: String) -> TreeError {
    TreeError::Corrupt(format!("NTFS: {what}"))
}

fn crate_error(path: &TreePath, e: ntfs::NtfsError) -> TreeError {
    corrupt(format!("{path}: {e}"))
}

/// Checks the boot-sector geometry against the partition.
pub(crate) fn check_boot_sector(device: &dyn BlockDevice) -> Result<(), TreeError> {
    let mut b = [0u8; 512];
    read_bytes(device, 0, &mut b).map_err(|e| corrupt(format!("reading boot sector: {e}")))?;
    if &b[3..11] != b"NTFS    " {
        return Err(corrupt("no \"NTFS    \" OEM id at offset 3".into()));
    }
    let bytes_per_sector = u64::from(u16::from_le_bytes([b[11], b[12]]));
    if !(256..=4096).contains(&bytes_per_sector) || !bytes_per_sector.is_power_of_two() {
        return Err(corrupt(format!(
            "bytes per sector {bytes_per_sector} at offset 11"
        )));
    }
    let spc_raw = b[13];
    let sectors_per_cluster = if spc_raw <= 0x80 {
        u64::from(spc_raw)
    } else {
        // Values above 0x80 encode 2^(256 - value).
        let shift = 256 - u32::from(spc_raw);
        if shift > 12 {
            return Err(corrupt(format!(
                "sectors per cluster {spc_raw:#x} at offset 13"
            )));
        }
        1u64 << shift
    };
    if sectors_per_cluster == 0 || !sectors_per_cluster.is_power_of_two() {
        return Err(corrupt(format!(
            "sectors per cluster {spc_raw:#x} at offset 13"
        )));
    }
    let cluster = bytes_per_sector * sectors_per_cluster;
    let total_sectors = u64::from_le_bytes(b[40..48].try_into().unwrap_or([0xFF; 8]));
    let size = device.size_bytes();
    if total_sectors
        .checked_mul(bytes_per_sector)
        .is_none_or(|v| v > size)
    {
        return Err(corrupt(format!(
            "{total_sectors} sectors (offset 40) exceed the partition of {size} bytes"
        )));
    }
    for (at, what) in [(48, "$MFT"), (56, "$MFTMirr")] {
        let lcn = u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0xFF; 8]));
        if lcn.checked_mul(cluster).is_none_or(|v| v >= size) {
            return Err(corrupt(format!(
                "{what} cluster {lcn} at offset {at} outside the partition"
            )));
        }
    }
    let record = b[64] as i8;
    let record_bytes = if record > 0 {
        u64::from(record as u8) * cluster
    } else if record >= -31 {
        1u64 << (-i32::from(record))
    } else {
        0
    };
    if !(256..=65536).contains(&record_bytes) {
        return Err(corrupt(format!(
            "file record size byte {record} at offset 64"
        )));
    }
    Ok(())
}

impl NtfsTree {
    /// Mounts the NTFS volume on `device` after checking its boot sector.
    pub fn mount(device: Arc<dyn BlockDevice>) -> Result<Self, TreeError> {
        check_boot_sector(&*device)?;
        let worker = Worker::spawn("ntfs", move || {
            let mut cursor = DeviceCursor::new(device);
            let root = TreePath::root();
            let mut ntfs = Ntfs::new(&mut cursor).map_err(|e| crate_error(&root, e))?;
            ntfs.read_upcase_table(&mut cursor)
                .map_err(|e| crate_error(&root, e))?;
            Ok(State {
                ntfs,
                cursor,
                paths: HashMap::new(),
            })
        })?;
        Ok(Self { worker })
    }
}

impl State {
    /// The file record and metadata of `path`.
    fn resolve(&mut self, path: &TreePath) -> Result<(u64, Metadata), TreeError> {
        if let Some(hit) = self.paths.get(path) {
            return Ok(hit.clone());
        }
        let mut file = self
            .ntfs
            .root_directory(&mut self.cursor)
            .map_err(|e| crate_error(path, e))?;
        for name in path.components() {
            if !file.is_directory() {
                return Err(TreeError::NotADirectory(path.to_string()));
            }
            let budget = index_walk_budget(&file, &mut self.cursor, path)?;
            let index = file
                .directory_index(&mut self.cursor)
                .map_err(|e| crate_error(path, e))?;
            let mut finder = index.finder();
            self.cursor.limit_reads(budget);
            let found = NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut self.cursor, name);
            self.cursor.limit_reads(u64::MAX);
            let entry = found
                .ok_or_else(|| TreeError::NotFound(path.to_string()))?
                .map_err(|e| crate_error(path, e))?;
            if entry.file_reference().file_record_number() < FIRST_USER_RECORD {
                return Err(TreeError::NotFound(path.to_string()));
            }
            file = entry
                .to_file(&self.ntfs, &mut self.cursor)
                .map_err(|e| crate_error(path, e))?;
        }
        let meta = file_metadata(&file, &mut self.cursor, path)?;
        let hit = (file.file_record_number(), meta);
        if self.paths.len() >= PATH_CACHE {
            self.paths.clear();
        }
        self.paths.insert(path.clone(), hit.clone());
        Ok(hit)
    }

    fn read_at(
        &mut self,
        path: &TreePath,
        offset: u64,
        out: &mut [u8],
    ) -> Result<usize, TreeError> {
        let (record, meta) = self.resolve(path)?;
        if meta.kind == EntryKind::Directory {
            return Err(TreeError::IsADirectory(path.to_string()));
        }
        let want = (out.len() as u64).min(meta.size.saturating_sub(offset)) as usize;
        if want == 0 {
            return Ok(0);
        }
        let file = self
            .ntfs
            .file(&mut self.cursor, record)
            .map_err(|e| crate_error(path, e))?;
        let item = file
            .data(&mut self.cursor, "")
            .ok_or_else(|| corrupt(format!("{path}: no data attribute")))?
            .map_err(|e| crate_error(path, e))?;
        let attribute = item.to_attribute().map_err(|e| crate_error(path, e))?;
        // The crate would hand back compressed or encrypted bytes as they
        // are stored; refuse rather than serve the wrong contents.
        let flags = attribute.flags();
        if flags.intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED) {
            let what = if flags.contains(NtfsAttributeFlags::ENCRYPTED) {
                "is encrypted (EFS); encrypted files are not decoded"
            } else {
                "is compressed (NTFS compression); compressed files are not decoded"
            };
            return Err(TreeError::Unsupported {
                path: path.to_string(),
                what: what.to_owned(),
            });
        }
        let mut value = attribute
            .value(&mut self.cursor)
            .map_err(|e| crate_error(path, e))?;
        value
            .seek(&mut self.cursor, SeekFrom::Start(offset))
            .map_err(|e| crate_error(path, e))?;
        let mut done = 0;
        while done < want {
            match value
                .read(&mut self.cursor, &mut out[done..want])
                .map_err(|e| crate_error(path, e))?
            {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    fn read_dir(&mut self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        let (record, meta) = self.resolve(path)?;
        if meta.kind != EntryKind::Directory {
            return Err(TreeError::NotADirectory(path.to_string()));
        }
        let dir = self
            .ntfs
            .file(&mut self.cursor, record)
            .map_err(|e| crate_error(path, e))?;
        let budget = index_walk_budget(&dir, &mut self.cursor, path)?;
        let index = dir
            .directory_index(&mut self.cursor)
            .map_err(|e| crate_error(path, e))?;
        self.cursor.limit_reads(budget);
        let children = list_index(&index, &mut self.cursor, path);
        self.cursor.limit_reads(u64::MAX);
        let children = children?;
        let mut out = Vec::with_capacity(children.len());
        for (name, number) in children {
            let child = path.join(&name);
            let file = self
                .ntfs
                .file(&mut self.cursor, number)
                .map_err(|e| crate_error(&child, e))?;
            let meta = file_metadata(&file, &mut self.cursor, &child)?;
            if self.paths.len() < PATH_CACHE {
                self.paths.insert(child, (number, meta.clone()));
            }
            out.push((name, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The (name, file record) pairs of a directory index, in index order,
/// without DOS short names and metadata files.
fn list_index(
    index: &NtfsIndex<'_, '_, NtfsFileNameIndex>,
    cursor: &mut DeviceCursor,
    path: &TreePath,
) -> Result<Vec<(String, u64)>, TreeError> {
    let mut entries = index.entries();
    let mut children = Vec::new();
    while let Some(entry) = entries.next(cursor) {
        let entry = entry.map_err(|e| crate_error(path, e))?;
        let Some(key) = entry.key() else { continue };
        let key = key.map_err(|e| crate_error(path, e))?;
        if key.namespace() == NtfsFileNamespace::Dos {
            continue;
        }
        let number = entry.file_reference().file_record_number();
        if number < FIRST_USER_RECORD {
            continue;
        }
        if children.len() >= MAX_DIR_ENTRIES {
            return Err(corrupt(format!(
                "{path}: more than {MAX_DIR_ENTRIES} entries"
            )));
        }
        let name = key.name().to_string_lossy();
        children.push((name, number));
    }
    Ok(children)
}

/// Checks a directory's index and returns the bytes a walk of it may
/// read. Refuses an index root announcing index records larger than
/// [`MAX_INDEX_RECORD`] (the crate allocates that size per record). A
/// sound walk reads each index record once, so twice the index
/// allocation's length plus a slack bounds it; a walk that reads more is
/// going round a cycle of subnode pointers.
fn index_walk_budget(
    file: &NtfsFile<'_>,
    cursor: &mut DeviceCursor,
    path: &TreePath,
) -> Result<u64, TreeError> {
    let mut allocated = 0u64;
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(cursor) {
        let item = item.map_err(|e| crate_error(path, e))?;
        let attribute = item.to_attribute().map_err(|e| crate_error(path, e))?;
        match attribute.ty().map_err(|e| crate_error(path, e))? {
            NtfsAttributeType::IndexAllocation => {
                allocated = allocated.saturating_add(attribute.value_length());
            }
            NtfsAttributeType::IndexRoot => {
                let root = attribute
                    .resident_structured_value::<NtfsIndexRoot<'_>>()
                    .map_err(|e| crate_error(path, e))?;
                let size = root.index_record_size();
                if !(512..=MAX_INDEX_RECORD).contains(&size) || !size.is_power_of_two() {
                    return Err(corrupt(format!(
                        "{path}: index record size {size} in the index root"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(allocated
        .saturating_mul(2)
        .saturating_add(INDEX_WALK_SLACK)
        .min(INDEX_WALK_READ_BUDGET))
}

/// Seconds between 1601-01-01 (the NTFS epoch) and 1970-01-01.
const NT_EPOCH_TO_UNIX: i64 = 11_644_473_600;
/// NTFS time units (100 ns) per second.
const NT_UNITS_PER_SECOND: u64 = 10_000_000;

/// An NTFS time (100 ns units since 1601) as a Unix timestamp; `None` for
/// zero (never set).
fn nt_time(t: ntfs::NtfsTime) -> Option<Timestamp> {
    let units = t.nt_timestamp();
    (units != 0).then(|| {
        Timestamp::new(
            (units / NT_UNITS_PER_SECOND) as i64 - NT_EPOCH_TO_UNIX,
            (units % NT_UNITS_PER_SECOND) as u32 * 100,
        )
    })
}

/// Kind, exact size (from the unnamed data attribute), times, attribute
/// bits and alternate stream names of a file record.
fn file_metadata(
    file: &NtfsFile<'_>,
    cursor: &mut DeviceCursor,
    path: &TreePath,
) -> Result<Metadata, TreeError> {
    let mut meta = if file.is_directory() {
        Metadata::directory()
    } else {
        Metadata::file(0)
    };
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(cursor) {
        let item = item.map_err(|e| crate_error(path, e))?;
        let attribute = item.to_attribute().map_err(|e| crate_error(path, e))?;
        match attribute.ty() {
            Ok(NtfsAttributeType::StandardInformation) => {
                let info = attribute
                    .resident_structured_value::<NtfsStandardInformation>()
                    .map_err(|e| crate_error(path, e))?;
                meta.created = nt_time(info.creation_time());
                meta.modified = nt_time(info.modification_time());
                meta.accessed = nt_time(info.access_time());
                meta.attributes = Some(info.file_attributes().bits());
            }
            Ok(NtfsAttributeType::Data) => {
                let name = attribute.name().map_err(|e| crate_error(path, e))?;
                if name.is_empty() {
                    if !meta.kind.is_dir() {
                        meta.size = attribute.value_length();
                    }
                } else if meta.streams.len() < MAX_STREAMS {
                    let name = name.to_string_lossy();
                    if !meta.streams.contains(&name) {
                        meta.streams.push(name);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

impl FileTree for NtfsTree {
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        let path = path.clone();
        self.worker.call(move |state| Ok(state.resolve(&path)?.1))
    }

    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        let path = path.clone();
        let len = buf.len();
        let bytes = self.worker.call(move |state| {
            let mut out = vec![0u8; len];
            let n = state.read_at(&path, offset, &mut out)?;
            out.truncate(n);
            Ok(out)
        })?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        let path = path.clone();
        self.worker.call(move |state| state.read_dir(&path))
    }
}
