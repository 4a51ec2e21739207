//! Crafted malformed VHDs: each is refused with its own error, never a
//! panic; reads of odd bitmaps and chains follow the documented rules.

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;
use vmbdev_block::BlockDevice;
use vmbdev_vhd::{MAX_CHAIN_DEPTH, Vhd, VhdError};

const BLOCK: u32 = 64 * 1024;

/// A 256 KiB dynamic disk with blocks 0 and 2 allocated, all bits set.
fn base() -> Layout {
    let mut l = Layout::dynamic(256 * 1024, BLOCK);
    for index in [0u32, 2] {
        l.blocks.push(Block {
            index,
            bitmap: vec![0xff; 16],
            data: vec![index as u8 + 1; BLOCK as usize],
        });
    }
    l
}

fn open(bytes: Vec<u8>) -> Result<Vhd, VhdError> {
    Vhd::from_source(Box::new(bytes), "crafted.vhd")
}

fn err(bytes: Vec<u8>) -> VhdError {
    match open(bytes) {
        Ok(_) => panic!("crafted image was accepted"),
        Err(e) => e,
    }
}

/// `base()` with `edit` applied to its bytes and every checksum fixed.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = base().build();
    edit(&mut b);
    fix_header(&mut b);
    fix_footers(&mut b);
    b
}

fn first_block_at(b: &[u8]) -> usize {
    be32(b, bat_at(b)) as usize * SECTOR
}

#[test]
fn base_image_reads_its_blocks() {
    let vhd = open(base().build()).unwrap();
    let all = read_all(&vhd);
    assert!(all[..BLOCK as usize].iter().all(|&x| x == 1));
    assert!(
        all[BLOCK as usize..2 * BLOCK as usize]
            .iter()
            .all(|&x| x == 0)
    );
    assert!(
        all[2 * BLOCK as usize..3 * BLOCK as usize]
            .iter()
            .all(|&x| x == 3)
    );
    assert_eq!(vhd.info().allocated_blocks, 2);
}

#[test]
fn too_small() {
    assert!(matches!(
        err(vec![0; 100]),
        VhdError::FileTooSmall { len: 100, .. }
    ));
}

#[test]
fn bad_cookies() {
    let mut b = base().build();
    let f = footer_at(&b);
    b[f] = b'x';
    assert!(matches!(
        err(b),
        VhdError::BadCookie {
            structure: "footer",
            ..
        }
    ));
    let mut b = base().build();
    b[0] = b'x';
    assert!(matches!(
        err(b),
        VhdError::BadCookie {
            structure: "footer copy",
            offset: 0,
            ..
        }
    ));
    let mut b = base().build();
    b[SECTOR] = b'x';
    fix_header(&mut b);
    assert!(matches!(
        err(b),
        VhdError::BadCookie {
            structure: "dynamic header",
            offset: 512,
            ..
        }
    ));
}

#[test]
fn bad_checksums() {
    let mut b = base().build();
    let f = footer_at(&b);
    b[f + 100] ^= 1;
    let e = err(b.clone());
    assert!(
        matches!(e, VhdError::BadChecksum { structure: "footer", offset, .. } if offset == f as u64),
        "{e}"
    );
    // Only the copy's checksum bad.
    let mut b = base().build();
    b[100] ^= 1;
    assert!(matches!(
        err(b),
        VhdError::BadChecksum {
            structure: "footer copy",
            ..
        }
    ));
    let mut b = base().build();
    b[SECTOR + 800] ^= 1;
    assert!(matches!(
        err(b),
        VhdError::BadChecksum {
            structure: "dynamic header",
            offset: 512,
            ..
        }
    ));
}

#[test]
fn footer_copy_must_match() {
    let mut b = base().build();
    b[24] ^= 1; // the copy's time stamp
    fix_sum(&mut b, 0, SECTOR, 64);
    assert!(matches!(err(b), VhdError::FooterCopyMismatch { .. }));
}

