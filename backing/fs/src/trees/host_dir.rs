//! A host directory served read-only and confined to its root.
//!
//! Every path is opened one component at a time with `openat(O_NOFOLLOW)`
//! from a descriptor of the root, so neither `..` (already removed by
//! [`TreePath`]) nor a symbolic link can lead outside the root, even if the
//! directory changes while it is served. Symbolic links are refused: they
//! are left out of listings and looking one up gives `NotFound`. Special
//! files (FIFOs, sockets, devices) are treated the same way.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::tree::{FileExtent, FileTree, Metadata, TreeError, TreePath};

/// How many open files are kept for repeated reads.
const HANDLE_CACHE: usize = 16;

/// A read-only, confined view of a host directory.
#[derive(Debug)]
pub struct HostDirTree {
    root: OwnedFd,
    root_path: PathBuf,
    handles: Mutex<Vec<(TreePath, Arc<File>)>>,
}

impl HostDirTree {
    /// Opens `root`, which must be a directory (a symbolic link to one is
    /// accepted here, at the root only).
    pub fn open(root: impl AsRef<Path>) -> Result<Self, TreeError> {
        let root_path = root.as_ref().to_owned();
        let fd = rustix::fs::open(
            &root_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TreeError::Io {
            path: root_path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            root: fd,
            root_path,
            handles: Mutex::new(Vec::new()),
        })
    }

    fn io_error(&self, path: &TreePath, e: Errno) -> TreeError {
        match e {
            Errno::NOENT | Errno::LOOP | Errno::NXIO => TreeError::NotFound(path.to_string()),
            Errno::NOTDIR => TreeError::NotADirectory(path.to_string()),
            Errno::ISDIR => TreeError::IsADirectory(path.to_string()),
            other => TreeError::Io {
                path: format!("{}{}", self.root_path.display(), path),
                message: other.to_string(),
            },
        }
    }

    /// Opens the directory `components` names, one component at a time
    /// without following links.
    fn open_dir(&self, components: &[String], path: &TreePath) -> Result<OwnedFd, TreeError> {
        let mut dir = rustix::io::dup(&self.root).map_err(|e| self.io_error(path, e))?;
        for name in components {
            dir = match rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(next) => next,
                // A link (or special file) on the way is not there at all;
                // only a regular file there means "not a directory".
                Err(Errno::NOTDIR) => {
                    let is_file =
                        rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| {
                                FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                            });
                    return Err(if is_file {
                        TreeError::NotADirectory(path.to_string())
                    } else {
                        TreeError::NotFound(path.to_string())
                    });
                }
                Err(e) => return Err(self.io_error(path, e)),
            };
        }
        Ok(dir)
    }

    fn stat(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        let Some((name, parents)) = path.components().split_last() else {
            return Ok(Metadata::directory());
        };
        let dir = self.open_dir(parents, path)?;
        let st = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io_error(path, e))?;
        metadata_of(FileType::from_raw_mode(st.st_mode), st.st_size as u64)
            .ok_or_else(|| TreeError::NotFound(path.to_string()))
    }

    fn open_file(&self, path: &TreePath) -> Result<Arc<File>, TreeError> {
        if let Ok(handles) = self.handles.lock() {
            if let Some((_, file)) = handles.iter().find(|(p, _)| p == path) {
                return Ok(file.clone());
            }
        }
        let Some((name, parents)) = path.components().split_last() else {
            return Err(TreeError::IsADirectory(path.to_string()));
        };
        let dir = self.open_dir(parents, path)?;
        // O_NONBLOCK so that a FIFO swapped in after the check cannot block.
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_error(path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io_error(path, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(TreeError::IsADirectory(path.to_string())),
            _ => return Err(TreeError::NotFound(path.to_string())),
        }
        let file = Arc::new(File::from(fd));
        if let Ok(mut handles) = self.handles.lock() {
            if handles.len() >= HANDLE_CACHE {
                handles.remove(0);
            }
            handles.push((path.clone(), file.clone()));
        }
        Ok(file)
    }
}

/// Metadata for a regular file or directory; `None` for anything else.
fn metadata_of(file_type: FileType, size: u64) -> Option<Metadata> {
    match file_type {
        FileType::RegularFile => Some(Metadata::file(size)),
        FileType::Directory => Some(Metadata::directory()),
        _ => None,
    }
}

impl FileTree for HostDirTree {
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        self.stat(path)
    }

    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        let file = self.open_file(path)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset.saturating_add(done as u64)) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(TreeError::Io {
                        path: format!("{}{}", self.root_path.display(), path),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(done)
    }

    fn locate(
        &self,
        path: &TreePath,
        offset: u64,
        len: u64,
    ) -> Result<Option<FileExtent<'_>>, TreeError> {
        let file = self.open_file(path)?;
        let size = file
            .metadata()
            .map_err(|e| TreeError::Io {
                path: format!("{}{}", self.root_path.display(), path),
                message: e.to_string(),
            })?
            .len();
        // A host file's bytes are the file's bytes: one run to the end.
        Ok(Some(FileExtent::Shared {
            file,
            offset,
            len: size.saturating_sub(offset).min(len),
        }))
    }

    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        let dir = self.open_dir(path.components(), path)?;
        let reader = rustix::fs::Dir::read_from(&dir).map_err(|e| self.io_error(path, e))?;
        let mut out = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| self.io_error(path, e))?;
            let Ok(name) = entry.file_name().to_str() else {
                tracing::debug!(?entry, "skipping a name that is not UTF-8");
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if let Some(meta) = metadata_of(FileType::from_raw_mode(st.st_mode), st.st_size as u64)
            {
                out.push((name.to_owned(), meta));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
