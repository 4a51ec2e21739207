//! Hostile images: each reject-checklist item, made by patching a valid
//! image (checksums fixed so the specific check is reached), yields its own
//! error variant and no panic.

mod common;

use common::*;
use vmbdev_block::RawFile;
use vmbdev_vhdx::open_image;
use vmbdev_vhdx::{Vhdx, VhdxError, WriteOptions, write_differencing, write_vhdx};

/// A valid qemu-made dynamic image, 1 MiB blocks, with allocated blocks.
fn valid() -> Vec<u8> {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let raw = dir.path().join("src.raw");
            make_raw(&raw, 8 * MIB, 60);
            let img = dir.path().join("v.vhdx");
            tool(
                "qemu-img",
                &[
                    "convert",
                    "-O",
                    "vhdx",
                    "-o",
                    "block_size=1048576",
                    path_str(&raw),
                    path_str(&img),
                ],
            );
            std::fs::read(&img).unwrap()
        })
        .clone()
}

fn open_bytes(b: &[u8]) -> Result<Vhdx, VhdxError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.vhdx");
    std::fs::write(&path, b).unwrap();
    Vhdx::open(&path)
}

/// Patches a valid image and checks the error.
fn refuse(patch: impl FnOnce(&mut Vec<u8>), check: impl FnOnce(&VhdxError) -> bool) {
    let mut b = valid();
    patch(&mut b);
    match open_bytes(&b) {
        Ok(_) => panic!("patched image was accepted"),
        Err(e) => assert!(check(&e), "unexpected error: {e:?}"),
    }
}

fn both_headers(b: &mut [u8], f: impl Fn(&mut [u8], usize)) {
    f(b, H1);
    f(b, H2);
    fix_headers(b);
}

fn first_allocated(b: &[u8]) -> usize {
    let (bat, _) = region(b, &BAT_GUID);
    (0..8)
        .map(|i| bat + i * 8)
        .find(|&at| le64(b, at) & 7 == 6)
        .expect("allocated block")
}

fn allocated_entries(b: &[u8]) -> Vec<usize> {
    let (bat, _) = region(b, &BAT_GUID);
    (0..8)
        .map(|i| bat + i * 8)
        .filter(|&at| le64(b, at) & 7 == 6)
        .collect()
}

#[test]
fn valid_image_opens() {
    open_bytes(&valid()).unwrap();
}

#[test]
fn small_file() {
    refuse(
        |b| b.truncate(512 * 1024),
        |e| matches!(e, VhdxError::FileTooSmall { len: 524288 }),
    );
}

#[test]
fn bad_identifier() {
    refuse(
        |b| b[0] = b'X',
        |e| matches!(e, VhdxError::BadIdentifier { .. }),
    );
}

#[test]
fn both_headers_bad() {
    refuse(
        |b| {
            b[H1 + 20] ^= 1;
            b[H2 + 20] ^= 1;
        },
        |e| matches!(e, VhdxError::NoValidHeader),
    );
}

#[test]
fn version_not_one() {
    refuse(
        |b| both_headers(b, |b, h| b[h + 66] = 2),
        |e| matches!(e, VhdxError::UnsupportedVersion { version: 2, .. }),
    );
}

#[test]
fn log_misaligned() {
    refuse(
        |b| both_headers(b, |b, h| put64(b, h + 72, MIB + 4096)),
        |e| matches!(e, VhdxError::LogMisaligned { .. }),
    );
}

#[test]
fn log_beyond_eof() {
    refuse(
        |b| both_headers(b, |b, h| put64(b, h + 72, 1 << 40)),
        |e| matches!(e, VhdxError::LogBeyondEof { offset, .. } if *offset == 1 << 40),
    );
}

#[test]
fn log_overlaps_region() {
    refuse(
        |b| {
            let (meta, _) = region(b, &META_GUID);
            both_headers(b, |b, h| put64(b, h + 72, meta as u64));
        },
        |e| matches!(e, VhdxError::LogOverlapsRegion { .. }),
    );
}

#[test]
fn region_count_too_large() {
    refuse(
        |b| {
            put32(b, RT1 + 8, 3000);
            fix_regions(b)
        },
        |e| matches!(e, VhdxError::RegionCountTooLarge { count: 3000, .. }),
    );
}

