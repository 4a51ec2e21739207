//! Whole disks for tests: sparse random raw images, reading a whole device,
//! the bytes `qemu-img convert` gives, and comparing them.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmbdev_block::BlockDevice;

pub use crate::images::{path_str, tool};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Writes a raw image of `size` bytes: zeros with random runs of random data
/// (whole MiB-sized zero holes stay, so dynamic images have unallocated blocks).
pub fn make_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    let mut at = 0u64;
    while at < size {
        let gap = rng.random_range(0..3 * MIB);
        let run = rng.random_range(512..MIB);
        at += gap;
        let end = (at + run).min(size);
        if at < end {
            rng.fill(&mut data[at as usize..end as usize]);
        }
        at = end;
    }
    // The last bytes are data, so a short tail block is exercised.
    let tail = size as usize - 700.min(size as usize);
    rng.fill(&mut data[tail..]);
    std::fs::write(path, &data).unwrap();
    data
}

/// Reads the whole device in 1 MiB requests (last one shorter).
pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let size = dev.size_bytes();
    let sector = u64::from(dev.logical_sector_size());
    let mut out = vec![0u8; size as usize];
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(MIB + 3 * sector);
        dev.read_sectors(at / sector, &mut out[at as usize..(at + len) as usize])
            .unwrap();
        at += len;
    }
    out
}

/// The disk bytes according to `qemu-img convert -O raw`.
pub fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out: PathBuf = dir.join(format!(
        "{}.qemu.raw",
        image.file_name().unwrap().to_str().unwrap()
    ));
    tool(
        "qemu-img",
        &["convert", "-O", "raw", path_str(image), path_str(&out)],
    );
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// Asserts two byte strings are equal, reporting the first difference.
pub fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}
