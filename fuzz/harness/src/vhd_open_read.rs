//! Structure-aware mutations of valid VHDs: a small dynamic image, a
//! differencing image (opened from memory, so it is parsed in full and then
//! refused for want of a parent directory) and a fixed image are laid out
//! once in memory from the specification's layout; each input patches
//! footer, dynamic header, parent locator, BAT and bitmap fields
//! (recomputing checksums when the input says so), raw bytes and the file
//! length, and the result is opened and read.
//!
//! Invariants: no panic, hang or runaway allocation; an unpatched dynamic
//! or fixed image reads back exactly the disk it was laid out from.

use crate::{Outcome, decode_and_run};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use vmbdev_block::BlockDevice;
use vmbdev_vhd::Vhd;

const SECTOR: usize = 512;
const BLOCK: usize = 64 * 1024;
const DISK_SIZE: usize = 4 * BLOCK;
const HEADER_AT: usize = 512;
const BAT_AT: usize = 1536;
const LOCATOR_AT: usize = 2048;
const BLOCKS_AT: usize = 2560;
/// Bitmap of a 64 KiB block: 128 bits, padded to a sector.
const BITMAP: usize = 512;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn fix_sum(b: &mut [u8], start: usize, len: usize, field: usize) {
    if start + len > b.len() {
        return;
    }
    put32(b, start + field, 0);
    let sum = b[start..start + len]
        .iter()
        .fold(0u32, |s, &x| s.wrapping_add(u32::from(x)));
    put32(b, start + field, !sum);
}

struct Base {
    bytes: Vec<u8>,
    /// The disk it holds (None: differencing, not readable from memory).
    disk: Option<Vec<u8>>,
}

struct Bases {
    dynamic: Base,
    differencing: Base,
    fixed: Base,
}

fn footer(disk_type: u32, data_offset: u64) -> Vec<u8> {
    let mut f = vec![0u8; SECTOR];
    f[0..8].copy_from_slice(b"conectix");
    put32(&mut f, 8, 2);
    put32(&mut f, 12, 0x0001_0000);
    put64(&mut f, 16, data_offset);
    f[28..32].copy_from_slice(b"fuzz");
    put64(&mut f, 40, DISK_SIZE as u64);
    put64(&mut f, 48, DISK_SIZE as u64);
    put32(&mut f, 60, disk_type);
    f[68..84].copy_from_slice(&[0x42; 16]);
    fix_sum(&mut f, 0, SECTOR, 64);
    f
}

/// Blocks 0 and 2 allocated: block 0 with every sector written, block 2
/// with every other sector (the rest read as zeros, or from the parent).
fn sparse(disk_type: u32) -> Base {
    let mut b = vec![0u8; BLOCKS_AT + 2 * (BITMAP + BLOCK)];
    let mut disk = vec![0u8; DISK_SIZE];
    let h = HEADER_AT;
    b[h..h + 8].copy_from_slice(b"cxsparse");
    put64(&mut b, h + 8, u64::MAX);
    put64(&mut b, h + 16, BAT_AT as u64);
    put32(&mut b, h + 24, 0x0001_0000);
    put32(&mut b, h + 28, (DISK_SIZE / BLOCK) as u32);
    put32(&mut b, h + 32, BLOCK as u32);
    b[BAT_AT..BAT_AT + 16].fill(0xff);
    for (slot, index) in [0usize, 2].into_iter().enumerate() {
        let at = BLOCKS_AT + slot * (BITMAP + BLOCK);
        put32(&mut b, BAT_AT + 4 * index, (at / SECTOR) as u32);
        let bits = if index == 0 { 0xff } else { 0xaa };
        b[at..at + BLOCK / SECTOR / 8].fill(bits);
        for s in 0..BLOCK / SECTOR {
            let value = (s * 7 + index + 1) as u8 | 1;
            let data = at + BITMAP + s * SECTOR;
            b[data..data + SECTOR].fill(value);
            if bits & (0x80 >> (s % 8)) != 0 {
                let d = index * BLOCK + s * SECTOR;
                disk[d..d + SECTOR].fill(value);
            }
        }
    }
    if disk_type == 4 {
        b[h + 40..h + 56].copy_from_slice(&[0x24; 16]);
        for (i, unit) in "parent.vhd".encode_utf16().enumerate() {
            b[h + 64 + 2 * i..h + 66 + 2 * i].copy_from_slice(&unit.to_be_bytes());
        }
        let path: Vec<u8> = ".\\parent.vhd"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        b[LOCATOR_AT..LOCATOR_AT + path.len()].copy_from_slice(&path);
        let e = h + 576;
        b[e..e + 4].copy_from_slice(b"W2ru");
        put32(&mut b, e + 4, 1);
        put32(&mut b, e + 8, path.len() as u32);
        put64(&mut b, e + 16, LOCATOR_AT as u64);
    }
    fix_sum(&mut b, h, 1024, 36);
    let f = footer(disk_type, HEADER_AT as u64);
    b[..SECTOR].copy_from_slice(&f);
    b.extend_from_slice(&f);
    Base {
        bytes: b,
        disk: (disk_type == 3).then_some(disk),
    }
}