#[test]
fn no_valid_region_table() {
    refuse(
        |b| {
            b[RT1 + 100] ^= 1;
            b[RT2 + 100] ^= 1;
        },
        |e| matches!(e, VhdxError::NoValidRegionTable),
    );
}

#[test]
fn duplicate_region() {
    refuse(
        |b| {
            let at = region_entry(b, &META_GUID);
            b[at..at + 16].copy_from_slice(&BAT_GUID);
            fix_regions(b);
        },
        |e| matches!(e, VhdxError::DuplicateRegion { .. }),
    );
}

#[test]
fn misaligned_region() {
    refuse(
        |b| {
            let at = region_entry(b, &BAT_GUID);
            let off = le64(b, at + 16);
            put64(b, at + 16, off + 4096);
            fix_regions(b);
        },
        |e| matches!(e, VhdxError::RegionMisaligned { .. }),
    );
}

#[test]
fn region_beyond_eof() {
    refuse(
        |b| {
            let at = region_entry(b, &BAT_GUID);
            put64(b, at + 16, 1 << 40);
            fix_regions(b);
        },
        |e| matches!(e, VhdxError::RegionBeyondEof { offset, .. } if *offset == 1 << 40),
    );
}

#[test]
fn overlapping_regions() {
    refuse(
        |b| {
            let (meta, _) = region(b, &META_GUID);
            let at = region_entry(b, &BAT_GUID);
            put64(b, at + 16, meta as u64);
            fix_regions(b);
        },
        |e| matches!(e, VhdxError::RegionsOverlap { .. }),
    );
}

#[test]
fn unknown_required_region() {
    refuse(
        |b| {
            let count = le32(b, RT1 + 8) as usize;
            let at = RT1 + 16 + count * 32;
            b[at..at + 16].copy_from_slice(&[0x42; 16]);
            let end = (b.len() as u64 / MIB - 1) * MIB;
            put64(b, at + 16, end);
            put32(b, at + 24, MIB as u32);
            put32(b, at + 28, 1);
            put32(b, RT1 + 8, count as u32 + 1);
            fix_regions(b);
        },
        |e| matches!(e, VhdxError::UnknownRequiredRegion { .. }),
    );
}

#[test]
fn missing_metadata_region() {
    refuse(
        |b| {
            let at = region_entry(b, &META_GUID);
            b[at..at + 16].copy_from_slice(&[0x43; 16]);
            put32(b, at + 28, 0);
            fix_regions(b);
        },
        |e| matches!(e, VhdxError::MissingRegion { name: "metadata" }),
    );
}

#[test]
fn bad_metadata_signature() {
    refuse(
        |b| {
            let (meta, _) = region(b, &META_GUID);
            b[meta] = b'X';
        },
        |e| matches!(e, VhdxError::BadMetadataSignature { .. }),
    );
}

#[test]
fn metadata_count_too_large() {
    refuse(
        |b| {
            let (meta, _) = region(b, &META_GUID);
            b[meta + 10..meta + 12].copy_from_slice(&3000u16.to_le_bytes());
        },
        |e| matches!(e, VhdxError::MetadataCountTooLarge { count: 3000, .. }),
    );
}

#[test]
fn duplicate_metadata_item() {
    refuse(
        |b| {
            let at = metadata_entry(b, &DISK_SIZE_GUID);
            b[at..at + 16].copy_from_slice(&FILE_PARAMS_GUID);
        },
        |e| matches!(e, VhdxError::DuplicateMetadataItem { .. }),
    );
}

#[test]
fn metadata_item_outside_region() {
    refuse(
        |b| {
            let (_, len) = region(b, &META_GUID);
            let at = metadata_entry(b, &DISK_SIZE_GUID);
            put32(b, at + 16, len as u32 - 4);
        },
        |e| matches!(e, VhdxError::MetadataItemOutOfRegion { .. }),
    );
}

#[test]
fn metadata_items_overlap() {
    refuse(
        |b| {
            let params = le32(b, metadata_entry(b, &FILE_PARAMS_GUID) + 16);
            let at = metadata_entry(b, &DISK_SIZE_GUID);
            put32(b, at + 16, params + 4);
        },
        |e| matches!(e, VhdxError::MetadataItemsOverlap { .. }),
    );
}

