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

/// Bytes of a sector of the test images.
pub const SECTOR: usize = 512;

/// Reads `count` sectors from `first` with `driver`, 64 per request and
/// `in_flight` at a time, and compares them with `image`.
pub fn check_sectors(
    driver: &vmbdev_guest::storvsc::Storvsc,
    image: &[u8],
    first: u64,
    count: u64,
    in_flight: usize,
) {
    let disk = driver.disk(0).expect("a disk at LUN 0");
    let requests: Vec<(u64, u32)> = (first..first + count)
        .step_by(64)
        .map(|lba| (lba, (first + count - lba).min(64) as u32))
        .collect();
    let chunks = within(disk.read_many(&requests, in_flight))
        .expect("hang guard")
        .unwrap();
    for ((lba, blocks), chunk) in requests.iter().zip(chunks) {
        let start = *lba as usize * SECTOR;
        let end = start + *blocks as usize * SECTOR;
        assert!(
            chunk[..] == image[start..end],
            "sectors at LBA {lba} differ"
        );
    }
}
