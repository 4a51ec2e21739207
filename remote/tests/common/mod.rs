//! Shared helpers of the remote suites: a device server in a child
//! process, and hang guards.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmbdev_remote::RemoteDevice;

/// A hang guard only: far above any expected time, never a performance
/// threshold.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Runs `f` to completion, or `None` once [`HANG_GUARD`] has passed.
pub fn within<F: Future>(f: F) -> Option<F::Output> {
    futures_lite::future::block_on(futures_lite::future::or(async { Some(f.await) }, async {
        async_io::Timer::after(HANG_GUARD).await;
        None
    }))
}

/// A `vmbdev-remote-server` child process listening on a socket in a
/// temporary directory; killed when dropped.
pub struct ServerProcess {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts a server for `device` (`storvsp` or `vmbfs`) over `source`.
    pub fn spawn(device: &str, source: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("device.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_vmbdev-remote-server"))
            .arg("--socket")
            .arg(&socket)
            .arg("--device")
            .arg(device)
            .arg(source)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    /// Connects a proxy, waiting for the server to listen.
    pub fn connect(&mut self) -> RemoteDevice {
        let start = Instant::now();
        loop {
            if self.socket.exists() {
                if let Ok(device) = RemoteDevice::connect_path(&self.socket) {
                    return device;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited before listening: {status}");
            }
            assert!(start.elapsed() < HANG_GUARD, "the server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