#[test]
fn versions_and_disk_type() {
    let b = edited(|b| {
        let f = footer_at(b);
        put32(b, f + 12, 0x0002_0000)
    });
    assert!(matches!(
        err(b),
        VhdError::UnsupportedVersion {
            structure: "footer",
            version: 0x0002_0000,
            ..
        }
    ));
    let b = edited(|b| put32(b, SECTOR + 24, 0x0000_0005));
    assert!(matches!(
        err(b),
        VhdError::UnsupportedVersion {
            structure: "dynamic header",
            ..
        }
    ));
    let b = edited(|b| {
        let f = footer_at(b);
        put32(b, f + 60, 5)
    });
    assert!(matches!(err(b), VhdError::BadDiskType { disk_type: 5, .. }));
}

#[test]
fn sizes() {
    for bad in [0u64, 1000] {
        let b = edited(|b| {
            let f = footer_at(b);
            put64(b, f + 48, bad)
        });
        assert!(matches!(err(b), VhdError::BadSize { size } if size == bad));
    }
    let b = edited(|b| {
        let f = footer_at(b);
        put64(b, f + 48, 4 << 40)
    });
    assert!(matches!(err(b), VhdError::SizeTooLarge { size, .. } if size == 4 << 40));
}

/// A fixed disk of `size` bytes in a file of `data_len` bytes plus footer.
fn fixed(size: u64, data_len: usize) -> Vec<u8> {
    let mut b = vec![0u8; data_len + SECTOR];
    let f = data_len;
    b[f..f + 8].copy_from_slice(b"conectix");
    put32(&mut b, f + 12, 0x0001_0000);
    put64(&mut b, f + 16, u64::MAX);
    put64(&mut b, f + 48, size);
    put32(&mut b, f + 60, 2);
    fix_footers(&mut b);
    b
}

#[test]
fn fixed_sizes() {
    let mut ok = fixed(4096, 4096);
    ok[10] = 0xab;
    fix_footers(&mut ok);
    let vhd = open(ok).unwrap();
    assert_eq!(vhd.size_bytes(), 4096);
    assert_eq!(read_all(&vhd)[10], 0xab);
    assert!(matches!(
        err(fixed(8192, 4096)),
        VhdError::FixedTruncated {
            size: 8192,
            needed: 8704,
            file_len: 4608
        }
    ));
    let huge = u64::MAX - 511;
    assert!(matches!(err(fixed(huge, 4096)), VhdError::SizeTooLarge { size, .. } if size == huge));
}

#[test]
fn header_offset() {
    for (offset, reason) in [
        (u64::MAX, "unset (all ones) in a dynamic disk"),
        (0, "inside the footer copy"),
        (1 << 40, "past the footer"),
    ] {
        let mut b = base().build();
        let f = footer_at(&b);
        put64(&mut b, f + 16, offset);
        fix_footers(&mut b);
        let e = err(b);
        assert!(
            matches!(&e, VhdError::BadHeaderOffset { offset: o, reason: r } if *o == offset && *r == reason),
            "{e}"
        );
    }
}

#[test]
fn block_sizes() {
    for bad in [0u32, 3000, 256, 512 << 20] {
        let b = edited(|b| put32(b, SECTOR + 32, bad));
        assert!(
            matches!(err(b), VhdError::BadBlockSize { block_size, offset: 512 } if block_size == bad)
        );
    }
}

#[test]
fn table_entries() {
    let b = edited(|b| put32(b, SECTOR + 28, 2));
    assert!(matches!(
        err(b),
        VhdError::TableTooSmall {
            entries: 2,
            needed: 4,
            ..
        }
    ));
    let b = edited(|b| put32(b, SECTOR + 28, 1 << 23));
    assert!(matches!(err(b), VhdError::TableTooLarge { entries, .. } if entries == 1 << 23));
}

