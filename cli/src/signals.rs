//! Temporary files to remove when the process is interrupted.
//!
//! [`install`] starts a thread that waits for SIGINT, SIGTERM and SIGHUP;
//! on one it removes every registered temporary and then dies of the same
//! signal (default action), so the caller sees the usual status. Files are
//! registered and created under the same lock the handler takes, so none
//! is created after the handler has swept.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use signal_hook::consts::{SIGHUP, SIGINT, SIGPIPE, SIGTERM};
use signal_hook::iterator::Signals;

static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Directories where a library call makes its own temporaries: (directory,
/// name prefix, names with that prefix that were there before).
static SWEEPS: Mutex<Vec<(PathBuf, String, Vec<std::ffi::OsString>)>> = Mutex::new(Vec::new());

fn names_with_prefix(dir: &Path, prefix: &str) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// On a signal, also remove the files named `prefix...` that appear in
/// `dir` from now on (temporaries a library call makes there).
pub fn sweep_on_signal(dir: &Path, prefix: &str) {
    let before = names_with_prefix(dir, prefix);
    SWEEPS.lock().unwrap_or_else(PoisonError::into_inner).push((
        dir.to_owned(),
        prefix.to_owned(),
        before,
    ));
}

fn remove_all(temporaries: &[PathBuf]) {
    for path in temporaries {
        let _ = std::fs::remove_file(path);
    }
    let sweeps = SWEEPS.lock().unwrap_or_else(PoisonError::into_inner);
    for (dir, prefix, before) in sweeps.iter() {
        for name in names_with_prefix(dir, prefix) {
            if !before.contains(&name) {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
    }
}

fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARIES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the signal thread. Failing to install handlers only loses the
/// cleanup, so it is traced, not fatal.
pub fn install() {
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let temporaries = registry();
                remove_all(&temporaries);
                // Dies here, the registry still locked.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the signal thread");
    }
}

/// Runs `create` (which makes the file at `path`) with `path` registered
/// for removal on a signal. On failure `path` is unregistered again.
pub fn create_registered<T>(
    path: &Path,
    create: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut temporaries = registry();
    temporaries.push(path.to_owned());
    let made = create();
    if made.is_err() {
        temporaries.retain(|p| p != path);
    }
    made
}

/// Runs `finish` (which renames or removes the file at `path`) and
/// unregisters `path`, under the registry lock.
pub fn unregister_after<T>(path: &Path, finish: impl FnOnce() -> T) -> T {
    let mut temporaries = registry();
    let done = finish();
    temporaries.retain(|p| p != path);
    done
}

/// Ends the process the way a write to a closed pipe would have by default
/// (the shell reports status 141), once temporaries are gone.
pub fn die_of_broken_pipe() -> ! {
    remove_all(&registry());
    let _ = signal_hook::low_level::emulate_default_handler(SIGPIPE);
    std::process::exit(128 + SIGPIPE)
}
