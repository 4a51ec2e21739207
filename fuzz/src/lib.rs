//! Helpers shared by the fuzz targets: the in-memory disk every target uses, a
//! reference model of the ring's packet checks, and little-endian field
//! access. The targets themselves live in `fuzz_targets/`.
#![forbid(unsafe_code)]

pub mod channel;
pub mod model;

use vmbdev_block::MemoryDisk;

/// A disk over `bytes` with `sector_size`-byte sectors (a partial last
/// sector is dropped), as every target uses it.
pub fn mem_device(bytes: Vec<u8>, sector_size: u32) -> MemoryDisk {
    MemoryDisk::with_sector_sizes(bytes, sector_size, sector_size).with_disk_id([0x5a; 16])
}

/// Little-endian u16 at `at` (0 past the end).
pub fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

/// Little-endian u32 at `at` (0 past the end).
pub fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Little-endian u64 at `at` (0 past the end).
pub fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Stores `v` little-endian at `at` if it fits.
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Stores `v` little-endian at `at` if it fits.
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Stores `v` little-endian at `at` if it fits.
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
