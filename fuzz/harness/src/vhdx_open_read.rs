//! Structure-aware mutations of a valid VHDX: a small dynamic image is
//! written once with our writer (plus a variant with a dirty log holding
//! one data descriptor), then each input patches header, region-table,
//! metadata, BAT and log fields (recomputing CRCs when the input says so),
//! raw bytes and the file length, and the result is opened and read.
//!
//! The patched image stays in memory (the reader parses through
//! `ReadAt`): unpatched 64 KiB chunks are read from the shared base, so a
//! run copies only what it patches. Invariants: no panic, hang
//! or runaway allocation; an unpatched image reads back exactly the bytes
//! it was written from (the dirty variant with its logged page applied).

use crate::{Outcome, decode_and_run};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{le32, le64, mem_device, put16, put32, put64};
use arbitrary::Arbitrary;
use vmbdev_block::{BlockDevice, ReadAt};
use vmbdev_vhdx::{Vhdx, WriteOptions, write_vhdx};

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;
const H1: usize = 64 * 1024;
const H2: usize = 128 * 1024;
const RT1: usize = 192 * 1024;
const RT2: usize = 256 * 1024;
const DISK_SIZE: usize = 3 * MIB;
const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
const META_GUID: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];
const LOG_GUID: [u8; 16] = *b"fuzz-log-guid-01";
/// Parent locator item id (a differencing image without a parent file).
const PARENT_LOCATOR_GUID: [u8; 16] = [
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c,
];

struct Base {
    /// File bytes.
    bytes: Vec<u8>,
    /// Disk bytes the image holds.
    disk: Vec<u8>,
}

struct Bases {
    clean: Base,
    dirty: Base,
}

fn fix_crc(b: &mut [u8], start: usize, len: usize) {
    if start + len > b.len() {
        return;
    }
    put32(b, start + 4, 0);
    let crc = crc32c::crc32c(&b[start..start + len]);
    put32(b, start + 4, crc);
}

/// A log entry with one data descriptor replacing the 4 KiB page at
/// `target` with `page`, valid checksums.
fn log_entry(seq: u64, target: u64, page: &[u8], last_file_offset: u64) -> Vec<u8> {
    let len = 2 * 4096;
    let mut e = vec![0u8; len];
    e[0..4].copy_from_slice(b"loge");
    put32(&mut e, 8, len as u32);
    put32(&mut e, 12, 0);
    put64(&mut e, 16, seq);
    put32(&mut e, 24, 1);
    e[32..48].copy_from_slice(&LOG_GUID);
    put64(&mut e, 48, last_file_offset);
    put64(&mut e, 56, last_file_offset);
    let at = 64;
    e[at..at + 4].copy_from_slice(b"desc");
    e[at + 4..at + 8].copy_from_slice(&page[4092..4096]);
    e[at + 8..at + 16].copy_from_slice(&page[0..8]);
    put64(&mut e, at + 16, target);
    put64(&mut e, at + 24, seq);
    let d = 4096;
    e[d..d + 4].copy_from_slice(b"data");
    put32(&mut e, d + 4, (seq >> 32) as u32);
    e[d + 8..d + 4092].copy_from_slice(&page[8..4092]);
    put32(&mut e, d + 4092, seq as u32);
    fix_crc(&mut e, 0, len);
    e
}

