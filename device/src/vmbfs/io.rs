//! The only place the vmbfs host touches the file tree: an [`IoJob`] holds
//! a request that already passed every check that needs no I/O, and
//! [`IoJob::run`] performs the (blocking) tree calls and builds the reply.
//!
//! Jobs are `Send + 'static`, so async glue can run them on a blocking pool
//! and hand the [`IoDone`] back to [`VmbfsHost::finish`](super::VmbfsHost::finish).

use super::buffer::{DirectReadError, GpaDirectBuffer};
use super::reply::Reply;
use super::stats::BadInput;
use std::sync::Arc;
use vmbdev_fs::{EntryKind, FileExtent, FileTree, Metadata, TreeError, TreePath};
use vmbdev_protocol::vmbfs::{FileInfoFlags, FileStatus};
use vmbdev_ring::GuestMemory;

/// Size of the reused buffer that RDMA reads go through on their way from
/// the tree into guest pages, when the tree cannot say where a file's bytes
/// live (with a tree that can, they go from the host file straight into
/// the guest's pages).
pub const BOUNCE_SIZE: usize = 64 * 1024;

/// A validated request waiting for its tree I/O.
pub struct IoJob {
    pub(super) tree: Arc<dyn FileTree>,
    pub(super) work: Work,
    pub(super) bounce: Vec<u8>,
    /// The buffer the reply is built in (the host's, handed back by
    /// [`VmbfsHost::recycle`](super::VmbfsHost::recycle)).
    pub(super) reply: Vec<u8>,
}

impl std::fmt::Debug for IoJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoJob").field("work", &self.work).finish()
    }
}

/// What an [`IoJob`] does.
#[derive(Debug)]
pub(super) enum Work {
    FileInfo {
        path: Arc<TreePath>,
        rdma_enabled: bool,
    },
    Read {
        path: Arc<TreePath>,
        offset: u64,
        byte_count: u32,
    },
    ReadRdma {
        path: Arc<TreePath>,
        file_offset: u64,
        byte_count: u32,
        token_offset: u64,
        target: Arc<GpaDirectBuffer>,
        memory: GuestMemory,
    },
}

/// The result of [`IoJob::run`], to pass to
/// [`VmbfsHost::finish`](super::VmbfsHost::finish).
#[derive(Debug)]
pub struct IoDone {
    pub(super) reply: Reply,
    pub(super) rejected: Option<BadInput>,
    pub(super) bounce: Vec<u8>,
}

/// How a request ended: a status (with what it counts as) or success.
struct Failure {
    status: FileStatus,
    rejected: Option<BadInput>,
}

impl Failure {
    fn status(status: FileStatus) -> Self {
        Self {
            status,
            rejected: None,
        }
    }

    fn from_tree(path: &TreePath, err: &TreeError) -> Self {
        match err {
            // A file used as a directory means the path names nothing.
            TreeError::NotFound(_) | TreeError::NotADirectory(_) => {
                Self::status(FileStatus::NOT_FOUND)
            }
            TreeError::IsADirectory(_) => Self {
                status: FileStatus::ERROR,
                rejected: Some(BadInput::ReadOfDirectory),
            },
            TreeError::Io { .. } | TreeError::Unsupported { .. } | TreeError::Corrupt(_) => {
                tracing::warn!(%path, error = %err, "vmbfs: tree read failed");
                Self::status(FileStatus::ERROR)
            }
        }
    }
}

/// The length a read of `byte_count` bytes at `offset` may return, or the
/// status that answers it without reading: END_OF_FILE only when the read
/// starts at or past the end and asks for bytes; a read that runs past the
/// end is cut to the bytes that exist.
fn read_extent(
    path: &TreePath,
    meta: Metadata,
    offset: u64,
    byte_count: u32,
) -> Result<u64, Failure> {
    if meta.kind == EntryKind::Directory {
        tracing::debug!(%path, "vmbfs: read of a directory");
        return Err(Failure {
            status: FileStatus::ERROR,
            rejected: Some(BadInput::ReadOfDirectory),
        });
    }
    if byte_count == 0 {
        return Ok(0);
    }
    if offset >= meta.size {
        return Err(Failure::status(FileStatus::END_OF_FILE));
    }
    Ok(u64::from(byte_count).min(meta.size - offset))
}

