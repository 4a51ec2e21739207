//! Byte surgery on VHDX images for the hostile-image and log tests: field
//! access, CRC fix-ups and locating headers, regions, metadata and log.
#![allow(dead_code)]

pub use vmbdev_tests::disks::*;

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the CRC-32C at `start + 4` over `len` bytes from `start`.
pub fn fix_crc(b: &mut [u8], start: usize, len: usize) {
    put32(b, start + 4, 0);
    let crc = crc32c::crc32c(&b[start..start + len]);
    put32(b, start + 4, crc);
}

pub const H1: usize = 64 * 1024;
pub const H2: usize = 128 * 1024;
pub const RT1: usize = 192 * 1024;
pub const RT2: usize = 256 * 1024;

/// Both headers' CRCs recomputed.
pub fn fix_headers(b: &mut [u8]) {
    fix_crc(b, H1, 4096);
    fix_crc(b, H2, 4096);
}

/// Both region tables' CRCs recomputed.
pub fn fix_regions(b: &mut [u8]) {
    fix_crc(b, RT1, 65536);
    fix_crc(b, RT2, 65536);
}

/// Offset of the current header (higher sequence).
pub fn current_header(b: &[u8]) -> usize {
    if le64(b, H2 + 8) > le64(b, H1 + 8) {
        H2
    } else {
        H1
    }
}

pub const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
pub const META_GUID: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];
pub const FILE_PARAMS_GUID: [u8; 16] = [
    0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b,
];
pub const DISK_SIZE_GUID: [u8; 16] = [
    0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8,
];
pub const LOGICAL_GUID: [u8; 16] = [
    0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f,
];

/// Index (in region table 1) of the region with `guid`.
pub fn region_entry(b: &[u8], guid: &[u8; 16]) -> usize {
    let count = le32(b, RT1 + 8) as usize;
    (0..count)
        .map(|i| RT1 + 16 + i * 32)
        .find(|&at| &b[at..at + 16] == guid)
        .expect("region present")
}

/// (file offset, length) of the region with `guid`.
pub fn region(b: &[u8], guid: &[u8; 16]) -> (usize, usize) {
    let at = region_entry(b, guid);
    (le64(b, at + 16) as usize, le32(b, at + 24) as usize)
}

/// Offset of the metadata table entry for `guid`.
pub fn metadata_entry(b: &[u8], guid: &[u8; 16]) -> usize {
    let (meta, _) = region(b, &META_GUID);
    let count = u16::from_le_bytes([b[meta + 10], b[meta + 11]]) as usize;
    (0..count)
        .map(|i| meta + 32 + i * 32)
        .find(|&at| &b[at..at + 16] == guid)
        .expect("metadata item present")
}

/// File offset of the value of metadata item `guid`.
pub fn metadata_value(b: &[u8], guid: &[u8; 16]) -> usize {
    let (meta, _) = region(b, &META_GUID);
    meta + le32(b, metadata_entry(b, guid) + 16) as usize
}

/// One log descriptor to craft.
pub enum Desc {
    /// Replace the 4 KiB page at the offset.
    Data(u64, Vec<u8>),
    /// Zero `len` bytes at the offset.
    Zero(u64, u64),
}

/// Builds a log entry with valid checksums.
pub fn log_entry(
    guid: [u8; 16],
    seq: u64,
    tail: u32,
    descs: &[Desc],
    last_file_offset: u64,
) -> Vec<u8> {
    let desc_area = (64 + 32 * descs.len()).div_ceil(4096) * 4096;
    let data_count = descs.iter().filter(|d| matches!(d, Desc::Data(..))).count();
    let len = desc_area + 4096 * data_count;
    let mut e = vec![0u8; len];
    e[0..4].copy_from_slice(b"loge");
    put32(&mut e, 8, len as u32);
    put32(&mut e, 12, tail);
    put64(&mut e, 16, seq);
    put32(&mut e, 24, descs.len() as u32);
    e[32..48].copy_from_slice(&guid);
    put64(&mut e, 48, last_file_offset);
    put64(&mut e, 56, last_file_offset);
    let mut data_at = desc_area;
    for (i, d) in descs.iter().enumerate() {
        let at = 64 + 32 * i;
        match d {
            Desc::Data(offset, page) => {
                e[at..at + 4].copy_from_slice(b"desc");
                e[at + 4..at + 8].copy_from_slice(&page[4092..4096]);
                e[at + 8..at + 16].copy_from_slice(&page[0..8]);
                put64(&mut e, at + 16, *offset);
                e[data_at..data_at + 4].copy_from_slice(b"data");
                put32(&mut e, data_at + 4, (seq >> 32) as u32);
                e[data_at + 8..data_at + 4092].copy_from_slice(&page[8..4092]);
                put32(&mut e, data_at + 4092, seq as u32);
                data_at += 4096;
            }
            Desc::Zero(offset, length) => {
                e[at..at + 4].copy_from_slice(b"zero");
                put64(&mut e, at + 8, *length);
                put64(&mut e, at + 16, *offset);
            }
        }
        put64(&mut e, at + 24, seq);
    }
    fix_crc(&mut e, 0, len);
    e
}

/// Log (offset, length) from the current header.
pub fn log_area(b: &[u8]) -> (usize, usize) {
    let h = current_header(b);
    (le64(b, h + 72) as usize, le32(b, h + 68) as usize)
}

/// Sets the current header's log GUID and fixes its checksum.
pub fn set_log_guid(b: &mut [u8], guid: [u8; 16]) {
    let h = current_header(b);
    b[h + 48..h + 64].copy_from_slice(&guid);
    fix_crc(b, h, 4096);
}
