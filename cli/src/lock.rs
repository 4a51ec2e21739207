//! Shared read locks on the images a command reads, in the byte-range
//! scheme QEMU's file driver uses, so `vmbdev` and QEMU tools see each
//! other.
//!
//! QEMU takes open-file-description (OFD) read locks on single bytes: byte
//! `100 + n` while it holds permission `n`, byte `200 + n` while it does not
//! let others hold permission `n`. Permission 0 is "consistent read", 1 is
//! "write" and 3 is "resize". Before using a permission, or while not
//! sharing one, a process tests whether another holds the opposite byte.
//!
//! A reading `vmbdev` holds bytes 100 (reads), 201 (lets nobody write) and
//! 203 (lets nobody resize), then refuses the image when another process
//! holds byte 101 (it writes) or 103 (it resizes) or 200 (it lets nobody
//! read). Locks are taken before testing, so of two processes racing for
//! the same image at least one sees the other.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;

/// Byte QEMU holds while it reads the image.
const PERM_READ: i64 = 100;
/// Byte QEMU holds while it writes the image.
const PERM_WRITE: i64 = 101;
/// Byte QEMU holds while it may resize the image.
const PERM_RESIZE: i64 = 103;
/// Byte held by a process that lets nobody read the image.
const UNSHARED_READ: i64 = 200;
/// Byte held by a process that lets nobody write the image.
const UNSHARED_WRITE: i64 = 201;
/// Byte held by a process that lets nobody resize the image.
const UNSHARED_RESIZE: i64 = 203;

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process writes (or resizes) the image.
    #[error(
        "{}: in use: another process (such as qemu-nbd or a VM) has it open for writing",
        path.display()
    )]
    Writer {
        /// The image.
        path: PathBuf,
    },
    /// Another process lets nobody else read the image.
    #[error(
        "{}: in use: another process holds it exclusively",
        path.display()
    )]
    Exclusive {
        /// The image.
        path: PathBuf,
    },
    /// The lock calls themselves failed.
    #[error("{}: locking: {}", path.display(), crate::messages::os_error(source))]
    Os {
        /// The image.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Shared locks held on one or more image files; released on drop (when
/// the files close).
#[derive(Debug, Default)]
pub struct ImageLocks {
    files: Vec<File>,
}

impl ImageLocks {
    /// Locks `path` for reading (see the module docs), adding it to the set.
    pub fn add(&mut self, path: &Path) -> Result<(), LockError> {
        let os = |source| LockError::Os {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(os)?;
        let meta = file.metadata().map_err(os)?;
        if !meta.is_file() {
            // Block devices and the like: nothing QEMU would have locked.
            self.files.push(file);
            return Ok(());
        }
        for byte in [PERM_READ, UNSHARED_WRITE, UNSHARED_RESIZE] {
            if !set_read_lock(&file, byte).map_err(os)? {
                return Err(LockError::Exclusive {
                    path: path.to_owned(),
                });
            }
        }
        for (byte, writer) in [
            (PERM_WRITE, true),
            (PERM_RESIZE, true),
            (UNSHARED_READ, false),
        ] {
            if held_by_other(&file, byte).map_err(os)? {
                let path = path.to_owned();
                return Err(if writer {
                    LockError::Writer { path }
                } else {
                    LockError::Exclusive { path }
                });
            }
        }
        self.files.push(file);
        Ok(())
    }
}

fn one_byte(l_type: libc::c_int, byte: i64) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Takes a read lock on `byte`; false when another process holds a write
/// lock there (it shares nothing with readers).
fn set_read_lock(file: &File, byte: i64) -> std::io::Result<bool> {
    let lock = one_byte(libc::F_RDLCK, byte);
    match fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether another open file description holds a lock on `byte` (any lock
/// conflicts with a write lock, so testing for one finds them all).
fn held_by_other(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut probe = one_byte(libc::F_WRLCK, byte);
    fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}
