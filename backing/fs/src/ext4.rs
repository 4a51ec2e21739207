//! ext4 through the `ext4-view` crate, made safe for hostile images.
//!
//! The superblock is checked against the partition size before the crate
//! sees it (the crate sizes its block-group table from the superblock and
//! aborts on a huge one). Files are read through `ext4_view::File` at an
//! offset, never with `Ext4::read`, which loads a whole file into memory.
//! `Ext4` is not `Send`, so it lives on its own thread. Names are
//! case-sensitive.
//!
//! Symbolic links are reported as links with their stored target and never
//! followed at the end of a path: `lookup` and `read_dir` describe the link
//! itself and `read_at` of a link is refused ([`TreeError::Unsupported`]).
//! Links in the middle of a path are resolved here, inside this file
//! system only (never to host paths), one component at a time, so the
//! crate is only ever handed paths whose directories are real ones: it
//! would read a link's whole target into memory at the size the inode
//! claims, and a hostile inode claims gigabytes. A target longer than
//! Linux allows ([`MAX_LINK_TARGET`]) is corrupt and never read; more than
//! [`MAX_LINK_FOLLOWS`] links in one resolution read as absent, as a loop
//! does. FIFOs, sockets and device nodes are listed with their kind and
//! cannot be read.
//!
//! A directory is listed in one pass: each entry's inode is read through
//! the entry itself (`DirEntry::metadata`) instead of looking the child
//! path up again, which would rescan the directory for every entry.

use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use crate::tree::{EntryKind, FileTree, Metadata, Timestamp, TreeError, TreePath};
use crate::worker::Worker;
use vmbdev_block::BlockDevice;
use vmbdev_block::read_bytes;

/// Open files kept so sequential reads continue where the last ended.
const HANDLE_CACHE: usize = 16;

/// Offset of the superblock.
const SUPERBLOCK: u64 = 1024;
/// Incompat feature flag: 64-bit block numbers.
const INCOMPAT_64BIT: u32 = 0x80;
/// Largest number of entries accepted in one directory.
const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Longest link target read: Linux refuses to store one of `PATH_MAX`
/// (4096) bytes or more.
const MAX_LINK_TARGET: u64 = 4095;
/// Most links followed resolving one path (Linux's `MAXSYMLINKS`).
const MAX_LINK_FOLLOWS: usize = 40;

/// A mounted ext4 volume.
pub struct Ext4Tree {
    worker: Worker<State>,
}

struct State {
    fs: Ext4,
    handles: Vec<(TreePath, ext4_view::File)>,
}

/// `Ext4Read` over a block device.
struct DeviceReader(Arc<dyn BlockDevice>);

impl Ext4Read for DeviceReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(read_bytes(&*self.0, start_byte, dst)?)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(what: String) -> TreeError {
    TreeError::Corrupt(format!("ext4: {what}"))
}

/// Checks the superblock fields that size the crate's allocations against
/// the partition.
fn check_superblock(device: &dyn BlockDevice) -> Result<(), TreeError> {
    let mut sb = [0u8; 1024];
    read_bytes(device, SUPERBLOCK, &mut sb)
        .map_err(|e| corrupt(format!("reading superblock: {e}")))?;
    if sb[56..58] != [0x53, 0xEF] {
        return Err(corrupt("no superblock magic at byte 1080".into()));
    }
    let log_block = le_u32(&sb, 24);
    if log_block > 6 {
        return Err(corrupt(format!(
            "s_log_block_size {log_block} at superblock offset 24"
        )));
    }
    let block_size = 1024u64 << log_block;
    let mut blocks = u64::from(le_u32(&sb, 4));
    if le_u32(&sb, 96) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le_u32(&sb, 0x150)) << 32;
    }
    let size = device.size_bytes();
    if blocks.checked_mul(block_size).is_none_or(|b| b > size) {
        return Err(corrupt(format!(
            "{blocks} blocks of {block_size} bytes exceed the partition of {size} bytes"
        )));
    }
    let blocks_per_group = u64::from(le_u32(&sb, 32));
    if !(8..=block_size * 8).contains(&blocks_per_group) {
        return Err(corrupt(format!(
            "s_blocks_per_group {blocks_per_group} at superblock offset 32"
        )));
    }
    let inodes_per_group = u64::from(le_u32(&sb, 40));
    if inodes_per_group == 0 || inodes_per_group > block_size * 8 {
        return Err(corrupt(format!(
            "s_inodes_per_group {inodes_per_group} at superblock offset 40"
        )));
    }
    let groups = blocks.div_ceil(blocks_per_group);
    let inodes = u64::from(le_u32(&sb, 0));
    if inodes > groups.saturating_mul(inodes_per_group) {
        return Err(corrupt(format!(
            "s_inodes_count {inodes} exceeds {groups} groups of {inodes_per_group}"
        )));
    }
    Ok(())
}