fn bases() -> &'static Bases {
    static BASES: OnceLock<Bases> = OnceLock::new();
    BASES.get_or_init(|| {
        let disk: Vec<u8> = (0..DISK_SIZE)
            .map(|i| (i / SECTOR * 13 + i) as u8)
            .collect();
        let mut fixed = disk.clone();
        fixed.extend_from_slice(&footer(2, u64::MAX));
        Bases {
            dynamic: sparse(3),
            differencing: sparse(4),
            fixed: Base {
                bytes: fixed,
                disk: Some(disk),
            },
        }
    })
}

#[derive(Debug, Arbitrary)]
enum Which {
    Dynamic,
    Differencing,
    Fixed,
}

#[derive(Debug, Arbitrary)]
enum Value {
    Small(u8),
    Pow2(u8),
    Sectors(u16),
    Raw(u64),
}

impl Value {
    fn get(&self) -> u64 {
        match self {
            Value::Small(v) => u64::from(*v),
            Value::Pow2(p) => 1u64 << (p % 64),
            Value::Sectors(s) => u64::from(*s) * SECTOR as u64,
            Value::Raw(v) => *v,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum FooterField {
    Cookie,
    Version,
    DataOffset,
    CurrentSize,
    DiskType,
    UniqueId,
}

#[derive(Debug, Arbitrary)]
enum HeaderField {
    Cookie,
    TableOffset,
    Version,
    MaxEntries,
    BlockSize,
    ParentName,
    /// A locator entry's code, data length or data offset.
    LocatorCode(u8, [u8; 4]),
    LocatorLength(u8),
    LocatorOffset(u8),
}

#[derive(Debug, Arbitrary)]
enum Patch {
    Footer {
        field: FooterField,
        value: Value,
        /// Apply to the copy at offset 0 too.
        both: bool,
        fix: bool,
    },
    Header {
        field: HeaderField,
        value: Value,
        fix: bool,
    },
    Bat {
        index: u8,
        value: Value,
    },
    Bitmap {
        block: bool,
        byte: u8,
        value: u8,
    },
    Raw {
        offset: u32,
        bytes: Vec<u8>,
    },
    Length(u32),
}

fn apply(b: &mut Vec<u8>, patch: &Patch) {
    let len = b.len();
    match patch {
        Patch::Footer {
            field,
            value,
            both,
            fix,
        } => {
            if len < SECTOR {
                return;
            }
            let v = value.get();
            let places: &[usize] = if *both {
                &[len - SECTOR, 0]
            } else {
                &[len - SECTOR]
            };
            for &f in places {
                match field {
                    FooterField::Cookie => put64(b, f, v),
                    FooterField::Version => put32(b, f + 12, v as u32),
                    FooterField::DataOffset => put64(b, f + 16, v),
                    FooterField::CurrentSize => put64(b, f + 48, v),
                    FooterField::DiskType => put32(b, f + 60, v as u32),
                    FooterField::UniqueId => put64(b, f + 68, v),
                }
                if *fix {
                    fix_sum(b, f, SECTOR, 64);
                }
            }
        }
        Patch::Header { field, value, fix } => {
            let h = HEADER_AT;
            if len < h + 1024 {
                return;
            }
            let v = value.get();
            let locator = |i: &u8| h + 576 + 24 * usize::from(i % 8);
            match field {
                HeaderField::Cookie => put64(b, h, v),
                HeaderField::TableOffset => put64(b, h + 16, v),
                HeaderField::Version => put32(b, h + 24, v as u32),
                HeaderField::MaxEntries => put32(b, h + 28, v as u32),
                HeaderField::BlockSize => put32(b, h + 32, v as u32),
                HeaderField::ParentName => put64(b, h + 64, v),
                HeaderField::LocatorCode(i, code) => {
                    let e = locator(i);
                    b[e..e + 4].copy_from_slice(code);
                }
                HeaderField::LocatorLength(i) => put32(b, locator(i) + 8, v as u32),
                HeaderField::LocatorOffset(i) => put64(b, locator(i) + 16, v),
            }
            if *fix {
                fix_sum(b, h, 1024, 36);
            }
        }
        Patch::Bat { index, value } => {
            let at = BAT_AT + 4 * usize::from(index % 4);
            if at + 4 <= len {
                put32(b, at, value.get() as u32);
            }
        }
        Patch::Bitmap { block, byte, value } => {
            if BAT_AT + 12 > len {
                return;
            }
            let entry = be32(b, BAT_AT + if *block { 8 } else { 0 }) as usize;
            let at = entry
                .saturating_mul(SECTOR)
                .saturating_add(usize::from(*byte % 16));
            if let Some(x) = b.get_mut(at) {
                *x = *value;
            }
        }
        Patch::Raw { offset, bytes } => {
            let at = *offset as usize % len.max(1);
            for (i, v) in bytes.iter().take(64).enumerate() {
                if let Some(x) = b.get_mut(at + i) {
                    *x = *v;
                }
            }
        }
        Patch::Length(n) => b.resize(*n as usize % (len + 2 * BLOCK), 0),
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    which: Which,
    patches: Vec<Patch>,
    reads: Vec<(u64, u8)>,
}

fn check(input: Input) {
    let bases = bases();
    let base = match input.which {
        Which::Dynamic => &bases.dynamic,
        Which::Differencing => &bases.differencing,
        Which::Fixed => &bases.fixed,
    };
    let mut bytes = base.bytes.clone();
    for patch in input.patches.iter().take(16) {
        apply(&mut bytes, patch);
    }
    let Ok(vhd) = Vhd::from_source(Box::new(bytes), "fuzz.vhd") else {
        assert!(
            !input.patches.is_empty() || base.disk.is_none(),
            "the unpatched image must open"
        );
        return;
    };
    let count = vhd.sector_count();
    // The whole base disk in 16 KiB requests (at most 1 MiB), then the
    // requested ranges.
    let mut buf = vec![0u8; 16 * 1024];
    let per = (buf.len() / SECTOR) as u64;
    let mut whole = Vec::new();
    let mut lba = 0;
    while lba < count && lba < 2048 {
        let n = per.min(count - lba);
        let b = &mut buf[..n as usize * SECTOR];
        match vhd.read_sectors(lba, b) {
            Ok(()) => whole.extend_from_slice(b),
            Err(_) => break,
        }
        lba += n;
    }
    if input.patches.is_empty() {
        assert_eq!(
            Some(&whole),
            base.disk.as_ref(),
            "unpatched image reads back its disk"
        );
    }
    for (start, len) in input.reads.iter().take(32) {
        let lba = start % (count + 8);
        let n = u64::from(*len % 64).min(per);
        let _ = vhd.read_sectors(lba, &mut buf[..n as usize * SECTOR]);
    }
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it; a failed check panics.
pub fn run(data: &[u8]) -> Outcome {
    decode_and_run::<Input>(data, check)
}
