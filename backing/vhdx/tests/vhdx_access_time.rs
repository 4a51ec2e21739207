//! Opening and reading an image through [`open_image`] leaves the file's
//! access time as it was, for each format it dispatches to (VHDX and VHD
//! made by `qemu-img`, and raw). A plain read of the same file moves the
//! access time (the control: the test fails if the file system stops
//! telling the two apart).

use std::fs::{File, FileTimes};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};
use vmbdev_vhdx::open_image;

/// Sets the access time of `path` a day before its modification time, so
/// a read through an open that updates access times moves it even under
/// `relatime`; returns the access time set.
fn read_long_ago(path: &Path) -> SystemTime {
    let long_ago = SystemTime::now() - Duration::from_secs(86_400);
    let file = File::options().write(true).open(path).unwrap();
    file.set_times(FileTimes::new().set_accessed(long_ago))
        .unwrap();
    path.metadata().unwrap().accessed().unwrap()
}

fn accessed(path: &Path) -> SystemTime {
    path.metadata().unwrap().accessed().unwrap()
}

#[test]
fn every_format_opened_and_read_keeps_its_access_time() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["vhdx", "vpc", "raw"] {
        let path = dir.path().join(format!("disk.{format}"));
        let made = Command::new("qemu-img")
            .args(["create", "-f", format])
            .arg(&path)
            .arg("4M")
            .status()
            .expect("qemu-img runs");
        assert!(made.success(), "qemu-img create -f {format}");

        let before = read_long_ago(&path);
        File::open(&path)
            .unwrap()
            .read_exact(&mut [0; 512])
            .unwrap();
        assert!(
            accessed(&path) > before,
            "{format}: a plain read left the access time alone; this file system cannot tell"
        );

        let before = read_long_ago(&path);
        let device = open_image(&path).unwrap();
        let mut sector = vec![0xFF; device.logical_sector_size() as usize];
        device.read_sectors(0, &mut sector).unwrap();
        assert!(
            sector.iter().all(|&b| b == 0),
            "{format}: a new disk reads zeros"
        );
        drop(device);
        assert_eq!(
            accessed(&path),
            before,
            "{format}: opening and reading moved the access time"
        );
    }
}