/// Fills `buf` from the file, stopping early only at end of file.
fn read_full(
    tree: &dyn FileTree,
    path: &TreePath,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, Failure> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = tree
            .read_at(path, offset + done as u64, &mut buf[done..])
            .map_err(|e| Failure::from_tree(path, &e))?;
        if n == 0 {
            break;
        }
        // A tree claiming more than it was given is broken; do not trust it.
        done = done
            .checked_add(n)
            .filter(|&d| d <= buf.len())
            .ok_or_else(|| {
                tracing::warn!(%path, n, "vmbfs: tree returned more bytes than asked");
                Failure::status(FileStatus::ERROR)
            })?;
    }
    Ok(done)
}

/// A file shorter than its metadata said: answering SUCCESS with 0 bytes
/// would make the client loop forever, so it is an error.
fn vanished(path: &TreePath, offset: u64) -> Failure {
    tracing::warn!(%path, offset, "vmbfs: file ended before its recorded size");
    Failure::status(FileStatus::ERROR)
}

impl IoJob {
    /// Performs the tree I/O (may block) and builds the reply.
    pub fn run(self) -> IoDone {
        let IoJob {
            tree,
            work,
            mut bounce,
            reply: buffer,
        } = self;
        let tree = &*tree;
        let (reply, rejected) = match work {
            Work::FileInfo { path, rdma_enabled } => file_info(tree, &path, rdma_enabled, buffer),
            Work::Read {
                path,
                offset,
                byte_count,
            } => match read(tree, &path, offset, byte_count, buffer) {
                Ok(reply) => (reply, None),
                Err((f, buffer)) => (Reply::read_status(buffer, f.status), f.rejected),
            },
            Work::ReadRdma {
                path,
                file_offset,
                byte_count,
                token_offset,
                target,
                memory,
            } => {
                let request = RdmaRead {
                    path: &path,
                    file_offset,
                    byte_count,
                    token_offset,
                    target: &target,
                    memory: &memory,
                };
                match request.run(tree, &mut bounce) {
                    Ok(written) => (Reply::rdma(buffer, FileStatus::SUCCESS, written), None),
                    Err(f) => (Reply::rdma(buffer, f.status, 0), f.rejected),
                }
            }
        };
        IoDone {
            reply,
            rejected,
            bounce,
        }
    }
}

fn file_info(
    tree: &dyn FileTree,
    path: &TreePath,
    rdma_enabled: bool,
    buffer: Vec<u8>,
) -> (Reply, Option<BadInput>) {
    match tree.lookup(path) {
        Ok(meta) => {
            let is_dir = meta.kind == EntryKind::Directory;
            let flags = FileInfoFlags::new()
                .with_directory(is_dir)
                .with_rdma_capable(rdma_enabled && !is_dir);
            let size = if is_dir { 0 } else { meta.size };
            (
                Reply::file_info(buffer, FileStatus::SUCCESS, flags, size),
                None,
            )
        }
        Err(e) => {
            let f = Failure::from_tree(path, &e);
            (
                Reply::file_info(buffer, f.status, FileInfoFlags::new(), 0),
                f.rejected,
            )
        }
    }
}

/// A READ_FILE's reply built in `buffer`; on failure the status and the
/// buffer back, for the status reply.
fn read(
    tree: &dyn FileTree,
    path: &TreePath,
    offset: u64,
    byte_count: u32,
    buffer: Vec<u8>,
) -> Result<Reply, (Failure, Vec<u8>)> {
    let extent = tree
        .lookup(path)
        .map_err(|e| Failure::from_tree(path, &e))
        .and_then(|meta| read_extent(path, meta, offset, byte_count));
    // `want <= byte_count <= MAX_READ_SIZE`, checked before the job was made.
    let want = match extent {
        Ok(want) => want as usize,
        Err(f) => return Err((f, buffer)),
    };
    let mut reply = Reply::read_success(buffer, want);
    let n = match read_full(tree, path, offset, reply.data_mut()) {
        Ok(n) => n,
        Err(f) => return Err((f, reply.into_bytes())),
    };
    if n == 0 && want > 0 {
        return Err((vanished(path, offset), reply.into_bytes()));
    }
    reply.truncate_data(n);
    Ok(reply)
}