fn bases() -> &'static Bases {
    static BASES: OnceLock<Bases> = OnceLock::new();
    BASES.get_or_init(|| {
        let mut disk = vec![0u8; DISK_SIZE];
        // A few non-zero sectors in blocks 0 and 2; block 1 stays zero
        // (unallocated), and most of each block is zero so the file is
        // mostly holes.
        for (i, at) in [0usize, 4096, 700 * 512, 2 * MIB + 512, DISK_SIZE - 512]
            .iter()
            .enumerate()
        {
            for (j, b) in disk[*at..*at + 512].iter_mut().enumerate() {
                *b = (i * 37 + j) as u8 | 1;
            }
        }
        let path = std::env::temp_dir().join(format!("vmbdev-fuzz-{}.vhdx", std::process::id()));
        let shm = PathBuf::from("/dev/shm");
        let path = if shm.is_dir() {
            shm.join(format!("vmbdev-fuzz-{}.vhdx", std::process::id()))
        } else {
            path
        };
        let source = mem_device(disk.clone(), 512);
        let opts = WriteOptions {
            block_size: 1 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            fixed: false,
        };
        write_vhdx(&source, &path, &opts).expect("write base VHDX");
        let bytes = std::fs::read(&path).expect("read base VHDX");
        std::fs::remove_file(&path).expect("remove base VHDX");
        let clean = Base { bytes, disk };
        // The dirty variant: a log entry replacing the page at disk offset
        // 4096 of block 0 (whose file offset the BAT gives).
        let mut bytes = clean.bytes.clone();
        let bat = le64(&bytes, 3 * MIB) & !((1 << 20) - 1);
        let target = bat + 4096;
        let page: Vec<u8> = (0..4096).map(|i| (i * 7 + 3) as u8).collect();
        let entry = log_entry(10, target, &page, bytes.len() as u64);
        bytes[MIB..MIB + entry.len()].copy_from_slice(&entry);
        for h in [H1, H2] {
            bytes[h + 48..h + 64].copy_from_slice(&LOG_GUID);
            fix_crc(&mut bytes, h, 4096);
        }
        let mut disk = clean.disk.clone();
        disk[4096..8192].copy_from_slice(&page);
        let dirty = Base { bytes, disk };
        Bases { clean, dirty }
    })
}

#[derive(Debug, Arbitrary)]
enum GuidPick {
    Bat,
    Metadata,
    ParentLocator,
    Zero,
    Other([u8; 16]),
}

