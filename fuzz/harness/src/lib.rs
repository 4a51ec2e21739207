//! The bodies of the fuzz targets in `fuzz/fuzz_targets/`: for each target
//! the input type it decodes with `arbitrary`, the driver that plays it
//! against the real crates, and the checks on what comes back, plus what
//! the targets share (a loopback channel driven from both ends, a model of
//! the ring's packet checks, an in-memory disk, little-endian field access).
//!
//! Every target module exposes `run(data)`, which decodes raw bytes into its
//! input exactly as libfuzzer-sys's `fuzz_target!` does and then runs the
//! checks; a failed check panics. The fuzz binaries are one call to `run`
//! each, and the main test suite replays the committed corpora through the
//! same calls (`tests/replay_corpora.rs`), so a corpus file means the same
//! input to both.
#![forbid(unsafe_code)]

pub mod channel;
pub mod model;

pub mod fs_mount_read;
pub mod ring_reader;
pub mod storvsp_session;
pub mod vhd_open_read;
pub mod vhdx_open_read;
pub mod vmbfs_session;
pub mod vmbus_control;

use arbitrary::{Arbitrary, Unstructured};
use vmbdev_block::MemoryDisk;

/// What a run made of its input; the fuzz targets pass it on to libFuzzer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input decoded and every check passed.
    Ran,
    /// The bytes do not decode into the target's input (shorter than its
    /// minimum size, or refused by `arbitrary`): nothing ran, and libFuzzer
    /// is told not to keep them.
    Rejected,
}

/// Decodes `data` into a `T` the way libfuzzer-sys's `fuzz_target!` does for
/// a typed input (too short for `T`'s size hint: rejected; otherwise
/// `arbitrary_take_rest`) and hands it to `check`.
fn decode_and_run<T>(data: &[u8], check: impl FnOnce(T)) -> Outcome
where
    T: for<'a> Arbitrary<'a>,
{
    if data.len() < T::size_hint(0).0 {
        return Outcome::Rejected;
    }
    match T::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => {
            check(input);
            Outcome::Ran
        }
        Err(_) => Outcome::Rejected,
    }
}

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