struct RdmaRead<'a> {
    path: &'a TreePath,
    file_offset: u64,
    byte_count: u32,
    token_offset: u64,
    target: &'a GpaDirectBuffer,
    memory: &'a GuestMemory,
}

impl RdmaRead<'_> {
    /// Copies file bytes into the registered guest pages chunk by chunk
    /// through `bounce`; returns the bytes written.
    fn run(&self, tree: &dyn FileTree, bounce: &mut Vec<u8>) -> Result<u32, Failure> {
        let path = self.path;
        let meta = tree
            .lookup(path)
            .map_err(|e| Failure::from_tree(path, &e))?;
        let want = read_extent(path, meta, self.file_offset, self.byte_count)?;
        let mut done = self.read_direct(tree, want)?;
        if done < want && bounce.len() < BOUNCE_SIZE {
            bounce.resize(BOUNCE_SIZE, 0);
        }
        while done < want {
            let chunk = (want - done).min(BOUNCE_SIZE as u64) as usize;
            let buf = &mut bounce[..chunk];
            let n = read_full(tree, path, self.file_offset + done, buf)?;
            if n == 0 {
                break;
            }
            self.target
                .write_at(self.memory, self.token_offset + done, &buf[..n])
                .map_err(|e| {
                    tracing::debug!(%path, error = %e, "vmbfs: RDMA write into guest failed");
                    Failure {
                        status: FileStatus::ERROR,
                        rejected: Some(BadInput::RdmaOutsideGuestMemory),
                    }
                })?;
            done += n as u64;
            if n < chunk {
                break;
            }
        }
        if done == 0 && want > 0 {
            return Err(vanished(path, self.file_offset));
        }
        // `done <= want <= byte_count`, a u32.
        Ok(done as u32)
    }

    /// Moves the bytes the tree can place straight into the guest pages:
    /// host-file runs by `preadv2` into the pages, zero runs by one fill,
    /// bytes the tree holds in memory by one copy.
    /// Returns the bytes done; the caller copies the rest (all of it when
    /// the tree cannot say where bytes live). Stops at `want`, or early at
    /// the end of the file (then the caller's copy finds the end too).
    fn read_direct(&self, tree: &dyn FileTree, want: u64) -> Result<u64, Failure> {
        let path = self.path;
        let outside = |reason: &str| {
            tracing::debug!(%path, reason, "vmbfs: RDMA write into guest failed");
            Failure {
                status: FileStatus::ERROR,
                rejected: Some(BadInput::RdmaOutsideGuestMemory),
            }
        };
        let mut done = 0u64;
        while done < want {
            let at = self.file_offset + done;
            let extent = match tree.locate(path, at, want - done) {
                Ok(Some(extent)) if !extent.is_empty() => extent,
                Ok(_) => break,
                Err(e) => return Err(Failure::from_tree(path, &e)),
            };
            // A tree claiming more than was asked is cut to what was asked.
            let len = extent.len().min(want - done);
            let target = self.token_offset + done;
            let result = match &extent {
                FileExtent::Shared { file, offset, .. } => {
                    use std::os::fd::AsFd;
                    self.target
                        .read_file_at(self.memory, target, len, file.as_fd(), *offset)
                }
                FileExtent::Borrowed { fd, offset, .. } => {
                    self.target
                        .read_file_at(self.memory, target, len, *fd, *offset)
                }
                FileExtent::Zero { .. } => self
                    .target
                    .fill_zero(self.memory, target, len)
                    .map_err(DirectReadError::from),
                FileExtent::Bytes(bytes) => self
                    .target
                    .write_at(self.memory, target, &bytes[..len as usize])
                    .map_err(DirectReadError::from),
            };
            match result {
                Ok(()) => done += len,
                Err(DirectReadError::EndOfFile { got }) => return Ok(done + got),
                Err(DirectReadError::Buffer(reason)) => return Err(outside(&reason)),
                Err(DirectReadError::Io(message)) => {
                    tracing::warn!(%path, %message, "vmbfs: direct file read failed");
                    return Err(Failure::status(FileStatus::ERROR));
                }
            }
        }
        Ok(done)
    }
}
