//! Reading an image through [`RawFile`] leaves the file's access time as
//! it was, where a plain open and read moves it (the control, so the test
//! fails if the file system or the open stops telling them apart).

use std::fs::{File, FileTimes};
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};
use vmbdev_block::{BlockDevice, RawFile};

/// A one-sector image whose access time is a day before its modification
/// time, so that any read through an open that updates access times
/// moves it (even under `relatime`).
fn image_read_long_ago() -> (tempfile::NamedTempFile, SystemTime) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&[0xA5; 512]).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(86_400);
    file.as_file()
        .set_times(FileTimes::new().set_accessed(long_ago))
        .unwrap();
    let accessed = file.as_file().metadata().unwrap().accessed().unwrap();
    (file, accessed)
}

#[test]
fn a_raw_image_read_keeps_its_access_time() {
    let (control, before) = image_read_long_ago();
    File::open(control.path())
        .unwrap()
        .read_exact(&mut [0; 512])
        .unwrap();
    let after = control.path().metadata().unwrap().accessed().unwrap();
    assert!(
        after > before,
        "a plain read left the access time alone ({before:?}); this file system cannot tell"
    );

    let (image, before) = image_read_long_ago();
    let raw = RawFile::open(image.path()).unwrap();
    let mut sector = [0; 512];
    raw.read_sectors(0, &mut sector).unwrap();
    assert_eq!(sector, [0xA5; 512]);
    drop(raw);
    let after = image.path().metadata().unwrap().accessed().unwrap();
    assert_eq!(after, before, "reading the image moved its access time");
}