#[test]
fn unknown_required_metadata() {
    refuse(
        |b| {
            let at = metadata_entry(b, &DISK_SIZE_GUID);
            b[at..at + 16].copy_from_slice(&[0x44; 16]);
            put32(b, at + 24, 4);
        },
        |e| matches!(e, VhdxError::UnknownRequiredMetadata { .. }),
    );
}

#[test]
fn missing_metadata_item() {
    refuse(
        |b| {
            let at = metadata_entry(b, &DISK_SIZE_GUID);
            b[at..at + 16].copy_from_slice(&[0x45; 16]);
            put32(b, at + 24, 0);
        },
        |e| {
            matches!(
                e,
                VhdxError::MissingMetadataItem {
                    name: "virtual disk size"
                }
            )
        },
    );
}

#[test]
fn block_size_not_power_of_two() {
    refuse(
        |b| {
            let at = metadata_value(b, &FILE_PARAMS_GUID);
            put32(b, at, 3 << 20)
        },
        |e| matches!(e, VhdxError::BadBlockSize { block_size } if *block_size == 3 << 20),
    );
    refuse(
        |b| {
            let at = metadata_value(b, &FILE_PARAMS_GUID);
            put32(b, at, 512 << 20)
        },
        |e| matches!(e, VhdxError::BadBlockSize { .. }),
    );
}

#[test]
fn sector_size_not_512_or_4096() {
    refuse(
        |b| {
            let at = metadata_value(b, &LOGICAL_GUID);
            put32(b, at, 1024)
        },
        |e| {
            matches!(
                e,
                VhdxError::BadSectorSize {
                    which: "logical",
                    size: 1024
                }
            )
        },
    );
}

#[test]
fn disk_size_zero_huge_or_unaligned() {
    refuse(
        |b| {
            let at = metadata_value(b, &DISK_SIZE_GUID);
            put64(b, at, 0)
        },
        |e| matches!(e, VhdxError::DiskSizeZero),
    );
    refuse(
        |b| {
            let at = metadata_value(b, &DISK_SIZE_GUID);
            put64(b, at, (64 << 40) + 512)
        },
        |e| matches!(e, VhdxError::DiskSizeTooLarge { .. }),
    );
    refuse(
        |b| {
            let at = metadata_value(b, &DISK_SIZE_GUID);
            put64(b, at, 8 * MIB + 100)
        },
        |e| matches!(e, VhdxError::DiskSizeUnaligned { size, .. } if *size == 8 * MIB + 100),
    );
}

#[test]
fn bat_smaller_than_geometry() {
    refuse(
        |b| {
            let at = metadata_value(b, &DISK_SIZE_GUID);
            put64(b, at, 60 << 40)
        },
        |e| matches!(e, VhdxError::BatTooSmall { .. }),
    );
}

#[test]
fn bat_reserved_bits() {
    refuse(
        |b| {
            let at = first_allocated(b);
            let v = le64(b, at);
            put64(b, at, v | 0x100)
        },
        |e| matches!(e, VhdxError::BatReservedBits { entry, .. } if entry & 0x100 != 0),
    );
}

#[test]
fn bat_state_4_and_5() {
    for state in [4u64, 5] {
        refuse(
            |b| {
                let at = first_allocated(b);
                let v = le64(b, at);
                put64(b, at, (v & !7) | state)
            },
            |e| matches!(e, VhdxError::BatInvalidState { state: s, .. } if u64::from(*s) == state),
        );
    }
}

#[test]
fn block_beyond_eof() {
    refuse(
        |b| {
            let at = first_allocated(b);
            put64(b, at, (1 << 40) | 6)
        },
        |e| matches!(e, VhdxError::BlockBeyondEof { offset, .. } if *offset == 1 << 40),
    );
}

#[test]
fn block_at_offset_zero_or_in_first_mib() {
    refuse(
        |b| {
            let at = first_allocated(b);
            put64(b, at, 6)
        },
        |e| matches!(e, VhdxError::BlockInHeaderArea { offset: 0, .. }),
    );
}

#[test]
fn block_inside_log_bat_or_metadata() {
    for (name, target) in [("log", 0usize), ("BAT", 1), ("metadata", 2)] {
        refuse(
            |b| {
                let offset = match target {
                    0 => log_area(b).0,
                    1 => region(b, &BAT_GUID).0,
                    _ => region(b, &META_GUID).0,
                };
                let at = first_allocated(b);
                put64(b, at, offset as u64 | 6);
            },
            |e| matches!(e, VhdxError::BlockInsideStructure { structure, .. } if *structure == name),
        );
    }
}

