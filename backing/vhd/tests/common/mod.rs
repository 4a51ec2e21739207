//! Building VHD images byte by byte for the tests (differencing disks,
//! which qemu-img cannot make, and hostile variants), and field surgery
//! with checksum fix-ups. Written from the specification's layout, not
//! from the reader.
#![allow(dead_code)]

pub use vmbdev_tests::disks::*;

pub const SECTOR: usize = 512;

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The one's complement byte sum over `len` bytes at `start`, with the
/// checksum at `start + field` zeroed first, stored there.
pub fn fix_sum(b: &mut [u8], start: usize, len: usize, field: usize) {
    put32(b, start + field, 0);
    let sum: u32 = b[start..start + len]
        .iter()
        .fold(0u32, |s, &x| s.wrapping_add(x as u32));
    put32(b, start + field, !sum);
}

/// Offset of the footer at the end.
pub fn footer_at(b: &[u8]) -> usize {
    b.len() - SECTOR
}

/// Fixes the footer's checksum and copies it to offset 0 (dynamic disks).
pub fn fix_footers(b: &mut [u8]) {
    let end = footer_at(b);
    fix_sum(b, end, SECTOR, 64);
    if be32(b, end + 60) != 2 {
        let footer = b[end..].to_vec();
        b[..SECTOR].copy_from_slice(&footer);
    }
}

/// Offset of the dynamic header (the footer's data offset).
pub fn header_at(b: &[u8]) -> usize {
    be64(b, footer_at(b) + 16) as usize
}

/// Fixes the dynamic header's checksum.
pub fn fix_header(b: &mut [u8]) {
    let at = header_at(b);
    fix_sum(b, at, 1024, 36);
}

/// Offset of the BAT.
pub fn bat_at(b: &[u8]) -> usize {
    be64(b, header_at(b) + 16) as usize
}

/// One block to store: its BAT index, its sector bitmap (bit 7 of byte 0 is
/// the first sector) and its data (a whole block).
pub struct Block {
    pub index: u32,
    pub bitmap: Vec<u8>,
    pub data: Vec<u8>,
}

/// A dynamic or differencing image to lay out: footer copy, header at 512,
/// BAT at 1536, locator data, blocks in order, footer.
pub struct Layout {
    pub disk_type: u32,
    pub size: u64,
    pub block_size: u32,
    pub entries: u32,
    pub unique_id: [u8; 16],
    pub parent_id: [u8; 16],
    pub parent_name: String,
    pub locators: Vec<([u8; 4], Vec<u8>)>,
    pub blocks: Vec<Block>,
}

impl Layout {
    pub fn dynamic(size: u64, block_size: u32) -> Self {
        Layout {
            disk_type: 3,
            size,
            block_size,
            entries: size.div_ceil(block_size as u64) as u32,
            unique_id: [0x11; 16],
            parent_id: [0; 16],
            parent_name: String::new(),
            locators: Vec::new(),
            blocks: Vec::new(),
        }
    }

    pub fn bitmap_bytes(&self) -> usize {
        (self.block_size as usize / SECTOR)
            .div_ceil(8)
            .div_ceil(SECTOR)
            * SECTOR
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0u8; SECTOR + 1024];
        let bat_at = out.len();
        let bat_len = (self.entries as usize * 4).div_ceil(SECTOR) * SECTOR;
        out.resize(bat_at + bat_len, 0xff);
        let mut locator_places = Vec::new();
        for (_, data) in &self.locators {
            let at = out.len();
            let space = data.len().div_ceil(SECTOR).max(1) * SECTOR;
            out.resize(at + space, 0);
            out[at..at + data.len()].copy_from_slice(data);
            locator_places.push((at, data.len(), space));
        }
        for block in &self.blocks {
            let at = out.len();
            put32(
                &mut out,
                bat_at + block.index as usize * 4,
                (at / SECTOR) as u32,
            );
            out.extend_from_slice(&block.bitmap);
            out.resize(at + self.bitmap_bytes(), 0);
            out.extend_from_slice(&block.data);
            out.resize(at + self.bitmap_bytes() + self.block_size as usize, 0);
        }
        // Dynamic header.
        let h = SECTOR;
        out[h..h + 8].copy_from_slice(b"cxsparse");
        put64(&mut out, h + 8, u64::MAX);
        put64(&mut out, h + 16, bat_at as u64);
        put32(&mut out, h + 24, 0x0001_0000);
        put32(&mut out, h + 28, self.entries);
        put32(&mut out, h + 32, self.block_size);
        out[h + 40..h + 56].copy_from_slice(&self.parent_id);
        for (i, unit) in self.parent_name.encode_utf16().take(256).enumerate() {
            out[h + 64 + 2 * i..h + 66 + 2 * i].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, ((code, _), (at, len, space))) in
            self.locators.iter().zip(&locator_places).enumerate()
        {
            let e = h + 576 + 24 * i;
            out[e..e + 4].copy_from_slice(code);
            put32(&mut out, e + 4, (space / SECTOR) as u32);
            put32(&mut out, e + 8, *len as u32);
            put64(&mut out, e + 16, *at as u64);
        }
        fix_sum(&mut out, h, 1024, 36);
        // Footer.
        let f = out.len();
        out.resize(f + SECTOR, 0);
        out[f..f + 8].copy_from_slice(b"conectix");
        put32(&mut out, f + 8, 2);
        put32(&mut out, f + 12, 0x0001_0000);
        put64(&mut out, f + 16, h as u64);
        out[f + 28..f + 32].copy_from_slice(b"test");
        out[f + 36..f + 40].copy_from_slice(b"Wi2k");
        put64(&mut out, f + 40, self.size);
        put64(&mut out, f + 48, self.size);
        put32(&mut out, f + 56, 0xffff_10ff);
        put32(&mut out, f + 60, self.disk_type);
        out[f + 68..f + 84].copy_from_slice(&self.unique_id);
        fix_footers(&mut out);
        out
    }
}

/// UTF-16LE bytes of `s`.
pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The footer unique id of the image at `path`.
pub fn unique_id_of(bytes: &[u8]) -> [u8; 16] {
    let f = footer_at(bytes);
    bytes[f + 68..f + 84].try_into().unwrap()
}

/// A differencing layout over a parent with `parent_id`, located by a
/// relative `W2ru` path.
pub fn child_of(parent_id: [u8; 16], parent_rel: &str, size: u64, block_size: u32) -> Layout {
    let mut l = Layout::dynamic(size, block_size);
    l.disk_type = 4;
    l.unique_id = [0x22; 16];
    l.parent_id = parent_id;
    l.parent_name = parent_rel.to_string();
    l.locators = vec![(*b"W2ru", utf16le(&format!(".\\{parent_rel}")))];
    l
}