fn map_error(path: &TreePath, e: Ext4Error) -> TreeError {
    match e {
        // A link loop, like any link that leads nowhere, reads as absent.
        Ext4Error::NotFound | Ext4Error::MalformedPath | Ext4Error::TooManySymlinks => {
            TreeError::NotFound(path.to_string())
        }
        Ext4Error::IsASpecialFile => TreeError::Unsupported {
            path: path.to_string(),
            what: "is a special file, not a regular file".to_owned(),
        },
        Ext4Error::NotADirectory => TreeError::NotADirectory(path.to_string()),
        Ext4Error::IsADirectory => TreeError::IsADirectory(path.to_string()),
        Ext4Error::Io(e) => TreeError::Io {
            path: path.to_string(),
            message: e.to_string(),
        },
        other => corrupt(format!("{path}: {other}")),
    }
}

/// The crate's path for resolved components: `/` alone for the root.
fn ext4_path(components: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in components {
        out.push(b'/');
        out.extend_from_slice(name);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The crate's path of `name` in the directory at `dir` (a crate path).
fn child_path(dir: &[u8], name: &str) -> Vec<u8> {
    let mut out = dir.to_vec();
    if out != b"/" {
        out.push(b'/');
    }
    out.extend_from_slice(name.as_bytes());
    out
}

/// The components of a link target, last first (the order they are
/// resolved in when popped).
fn target_components(target: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    target
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(<[u8]>::to_vec)
}

fn kind_of(file_type: ext4_view::FileType) -> EntryKind {
    if file_type.is_dir() {
        EntryKind::Directory
    } else if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_fifo() {
        EntryKind::Fifo
    } else if file_type.is_socket() {
        EntryKind::Socket
    } else if file_type.is_char_dev() {
        EntryKind::CharDevice
    } else if file_type.is_block_dev() {
        EntryKind::BlockDevice
    } else {
        EntryKind::File
    }
}

fn timestamp(t: ext4_view::Timestamp) -> Timestamp {
    Timestamp::new(t.seconds(), t.nanoseconds())
}

/// Our metadata for an inode's; a link's target is filled in by the caller.
fn metadata_of(meta: &ext4_view::Metadata) -> Metadata {
    let kind = kind_of(meta.file_type());
    let size = match kind {
        EntryKind::File | EntryKind::Symlink => meta.len(),
        _ => 0,
    };
    let mut out = Metadata::new(kind, size);
    out.modified = Some(timestamp(meta.modified()));
    out.accessed = Some(timestamp(meta.accessed()));
    out.created = meta.created().map(timestamp);
    out.mode = Some(u32::from(meta.mode()));
    out
}

/// Why an entry of `kind` has no bytes to read, or `None` for a file.
pub(crate) fn unreadable(path: &TreePath, kind: EntryKind) -> Option<TreeError> {
    let what = match kind {
        EntryKind::File => return None,
        EntryKind::Directory => return Some(TreeError::IsADirectory(path.to_string())),
        EntryKind::Symlink => "is a symbolic link (links are listed, not followed)",
        EntryKind::Fifo => "is a named pipe (FIFO), not a regular file",
        EntryKind::Socket => "is a socket, not a regular file",
        EntryKind::CharDevice => "is a character device node, not a regular file",
        EntryKind::BlockDevice => "is a block device node, not a regular file",
    };
    Some(TreeError::Unsupported {
        path: path.to_string(),
        what: what.to_owned(),
    })
}

/// Whether a link at `path` with a target of `size` bytes may be read:
/// a longer target is corrupt (Linux never stores one), and reading it
/// would allocate `size` bytes.
fn check_link_size(path: &TreePath, size: u64) -> Result<(), TreeError> {
    if size > MAX_LINK_TARGET {
        return Err(corrupt(format!(
            "{path}: a symbolic link of {size} bytes (at most {MAX_LINK_TARGET})"
        )));
    }
    Ok(())
}

impl State {
    /// `path` in the crate's terms, every link before the last component
    /// resolved (and the last one too when `follow_last`), so the crate
    /// follows no link itself. Components are resolved from the root, each
    /// lookup on a path whose directories are already known to be real.
    fn resolve(&self, path: &TreePath, follow_last: bool) -> Result<Vec<u8>, TreeError> {
        let mut dirs: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<Vec<u8>> = path
            .components()
            .iter()
            .rev()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let mut follows = 0;
        while let Some(name) = pending.pop() {
            match name.as_slice() {
                b"." => continue,
                b".." => {
                    dirs.pop();
                    continue;
                }
                _ => {}
            }
            if pending.is_empty() && !follow_last {
                dirs.push(name);
                break;
            }
            dirs.push(name);
            let here = ext4_path(&dirs);
            let meta = self
                .fs
                .symlink_metadata(here.as_slice())
                .map_err(|e| map_error(path, e))?;
            if meta.is_dir() {
                continue;
            }
            if !meta.is_symlink() {
                if pending.is_empty() {
                    break;
                }
                return Err(TreeError::NotADirectory(path.to_string()));
            }
            follows += 1;
            if follows > MAX_LINK_FOLLOWS {
                return Err(TreeError::NotFound(path.to_string()));
            }
            check_link_size(path, meta.len())?;
            let target = self
                .fs
                .read_link(here.as_slice())
                .map_err(|e| map_error(path, e))?;
            let target: &[u8] = target.as_ref();
            dirs.pop();
            if target.first() == Some(&b'/') {
                dirs.clear();
            }
            pending.extend(target_components(target));
        }
        Ok(ext4_path(&dirs))
    }

    /// Metadata of `path` itself (a final link is not followed), with the
    /// link target read for links, and the crate's path of it.
    fn entry(&self, path: &TreePath) -> Result<(Vec<u8>, Metadata), TreeError> {
        let resolved = self.resolve(path, false)?;
        let meta = self
            .fs
            .symlink_metadata(resolved.as_slice())
            .map_err(|e| map_error(path, e))?;
        let mut out = metadata_of(&meta);
        if out.kind == EntryKind::Symlink {
            out.link_target = self.link_target(path, &resolved, meta.len())?;
        }
        Ok((resolved, out))
    }

    /// The stored target of the link at `path` (`resolved`, `size` bytes
    /// long; fast links keep it in the inode, slow ones in a data block;
    /// the crate reads both). Bytes that are not UTF-8 are shown replaced.
    /// `None` when the target is corrupt: longer than Linux allows, or
    /// refused by the crate, which also refuses targets Linux stores, such
    /// as one with a component over 255 bytes; one such link must not make
    /// its whole directory unlistable.
    fn link_target(
        &self,
        path: &TreePath,
        resolved: &[u8],
        size: u64,
    ) -> Result<Option<String>, TreeError> {
        let read = check_link_size(path, size)
            .and_then(|()| self.fs.read_link(resolved).map_err(|e| map_error(path, e)));
        match read {
            Ok(target) => Ok(Some(String::from_utf8_lossy(target.as_ref()).into_owned())),
            Err(TreeError::Corrupt(e)) => {
                tracing::warn!(%path, error = %e, "symbolic link target not readable");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Ext4Tree {
    /// Mounts the ext4 volume on `device` after checking its superblock.
    pub fn mount(device: Arc<dyn BlockDevice>) -> Result<Self, TreeError> {
        check_superblock(&*device)?;
        let worker = Worker::spawn("ext4", move || {
            let fs = Ext4::load(Box::new(DeviceReader(device)))
                .map_err(|e| map_error(&TreePath::root(), e))?;
            Ok(State {
                fs,
                handles: Vec::new(),
            })
        })?;
        Ok(Self { worker })
    }
}

impl State {
    fn handle(&mut self, path: &TreePath) -> Result<&mut ext4_view::File, TreeError> {
        let index = match self.handles.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                // Checked first: opening follows a final link.
                let (resolved, meta) = self.entry(path)?;
                if let Some(refusal) = unreadable(path, meta.kind) {
                    return Err(refusal);
                }
                let file = self
                    .fs
                    .open(resolved.as_slice())
                    .map_err(|e| map_error(path, e))?;
                if self.handles.len() >= HANDLE_CACHE {
                    self.handles.remove(0);
                }
                self.handles.push((path.clone(), file));
                self.handles.len() - 1
            }
        };
        Ok(&mut self.handles[index].1)
    }
}

impl FileTree for Ext4Tree {
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        let path = path.clone();
        self.worker
            .call(move |state| state.entry(&path).map(|(_, meta)| meta))
    }

    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        let path = path.clone();
        let len = buf.len();
        let bytes = self.worker.call(move |state| {
            let file = state.handle(&path)?;
            if file.metadata().is_dir() {
                return Err(TreeError::IsADirectory(path.to_string()));
            }
            let size = file.metadata().len();
            let want = (len as u64).min(size.saturating_sub(offset)) as usize;
            let mut out = vec![0u8; want];
            if want == 0 {
                return Ok(out);
            }
            if file.position() != offset {
                file.seek_to(offset).map_err(|e| map_error(&path, e))?;
            }
            let mut done = 0;
            while done < want {
                match file
                    .read_bytes(&mut out[done..])
                    .map_err(|e| map_error(&path, e))?
                {
                    0 => break,
                    n => done += n,
                }
            }
            out.truncate(done);
            Ok(out)
        })?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        let path = path.clone();
        self.worker.call(move |state| {
            let resolved = state.resolve(&path, true)?;
            let entries = state
                .fs
                .read_dir(resolved.as_slice())
                .map_err(|e| map_error(&path, e))?;
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| map_error(&path, e))?;
                if out.len() >= MAX_DIR_ENTRIES {
                    return Err(corrupt(format!(
                        "{path}: more than {MAX_DIR_ENTRIES} entries"
                    )));
                }
                let Ok(name) = entry.file_name().as_str().map(str::to_owned) else {
                    continue;
                };
                if name == "." || name == ".." {
                    continue;
                }
                let inode = entry.metadata().map_err(|e| map_error(&path, e))?;
                let mut meta = metadata_of(&inode);
                if meta.kind == EntryKind::Symlink {
                    let child = child_path(&resolved, &name);
                    meta.link_target = state.link_target(&path.join(&name), &child, inode.len())?;
                }
                out.push((name, meta));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
    }
}
