//! `vmbdev serve`: a VMM in this process reads a disk through a storvsp
//! device served by `vmbdev serve` in a child process.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use vmbdev_device::bus::VmbusDevice;
use vmbdev_guest::storvsc::driver::NoSubChannels;
use vmbdev_guest::storvsc::{DriverConfig, GuestProfile, Storvsc};
use vmbdev_remote::RemoteDevice;
use vmbdev_remote::vmm::EventfdVm;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_hands_a_disk_to_a_vmm_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let image = dir.path().join("disk.vhdx");
    let bytes: Vec<u8> = (0..512 * 256u32).map(|i| (i * 7 + i / 512) as u8).collect();
    std::fs::write(&raw, &bytes).unwrap();
    // Served as a dynamic VHDX made by qemu-img from the raw bytes.
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .arg(&raw)
        .arg(&image)
        .status()
        .unwrap();
    assert!(status.success());
    let socket = dir.path().join("storvsp.sock");
    let mut server = Killed(
        common::vmbdev()
            .args([
                "serve",
                "--device",
                "storvsp",
                "--sub-channels",
                "0",
                "--socket",
            ])
            .arg(&socket)
            .arg(&image)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let remote = loop {
        if let Ok(remote) = RemoteDevice::connect_path(&socket) {
            break remote;
        }
        assert!(server.0.try_wait().unwrap().is_none(), "serve exited");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let remote: Arc<dyn VmbusDevice> = Arc::new(remote);
    assert_eq!(remote.offer().name, "storvsp");
    assert_eq!(remote.offer().max_sub_channels, 0);
    let vm = EventfdVm::new(remote, 4096, 16, 0, false).unwrap();
    let primary = vm.open_channel(0).unwrap();
    let driver = block_on(Storvsc::connect(
        primary,
        vm.memory().clone(),
        vm.pages().clone(),
        &NoSubChannels,
        &DriverConfig {
            profile: GuestProfile::Linux,
            cpus: 1,
            buffer_offset: 0,
            ..DriverConfig::default()
        },
    ))
    .unwrap();
    let disk = driver.disk(0).unwrap();
    let read = block_on(disk.read(0, 256)).unwrap();
    assert!(read == bytes, "sectors differ from the image");
}

#[test]
fn serve_refuses_a_socket_path_that_exists() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let socket = dir.path().join("taken");
    std::fs::write(&socket, b"keep me").unwrap();
    let out = common::vmbdev()
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("already exists"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"keep me");
}