#[test]
fn two_blocks_share_storage() {
    refuse(
        |b| {
            let entries = allocated_entries(b);
            let v = le64(b, entries[0]);
            put64(b, entries[1], v);
        },
        |e| matches!(e, VhdxError::BlocksOverlap { .. }),
    );
}

#[test]
fn partially_present_without_parent() {
    refuse(
        |b| {
            let at = first_allocated(b);
            let v = le64(b, at);
            put64(b, at, (v & !7) | 7)
        },
        |e| matches!(e, VhdxError::PartialWithoutParent { .. }),
    );
}

#[test]
fn partially_present_without_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("p.raw");
    make_raw(&raw, 4 * MIB, 61);
    let parent = dir.path().join("p.vhdx");
    let opts = WriteOptions {
        block_size: 1 << 20,
        ..WriteOptions::default()
    };
    write_vhdx(&RawFile::open(&raw).unwrap(), &parent, &opts).unwrap();
    let child = dir.path().join("c.vhdx");
    write_differencing(&parent, &child, &[(3, vec![9; 512])], &opts).unwrap();
    Vhdx::open(&child).unwrap();
    let mut b = std::fs::read(&child).unwrap();
    let (bat, _) = region(&b, &BAT_GUID);
    // 512-byte sectors, 1 MiB blocks: chunk ratio 4096, bitmap at index 4096.
    assert_eq!(le64(&b, bat) & 7, 7);
    assert_eq!(le64(&b, bat + 4096 * 8) & 7, 6);
    put64(&mut b, bat + 4096 * 8, 0);
    std::fs::write(&child, &b).unwrap();
    assert!(matches!(
        Vhdx::open(&child),
        Err(VhdxError::PartialWithoutBitmap { chunk: 0, .. })
    ));
}

#[test]
fn short_file_is_an_error_not_zeros() {
    // A block that lies past the real end of a truncated file.
    let mut b = valid();
    let entries = allocated_entries(&b);
    let last = entries
        .iter()
        .map(|&at| le64(&b, at) & !0xfffff)
        .max()
        .unwrap();
    b.truncate(last as usize + 4096);
    assert!(matches!(
        open_bytes(&b),
        Err(VhdxError::BlockBeyondEof { .. })
    ));
}

#[test]
fn malformed_vhdx_is_not_opened_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.vhdx");
    let mut b = valid();
    b[H1 + 20] ^= 1;
    b[H2 + 20] ^= 1;
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(open_image(&path), Err(VhdxError::NoValidHeader)));
    let raw = dir.path().join("r.img");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    assert_eq!(open_image(&raw).unwrap().size_bytes(), 4096);
}

#[test]
fn random_corruption_never_panics() {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    let mut rng = SmallRng::seed_from_u64(62);
    let base = valid();
    let (bat, _) = region(&base, &BAT_GUID);
    let (meta, _) = region(&base, &META_GUID);
    for _ in 0..200 {
        let mut b = base.clone();
        for _ in 0..4 {
            let area = [H1, RT1, meta, meta + 65536, bat][rng.random_range(0..5)];
            let at = area + rng.random_range(0..256);
            b[at] = rng.random();
        }
        if rng.random_bool(0.5) {
            fix_headers(&mut b);
            fix_regions(&mut b);
        }
        if let Ok(v) = open_bytes(&b) {
            let _ = vmbdev_block::BlockDevice::read_sectors(&v, 0, &mut vec![0u8; 1 << 20]);
        }
    }
}

#[test]
fn undefined_and_unmapped_blocks_read_zeros() {
    let data = {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("src.raw");
        make_raw(&raw, 8 * MIB, 60)
    };
    for state in [1u64, 3] {
        let mut b = valid();
        let at = first_allocated(&b);
        let (bat, _) = region(&b, &BAT_GUID);
        let block = (at - bat) / 8;
        put64(&mut b, at, state);
        let v = open_bytes(&b).unwrap();
        let ours = read_all(&v);
        let mut want = data.clone();
        want[block * MIB as usize..(block + 1) * MIB as usize].fill(0);
        assert_same(&ours, &want, "UNDEFINED/UNMAPPED block");
    }
}