#[test]
fn bat_outside_or_overlapping() {
    let b = edited(|b| put64(b, SECTOR + 16, 1 << 30));
    assert!(matches!(err(b), VhdError::OutsideFile { what: "BAT", .. }));
    let b = edited(|b| put64(b, SECTOR + 16, 100));
    assert!(matches!(
        err(b),
        VhdError::OutsideFile {
            what: "BAT",
            offset: 100,
            ..
        }
    ));
    let b = edited(|b| put64(b, SECTOR + 16, SECTOR as u64 + 1000));
    let e = err(b);
    assert!(
        matches!(
            e,
            VhdError::MetadataOverlap {
                first: "dynamic header",
                second: "BAT",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn blocks_beyond_eof_or_overlapping() {
    let b = edited(|b| {
        let bat = bat_at(b);
        put32(b, bat, 0x00ff_ffff)
    });
    assert!(matches!(err(b), VhdError::BlockBeyondEof { block: 0, .. }));
    for (sector, what) in [(0u32, "footer copy"), (1, "dynamic header"), (3, "BAT")] {
        let b = edited(|b| {
            let bat = bat_at(b);
            put32(b, bat, sector)
        });
        let e = err(b);
        assert!(
            matches!(&e, VhdError::BlockOverlapsMetadata { block: 0, what: w, .. } if *w == what),
            "{e}"
        );
    }
    // Block 2 starts one sector after block 0: they share bytes.
    let b = edited(|b| {
        let bat = bat_at(b);
        let first = be32(b, bat);
        put32(b, bat + 8, first + 1)
    });
    assert!(matches!(
        err(b),
        VhdError::BlocksOverlap {
            first: 0,
            second: 2,
            ..
        }
    ));
    // The same block twice.
    let b = edited(|b| {
        let bat = bat_at(b);
        let first = be32(b, bat);
        put32(b, bat + 4, first)
    });
    assert!(matches!(err(b), VhdError::BlocksOverlap { .. }));
}

/// In a dynamic disk a clear bitmap bit reads zeros whatever the data says.
#[test]
fn dynamic_clear_bits_read_zeros() {
    let mut l = base();
    l.blocks[0].bitmap = vec![0; 16];
    l.blocks[0].bitmap[0] = 0b1010_0000; // sectors 0 and 2 written
    let vhd = open(l.build()).unwrap();
    let all = read_all(&vhd);
    for s in 0..8usize {
        let sector = &all[s * SECTOR..(s + 1) * SECTOR];
        let want = if s == 0 || s == 2 { 1 } else { 0 };
        assert!(sector.iter().all(|&x| x == want), "sector {s}");
    }
    assert!(all[8 * SECTOR..BLOCK as usize].iter().all(|&x| x == 0));
}

#[test]
fn short_source_is_an_error_not_zeros() {
    // A fixed disk whose size claims more than the source really returns is
    // caught at open; a dynamic image cut inside a block is caught by the
    // block-beyond-EOF check (the footer moves with the cut).
    let mut b = base().build();
    let f = footer_at(&b);
    let footer = b[f..].to_vec();
    b.truncate(first_block_at(&b) + 1024);
    b.extend_from_slice(&footer);
    assert!(matches!(err(b), VhdError::BlockBeyondEof { .. }));
}

fn differencing(parent_id: [u8; 16], locators: Vec<([u8; 4], Vec<u8>)>) -> Vec<u8> {
    let mut l = child_of(parent_id, "parent.vhd", 256 * 1024, BLOCK);
    l.locators = locators;
    l.build()
}

#[test]
fn bad_parent_locators() {
    let e = err(differencing([1; 16], vec![(*b"W2ru", vec![b'a'; 7])]));
    assert!(
        matches!(
            e,
            VhdError::BadParentLocator {
                index: 0,
                reason: "odd length for UTF-16LE data",
                ..
            }
        ),
        "{e}"
    );
    let unpaired = 0xd800u16.to_le_bytes().to_vec();
    let e = err(differencing([1; 16], vec![(*b"W2ku", unpaired)]));
    assert!(
        matches!(
            e,
            VhdError::BadParentLocator {
                reason: "invalid UTF-16LE",
                ..
            }
        ),
        "{e}"
    );
    let e = err(differencing(
        [1; 16],
        vec![(*b"MacX", b"http://x".to_vec())],
    ));
    assert!(
        matches!(
            e,
            VhdError::BadParentLocator {
                reason: "not a file:// URL",
                ..
            }
        ),
        "{e}"
    );
    // Locator data length beyond the limit, and beyond the file.
    let mut b = differencing([1; 16], vec![(*b"W2ru", utf16le(".\\p.vhd"))]);
    put32(&mut b, SECTOR + 576 + 8, 1 << 20);
    fix_header(&mut b);
    assert!(matches!(
        err(b),
        VhdError::BadParentLocator {
            reason: "data longer than 64 KiB",
            ..
        }
    ));
    let mut b = differencing([1; 16], vec![(*b"W2ru", utf16le(".\\p.vhd"))]);
    put64(&mut b, SECTOR + 576 + 16, 1 << 40);
    fix_header(&mut b);
    assert!(matches!(
        err(b),
        VhdError::OutsideFile {
            what: "parent locator data",
            ..
        }
    ));
    // Locator data inside the BAT.
    let mut b = differencing([1; 16], vec![(*b"W2ru", utf16le(".\\p.vhd"))]);
    put64(&mut b, SECTOR + 576 + 16, 1536);
    fix_header(&mut b);
    assert!(matches!(
        err(b),
        VhdError::MetadataOverlap {
            first: "BAT",
            second: "parent locator data",
            ..
        }
    ));
    // A well-formed differencing image from memory has no directory to
    // find its parent in.
    let ok = differencing([1; 16], vec![(*b"W2ru", utf16le(".\\p.vhd"))]);
    assert!(matches!(err(ok), VhdError::ParentNotFound { tried } if tried.is_empty()));
}

/// A one-block differencing file at `dir/name` over `parent_name`
/// (relative), with unique id `[id; 16]` and parent id `[parent; 16]`.
fn write_child(dir: &Path, name: &str, id: u8, parent_name: &str, parent: u8) {
    let mut l = child_of([parent; 16], parent_name, 256 * 1024, BLOCK);
    l.unique_id = [id; 16];
    std::fs::write(dir.join(name), l.build()).unwrap();
}

fn write_dynamic(dir: &Path, name: &str, id: u8) -> Vec<u8> {
    let mut l = base();
    l.unique_id = [id; 16];
    let bytes = l.build();
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

#[test]
fn parent_identity_and_lookup() {
    let dir = tempfile::tempdir().unwrap();
    write_dynamic(dir.path(), "parent.vhd", 7);
    write_child(dir.path(), "good.vhd", 8, "parent.vhd", 7);
    let good = Vhd::open(dir.path().join("good.vhd")).unwrap();
    assert_eq!(read_all(&good), read_all(&open(base().build()).unwrap()));
    write_child(dir.path(), "wrong.vhd", 9, "parent.vhd", 6);
    let e = Vhd::open(dir.path().join("wrong.vhd")).unwrap_err();
    assert!(
        matches!(e, VhdError::ParentIdMismatch { expected, found, .. } if expected == [6; 16] && found == [7; 16]),
        "{e}"
    );
    write_child(dir.path(), "orphan.vhd", 9, "missing.vhd", 7);
    let e = Vhd::open(dir.path().join("orphan.vhd")).unwrap_err();
    assert!(
        matches!(&e, VhdError::ParentNotFound { tried } if tried.len() == 1),
        "{e}"
    );
    // A broken relative path falls back to the absolute locator.
    let mut l = child_of([7; 16], "gone.vhd", 256 * 1024, BLOCK);
    let absolute = format!("C:{}", dir.path().join("parent.vhd").display()).replace('/', "\\");
    l.locators = vec![
        (*b"W2ru", utf16le(".\\gone.vhd")),
        (*b"W2ku", utf16le(&absolute)),
    ];
    std::fs::write(dir.path().join("abs.vhd"), l.build()).unwrap();
    let abs = Vhd::open(dir.path().join("abs.vhd")).unwrap();
    assert_eq!(abs.info().parent_chain, vec![dir.path().join("parent.vhd")]);
    // And a MacX URL is understood.
    let mut l = child_of([7; 16], "gone.vhd", 256 * 1024, BLOCK);
    let url = format!(
        "file://localhost{}",
        dir.path().join("parent.vhd").display()
    );
    l.locators = vec![(*b"MacX", url.into_bytes())];
    std::fs::write(dir.path().join("mac.vhd"), l.build()).unwrap();
    assert!(Vhd::open(dir.path().join("mac.vhd")).is_ok());
    // A parent that is itself broken is named.
    let mut broken = base().build();
    broken[0] = b'x';
    std::fs::write(dir.path().join("parent.vhd"), broken).unwrap();
    let e = Vhd::open(dir.path().join("good.vhd")).unwrap_err();
    assert!(
        matches!(&e, VhdError::Parent { source, .. } if matches!(**source, VhdError::BadCookie { .. })),
        "{e}"
    );
}

#[test]
fn parent_cycle() {
    let dir = tempfile::tempdir().unwrap();
    write_child(dir.path(), "a.vhd", 1, "b.vhd", 2);
    write_child(dir.path(), "b.vhd", 2, "a.vhd", 1);
    let e = Vhd::open(dir.path().join("a.vhd")).unwrap_err();
    assert!(matches!(e, VhdError::ParentCycle { .. }), "{e}");
    // A child naming itself.
    write_child(dir.path(), "self.vhd", 3, "self.vhd", 3);
    let e = Vhd::open(dir.path().join("self.vhd")).unwrap_err();
    assert!(matches!(e, VhdError::ParentCycle { .. }), "{e}");
}

#[test]
fn chain_too_deep() {
    let dir = tempfile::tempdir().unwrap();
    write_dynamic(dir.path(), "d0.vhd", 100);
    let depth = MAX_CHAIN_DEPTH as u8;
    for i in 1..=depth {
        write_child(
            dir.path(),
            &format!("d{i}.vhd"),
            100 + i,
            &format!("d{}.vhd", i - 1),
            99 + i,
        );
    }
    // The deepest chain allowed opens: d(limit-1) plus its parents.
    let ok = Vhd::open(dir.path().join(format!("d{}.vhd", depth - 1))).unwrap();
    assert_eq!(ok.info().parent_chain.len(), MAX_CHAIN_DEPTH - 1);
    let e = Vhd::open(dir.path().join(format!("d{depth}.vhd"))).unwrap_err();
    assert!(
        matches!(
            e,
            VhdError::ChainTooDeep {
                limit: MAX_CHAIN_DEPTH,
                ..
            }
        ),
        "{e}"
    );
}

/// Reads of a differencing chain (dynamic parent, child with random blocks
/// and bitmaps) at random places equal a sector-by-sector model.
/// Child blocks (index, bitmap) and reads (first sector, count).
type ChainCase = (Vec<(u32, Vec<u8>)>, Vec<(u64, u64)>);

fn chain_model() -> impl Strategy<Value = ChainCase> {
    let blocks =
        proptest::collection::vec((0u32..4, proptest::collection::vec(any::<u8>(), 16)), 0..4);
    let reads = proptest::collection::vec((0u64..512, 1u64..200), 1..8);
    (blocks, reads)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn differencing_reads_match_model((blocks, reads) in chain_model()) {
        let dir = tempfile::tempdir().unwrap();
        let parent = write_dynamic(dir.path(), "parent.vhd", 7);
        let parent_disk = read_all(&open(parent).unwrap());
        let mut l = child_of([7; 16], "parent.vhd", 256 * 1024, BLOCK);
        let mut expected = parent_disk.clone();
        let mut seen = std::collections::BTreeSet::new();
        for (index, bitmap) in blocks {
            if !seen.insert(index) {
                continue;
            }
            let spb = BLOCK as usize / SECTOR;
            for s in 0..spb {
                if bitmap[s / 8] & (0x80 >> (s % 8)) != 0 {
                    let at = (index as usize * spb + s) * SECTOR;
                    expected[at..at + SECTOR].fill(0xc0 | index as u8);
                }
            }
            l.blocks.push(Block { index, bitmap, data: vec![0xc0 | index as u8; BLOCK as usize] });
        }
        std::fs::write(dir.path().join("child.vhd"), l.build()).unwrap();
        let child = Vhd::open(dir.path().join("child.vhd")).unwrap();
        for (lba, count) in reads {
            let count = count.min(512 - lba);
            let mut buf = vec![0u8; count as usize * SECTOR];
            child.read_sectors(lba, &mut buf).unwrap();
            prop_assert_eq!(&buf[..], &expected[lba as usize * SECTOR..][..buf.len()]);
        }
    }
}
