//! Where a command writes its result, and how it never harms its inputs.
//!
//! - `-` means standard output.
//! - An output that is the same file as an input (same device and inode,
//!   through symbolic and hard links) is refused before anything is
//!   written.
//! - A regular-file output is written under a temporary name in its own
//!   directory (`.NAME.vmbdev-tmp-XXXXXXXX`) and renamed into place only
//!   when complete; on an error the temporary is removed, and on SIGINT,
//!   SIGTERM or SIGHUP the signal thread removes it (see `signals`).
//! - A file replaced this way keeps its permission bits.
//! - An existing output that is not a regular file (`/dev/null`, a FIFO) is
//!   written in place: it cannot be renamed over.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::messages::os_error;
use crate::signals;

/// Why an output could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output is one of the command's inputs.
    #[error("{}: is the same file as the input {}; refusing to overwrite it", out.display(), input.display())]
    IsInput {
        /// The output as given.
        out: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// The output is a parent of the input's differencing chain.
    #[error("{}: is {}, a parent of {}; refusing to overwrite it", out.display(), parent.display(), input.display())]
    IsParent {
        /// The output as given.
        out: PathBuf,
        /// The parent it names.
        parent: PathBuf,
        /// The image read.
        input: PathBuf,
    },
    /// The output names a directory.
    #[error("{}: is a directory", .0.display())]
    IsDirectory(PathBuf),
    /// Creating, writing or renaming failed.
    #[error("{}: {}", path.display(), os_error(source))]
    Io {
        /// The output as given.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Standard output was closed by its reader.
    #[error("standard output: broken pipe")]
    BrokenPipe,
    /// Writing standard output failed otherwise.
    #[error("standard output: {}", os_error(.0))]
    Stdout(std::io::Error),
}

/// The `-o` argument: a path, or `-` for standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Device and inode of what `path` names (through symbolic links), if it
/// exists.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Refuses `out` when it is the same file as any of `inputs`: the image
/// read, then the parents of its differencing chain.
pub fn check_not_input(out: &Path, inputs: &[PathBuf]) -> Result<(), OutputError> {
    let Some(target) = identity(out) else {
        return Ok(());
    };
    for (i, input) in inputs.iter().enumerate() {
        if identity(input) == Some(target) {
            return Err(if i == 0 {
                OutputError::IsInput {
                    out: out.to_owned(),
                    input: input.clone(),
                }
            } else {
                OutputError::IsParent {
                    out: out.to_owned(),
                    parent: input.clone(),
                    input: inputs[0].clone(),
                }
            });
        }
    }
    Ok(())
}

/// An output being written.
pub enum Output {
    /// Standard output.
    Stdout(std::io::Stdout),
    /// A temporary file, renamed to `path` on [`Output::finish`].
    Staged {
        /// Where it ends up.
        path: PathBuf,
        /// The temporary's path.
        temp: PathBuf,
        /// The open temporary (None once finished).
        file: Option<File>,
    },
    /// An existing special file written in place.
    InPlace {
        /// The output as given.
        path: PathBuf,
        /// The open file.
        file: File,
    },
}

impl Output {
    /// Opens `path` (or standard output for `-`) for writing, after
    /// refusing it when it is one of `inputs`.
    pub fn create(path: &Path, inputs: &[PathBuf]) -> Result<Self, OutputError> {
        if is_stdout(path) {
            return Ok(Output::Stdout(std::io::stdout()));
        }
        check_not_input(path, inputs)?;
        let io = |source| OutputError::Io {
            path: path.to_owned(),
            source,
        };
        // Write through a symbolic link to where it points.
        let target = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).ok(),
            _ => None,
        }
        .unwrap_or_else(|| path.to_owned());
        match std::fs::metadata(&target) {
            Ok(m) if m.is_dir() => return Err(OutputError::IsDirectory(path.to_owned())),
            Ok(m) if !m.is_file() => {
                let file = OpenOptions::new().write(true).open(&target).map_err(io)?;
                return Ok(Output::InPlace {
                    path: path.to_owned(),
                    file,
                });
            }
            _ => {}
        }
        let name = target
            .file_name()
            .ok_or_else(|| OutputError::IsDirectory(path.to_owned()))?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        loop {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".vmbdev-tmp-{:08x}", rand::random::<u32>()));
            let temp = dir.join(temp_name);
            let made = signals::create_registered(&temp, || {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .open(&temp)
            });
            match made {
                Ok(file) => {
                    // A replaced file keeps its permissions.
                    if let Ok(old) = std::fs::metadata(&target) {
                        file.set_permissions(old.permissions()).map_err(io)?;
                    }
                    return Ok(Output::Staged {
                        path: target,
                        temp,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// Stages a new file to become `dir/name`, for extracting into a
    /// directory: the temporary is created with `O_EXCL | O_NOFOLLOW`
    /// (never through a link that is already there) and nothing at
    /// `dir/name` is looked at or followed. Put it in place with
    /// [`Output::finish_in_dir`].
    pub fn stage_in(dir: &Path, name: &std::ffi::OsStr) -> Result<Self, OutputError> {
        let path = dir.join(name);
        loop {
            let suffix = format!(".vmbdev-tmp-{:08x}", rand::random::<u32>());
            // `.NAME.vmbdev-tmp-X`, shortened when that would be longer than
            // a name may be.
            let mut temp_name = std::ffi::OsString::from(".");
            if name.len() + suffix.len() < 255 {
                temp_name.push(name);
            }
            temp_name.push(&suffix);
            let temp = dir.join(temp_name);
            let made = signals::create_registered(&temp, || {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&temp)
            });
            match made {
                Ok(file) => {
                    return Ok(Output::Staged {
                        path,
                        temp,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(OutputError::Io { path, source }),
            }
        }
    }

    /// Puts a file staged by [`Output::stage_in`] in place. Without
    /// `replace` it appears only if nothing is at its name (a hard link,
    /// which fails rather than replace or follow anything, then the
    /// temporary's removal); with `replace` it is renamed over whatever is
    /// there (a symbolic link is replaced, not followed). Returns the
    /// open file, for setting its times.
    pub fn finish_in_dir(mut self, replace: bool) -> Result<File, OutputError> {
        let Output::Staged { path, temp, file } = &mut self else {
            unreachable!("finish_in_dir is only called on staged outputs");
        };
        let io = |source| OutputError::Io {
            path: path.clone(),
            source,
        };
        let Some(f) = file.as_ref() else {
            return Err(io(std::io::Error::other("already finished")));
        };
        // On an error here the temporary is still registered, and `Drop`
        // removes it.
        f.sync_all().map_err(io)?;
        let f = file.take().expect("checked above");
        let placed = signals::unregister_after(temp, || {
            let placed = if replace {
                std::fs::rename(&*temp, &*path)
            } else {
                match std::fs::hard_link(&*temp, &*path) {
                    // A file system without hard links (FAT, some network
                    // ones): rename, having looked that nothing is there.
                    Err(e)
                        if e.kind() != std::io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(&*path)
                                .is_err_and(|m| m.kind() == std::io::ErrorKind::NotFound) =>
                    {
                        std::fs::rename(&*temp, &*path)
                    }
                    other => other,
                }
            };
            let _ = std::fs::remove_file(&*temp);
            placed
        });
        placed.map_err(io)?;
        Ok(f)
    }

    /// Flushes the data and puts the output in place.
    pub fn finish(mut self) -> Result<(), OutputError> {
        match &mut self {
            Output::Stdout(out) => out.flush().map_err(stdout_error),
            Output::InPlace { path, file } => file.flush().map_err(|source| OutputError::Io {
                path: path.clone(),
                source,
            }),
            Output::Staged { path, temp, file } => {
                let io = |source| OutputError::Io {
                    path: path.clone(),
                    source,
                };
                let Some(f) = file.take() else {
                    return Ok(());
                };
                f.sync_all().map_err(io)?;
                drop(f);
                signals::unregister_after(temp, || std::fs::rename(&*temp, &*path)).map_err(
                    |source| {
                        let _ = std::fs::remove_file(&*temp);
                        io(source)
                    },
                )
            }
        }
    }

    /// The open temporary of a regular-file output (which takes holes and
    /// positional writes); none for standard output and special files.
    pub fn staged_file(&self) -> Option<&File> {
        match self {
            Output::Staged { file, .. } => file.as_ref(),
            _ => None,
        }
    }

    /// A second handle on a stream output's descriptor (standard output or
    /// a special file), for writes that bypass standard output's line
    /// buffering.
    pub fn stream_file(&self) -> std::io::Result<File> {
        use std::os::fd::AsFd;
        let fd = match self {
            Output::Stdout(out) => out.as_fd().try_clone_to_owned()?,
            Output::InPlace { file, .. } => file.as_fd().try_clone_to_owned()?,
            Output::Staged { file, .. } => match file {
                Some(f) => f.as_fd().try_clone_to_owned()?,
                None => return Err(std::io::Error::other("already finished")),
            },
        };
        Ok(File::from(fd))
    }

    /// An I/O error on this output, naming it.
    pub fn error(&self, source: std::io::Error) -> OutputError {
        match self {
            Output::Stdout(_) => stdout_error(source),
            Output::InPlace { path, .. } | Output::Staged { path, .. } => OutputError::Io {
                path: path.clone(),
                source,
            },
        }
    }

    /// Writes `data`, naming the output in an error.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), OutputError> {
        match self {
            Output::Stdout(out) => out.write_all(data).map_err(stdout_error),
            Output::InPlace { path, file } => {
                file.write_all(data).map_err(|source| OutputError::Io {
                    path: path.clone(),
                    source,
                })
            }
            Output::Staged { path, file, .. } => match file {
                Some(f) => f.write_all(data).map_err(|source| OutputError::Io {
                    path: path.clone(),
                    source,
                }),
                None => Ok(()),
            },
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout(out) => out.write(buf),
            Output::InPlace { file, .. } => file.write(buf),
            Output::Staged { file, .. } => match file {
                Some(f) => f.write(buf),
                None => Ok(buf.len()),
            },
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(out) => out.flush(),
            Output::InPlace { file, .. } => file.flush(),
            Output::Staged { file, .. } => file.as_mut().map_or(Ok(()), Write::flush),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Output::Staged {
            temp,
            file: Some(_),
            ..
        } = self
        {
            signals::unregister_after(temp, || {
                let _ = std::fs::remove_file(&*temp);
            });
        }
    }
}

/// A write error on standard output, broken pipes told apart.
pub fn stdout_error(e: std::io::Error) -> OutputError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        OutputError::BrokenPipe
    } else {
        OutputError::Stdout(e)
    }
}