impl GuidPick {
    fn bytes(&self) -> [u8; 16] {
        match self {
            GuidPick::Bat => BAT_GUID,
            GuidPick::Metadata => META_GUID,
            GuidPick::ParentLocator => PARENT_LOCATOR_GUID,
            GuidPick::Zero => [0; 16],
            GuidPick::Other(g) => *g,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Value {
    /// A multiple of 1 MiB (offsets, lengths).
    Mib(u8),
    /// A small number.
    Small(u8),
    /// A power of two.
    Pow2(u8),
    Raw(u64),
}

impl Value {
    fn get(&self) -> u64 {
        match self {
            Value::Mib(m) => u64::from(*m) << 20,
            Value::Small(v) => u64::from(*v),
            Value::Pow2(p) => 1u64 << (p % 64),
            Value::Raw(v) => *v,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum HeaderField {
    Signature,
    Sequence,
    LogGuid,
    LogVersion,
    Version,
    LogLength,
    LogOffset,
}

#[derive(Debug, Arbitrary)]
enum RegionField {
    Guid(GuidPick),
    Offset,
    Length,
    Flags,
}

#[derive(Debug, Arbitrary)]
enum MetaField {
    Guid(GuidPick),
    Offset,
    Length,
    Flags,
    /// The item's value (first 8 bytes).
    Value,
}

#[derive(Debug, Arbitrary)]
enum Patch {
    Header {
        second: bool,
        field: HeaderField,
        value: Value,
        fix: bool,
    },
    RegionCount {
        second: bool,
        value: Value,
        fix: bool,
    },
    Region {
        second: bool,
        both: bool,
        entry: u8,
        field: RegionField,
        value: Value,
        fix: bool,
    },
    MetadataCount(Value),
    Metadata {
        entry: u8,
        field: MetaField,
        value: Value,
    },
    Bat {
        index: u8,
        state: u8,
        offset_mb: u16,
        reserved: u32,
        raw: Option<u64>,
    },
    Log {
        offset: u16,
        value: u32,
        fix: bool,
    },
    Raw {
        offset: u32,
        bytes: Vec<u8>,
    },
    Length(u32),
}

#[derive(Debug, Arbitrary)]
struct Input {
    dirty: bool,
    patches: Vec<Patch>,
    reads: Vec<(u64, u8)>,
}

/// The patched file: base chunks overlaid with modified copies.
#[derive(Debug)]
struct Image<'a> {
    base: &'a [u8],
    chunks: BTreeMap<usize, Vec<u8>>,
    len: usize,
}

impl Image<'_> {
    fn chunk(&mut self, index: usize) -> &mut Vec<u8> {
        let base = self.base;
        self.chunks.entry(index).or_insert_with(|| {
            let start = index * CHUNK;
            let mut c = vec![0u8; CHUNK];
            if start < base.len() {
                let end = (start + CHUNK).min(base.len());
                c[..end - start].copy_from_slice(&base[start..end]);
            }
            c
        })
    }

    /// Applies `f` to the bytes `[at, at + len)` (inside one chunk).
    fn edit(&mut self, at: usize, len: usize, f: impl FnOnce(&mut [u8])) {
        let index = at / CHUNK;
        if (at + len - 1) / CHUNK != index {
            return;
        }
        let off = at % CHUNK;
        f(&mut self.chunk(index)[off..off + len]);
    }

    fn read64(&mut self, at: usize) -> u64 {
        let mut v = 0;
        self.edit(at, 8, |b| v = le64(b, 0));
        v
    }

    fn read32(&mut self, at: usize) -> u32 {
        let mut v = 0;
        self.edit(at, 4, |b| v = le32(b, 0));
        v
    }
}

impl ReadAt for Image<'static> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let end = start.saturating_add(buf.len()).min(self.len);
        let mut at = start;
        while at < end {
            let index = at / CHUNK;
            let within = at % CHUNK;
            let n = (CHUNK - within).min(end - at);
            let out = &mut buf[at - start..at - start + n];
            match self.chunks.get(&index) {
                Some(chunk) => out.copy_from_slice(&chunk[within..within + n]),
                None => {
                    let from = self.base.get(at..).unwrap_or_default();
                    let m = from.len().min(n);
                    out[..m].copy_from_slice(&from[..m]);
                    out[m..].fill(0);
                }
            }
            at += n;
        }
        Ok(end.saturating_sub(start))
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len as u64)
    }
}

fn apply(img: &mut Image<'_>, patch: &Patch) {
    match patch {
        Patch::Header {
            second,
            field,
            value,
            fix,
        } => {
            let h = if *second { H2 } else { H1 };
            let v = value.get();
            match field {
                HeaderField::Signature => img.edit(h, 4, |b| put32(b, 0, v as u32)),
                HeaderField::Sequence => img.edit(h + 8, 8, |b| put64(b, 0, v)),
                HeaderField::LogGuid => img.edit(h + 48, 16, |b| {
                    put64(b, 0, v);
                    put64(b, 8, v.rotate_left(17));
                }),
                HeaderField::LogVersion => img.edit(h + 64, 2, |b| put16(b, 0, v as u16)),
                HeaderField::Version => img.edit(h + 66, 2, |b| put16(b, 0, v as u16)),
                HeaderField::LogLength => img.edit(h + 68, 4, |b| put32(b, 0, v as u32)),
                HeaderField::LogOffset => img.edit(h + 72, 8, |b| put64(b, 0, v)),
            }
            if *fix {
                img.edit(h, 4096, |b| fix_crc(b, 0, 4096));
            }
        }
        Patch::RegionCount { second, value, fix } => {
            let t = if *second { RT2 } else { RT1 };
            img.edit(t + 8, 4, |b| put32(b, 0, value.get() as u32));
            if *fix {
                img.edit(t, CHUNK, |b| fix_crc(b, 0, CHUNK));
            }
        }
        Patch::Region {
            second,
            both,
            entry,
            field,
            value,
            fix,
        } => {
            let tables: &[usize] = match (*both, *second) {
                (true, _) => &[RT1, RT2],
                (false, false) => &[RT1],
                (false, true) => &[RT2],
            };
            for &t in tables {
                let e = t + 16 + 32 * usize::from(entry % 4);
                let v = value.get();
                match field {
                    RegionField::Guid(g) => img.edit(e, 16, |b| b.copy_from_slice(&g.bytes())),
                    RegionField::Offset => img.edit(e + 16, 8, |b| put64(b, 0, v)),
                    RegionField::Length => img.edit(e + 24, 4, |b| put32(b, 0, v as u32)),
                    RegionField::Flags => img.edit(e + 28, 4, |b| put32(b, 0, v as u32)),
                }
                if *fix {
                    img.edit(t, CHUNK, |b| fix_crc(b, 0, CHUNK));
                }
            }
        }
        Patch::MetadataCount(v) => img.edit(2 * MIB + 10, 2, |b| put16(b, 0, v.get() as u16)),
        Patch::Metadata {
            entry,
            field,
            value,
        } => {
            let e = 2 * MIB + 32 + 32 * usize::from(entry % 8);
            let v = value.get();
            match field {
                MetaField::Guid(g) => img.edit(e, 16, |b| b.copy_from_slice(&g.bytes())),
                MetaField::Offset => img.edit(e + 16, 4, |b| put32(b, 0, v as u32)),
                MetaField::Length => img.edit(e + 20, 4, |b| put32(b, 0, v as u32)),
                MetaField::Flags => img.edit(e + 24, 4, |b| put32(b, 0, v as u32)),
                MetaField::Value => {
                    let offset = img.read32(e + 16) as usize;
                    if offset < MIB {
                        img.edit(2 * MIB + offset, 8, |b| put64(b, 0, v));
                    }
                }
            }
        }
        Patch::Bat {
            index,
            state,
            offset_mb,
            reserved,
            raw,
        } => {
            let entry = raw.unwrap_or(
                u64::from(state % 8)
                    | ((u64::from(*reserved & 0x1FFFF) << 3) * u64::from(*reserved >= 0xF000_0000))
                    | (u64::from(*offset_mb % 64) << 20),
            );
            let at = 3 * MIB + 8 * usize::from(index % 64);
            img.edit(at, 8, |b| put64(b, 0, entry));
        }
        Patch::Log { offset, value, fix } => {
            let at = MIB + usize::from(offset % 8192);
            img.edit(at & !3, 4, |b| put32(b, 0, *value));
            if *fix {
                let len = (img.read32(MIB + 8) as usize).clamp(4096, CHUNK);
                img.edit(MIB, len, |b| fix_crc(b, 0, len));
            }
        }
        Patch::Raw { offset, bytes } => {
            let at = *offset as usize % img.len.max(1);
            for (i, b) in bytes.iter().take(64).enumerate() {
                img.edit(at + i, 1, |x| x[0] = *b);
            }
        }
        Patch::Length(n) => img.len = (*n as usize) % (img.len + 2 * MIB),
    }
}

fn check(input: Input) {
    let bases = bases();
    let base = if input.dirty {
        &bases.dirty
    } else {
        &bases.clean
    };
    let mut img = Image {
        base: &base.bytes,
        chunks: BTreeMap::new(),
        len: base.bytes.len(),
    };
    for patch in input.patches.iter().take(16) {
        apply(&mut img, patch);
    }
    let _ = img.read64(0);
    let Ok(vhdx) = Vhdx::from_source(Box::new(img), "fuzz.vhdx") else {
        assert!(!input.patches.is_empty(), "the unpatched image must open");
        return;
    };
    let sector = u64::from(vhdx.logical_sector_size());
    let count = vhdx.sector_count();
    let mut buf = vec![0u8; CHUNK];
    let per = CHUNK as u64 / sector;
    if input.patches.is_empty() {
        // The whole base disk, in 64 KiB requests, equals what was written.
        let mut whole = Vec::new();
        let mut lba = 0;
        while lba < count {
            let n = per.min(count - lba);
            let b = &mut buf[..(n * sector) as usize];
            vhdx.read_sectors(lba, b).expect("unpatched image reads");
            whole.extend_from_slice(b);
            lba += n;
        }
        assert_eq!(whole, base.disk, "unpatched image reads back its disk");
    } else {
        // A patched image: the first 64 KiB of each of the first four
        // blocks (every BAT entry the base uses), then the requested
        // ranges. Reading all of it each time would cost most of the run
        // and find nothing the per-block reads do not.
        for block in 0..4u64 {
            let lba = block * (MIB as u64 / sector);
            if lba >= count {
                break;
            }
            let n = per.min(count - lba);
            let _ = vhdx.read_sectors(lba, &mut buf[..(n * sector) as usize]);
        }
    }
    for (start, len) in input.reads.iter().take(64) {
        let lba = if count == 0 {
            *start
        } else {
            start % (count + 8)
        };
        let n = u64::from(*len % 128).min(per);
        let _ = vhdx.read_sectors(lba, &mut buf[..(n * sector) as usize]);
    }
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it; a failed check panics.
pub fn run(data: &[u8]) -> Outcome {
    decode_and_run::<Input>(data, check)
}
