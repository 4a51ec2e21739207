//! Damaged and crafted images: truncated, bit-flipped and hand-patched FAT,
//! NTFS and ext4 volumes and partition tables must give errors, never a
//! panic, an abort or a runaway allocation. Includes one input for each
//! known defect of the file-system crates.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vmbdev_block::{BlockDevice, BlockError};
use vmbdev_fs::{EntryKind, OpenTreeError, TreeError, TreePath, open_tree};
use vmbdev_partition::list_partitions;
use vmbdev_tests::images::*;
use vmbdev_tests::trees::*;

/// A device over a shared image with some bytes XOR-ed on the fly and an
/// optional limit past which reads fail, so hundreds of variants cost no
/// copies.
struct MutatedDevice {
    base: Arc<Vec<u8>>,
    flips: Vec<(usize, u8)>,
    readable: usize,
}

impl BlockDevice for MutatedDevice {
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn sector_count(&self) -> u64 {
        self.base.len() as u64 / 512
    }
    fn disk_id(&self) -> [u8; 16] {
        [1; 16]
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let start = vmbdev_block::check_request(self, lba, buf.len())? as usize;
        let end = start + buf.len();
        if end > self.readable {
            return Err(BlockError::ShortRead {
                path: "mutated".into(),
                offset: start as u64,
                wanted: buf.len(),
                got: self.readable.saturating_sub(start),
            });
        }
        buf.copy_from_slice(&self.base[start..end]);
        for &(at, mask) in &self.flips {
            if (start..end).contains(&at) {
                buf[at - start] ^= mask;
            }
        }
        Ok(())
    }
}

fn small_source(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    make_source_tree(&src, 99, 4, false);
    src
}

/// Sectors of the image that are not all zero: where metadata lives (the
/// source tree is small, so most of these are metadata).
fn nonzero_sectors(image: &[u8]) -> Vec<usize> {
    image
        .chunks(512)
        .enumerate()
        .filter(|(_, s)| s.iter().any(|&b| b != 0))
        .map(|(i, _)| i)
        .collect()
}

/// Opens and walks `rounds` variants of `image`, each with a few random
/// bit flips in non-zero sectors. Errors are fine; a panic fails the test.
fn bit_flip_rounds(image: Vec<u8>, seed: u64, rounds: usize) -> (usize, usize) {
    let targets = nonzero_sectors(&image);
    assert!(!targets.is_empty());
    let base = Arc::new(image);
    let readable = base.len();
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut opened, mut failed) = (0, 0);
    for _ in 0..rounds {
        let flips = (0..rng.random_range(1..=4))
            .map(|_| {
                let sector = targets[rng.random_range(0..targets.len())];
                (
                    sector * 512 + rng.random_range(0..512),
                    1u8 << rng.random_range(0..8),
                )
            })
            .collect();
        let device: Arc<dyn BlockDevice> = Arc::new(MutatedDevice {
            base: base.clone(),
            flips,
            readable,
        });
        match open_tree(device, None) {
            Ok(tree) => {
                opened += 1;
                walk_everything(&*tree);
            }
            Err(_) => failed += 1,
        }
    }
    (opened, failed)
}

/// Opens `image` cut at several lengths and walks whatever opens.
fn truncations(image: &[u8]) {
    let len = image.len();
    for cut in [
        0,
        511,
        512,
        1024,
        4096,
        65536,
        len / 4,
        len / 2,
        len - 4096,
        len - 512,
    ] {
        let device = mem_device(image[..cut.min(len)].to_vec());
        if let Ok(tree) = open_tree(device, None) {
            walk_everything(&*tree);
        }
    }
}

#[test]
fn bit_flipped_and_truncated_fat_volumes_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    for (bits, mib) in [(12, 2), (16, 16), (32, 33)] {
        let img = std::fs::read(fat_image(tmp.path(), &src, bits, mib)).unwrap();
        truncations(&img);
        let (opened, _) = bit_flip_rounds(img, bits.into(), 300);
        assert!(
            opened > 0,
            "FAT{bits}: no variant opened; the mutation is too coarse"
        );
    }
}

#[test]
fn bit_flipped_and_truncated_ext4_volumes_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let img = std::fs::read(ext4_image(tmp.path(), &src, 8)).unwrap();
    truncations(&img);
    let (opened, _) = bit_flip_rounds(img, 4, 300);
    assert!(opened > 0);
}

#[test]
fn bit_flipped_and_truncated_ntfs_volumes_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let img = std::fs::read(ntfs_image(tmp.path(), &src, 8)).unwrap();
    truncations(&img);
    let (opened, _) = bit_flip_rounds(img, 5, 300);
    assert!(opened > 0);
}

#[test]
fn damaged_partition_tables_give_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let fs = fat_image(tmp.path(), &src, 16, 16);
    let gpt = tmp.path().join("gpt.img");
    gpt_disk(&fs, &gpt, "0700");
    let gpt = std::fs::read(&gpt).unwrap();

    // Both GPT headers broken: an error naming the GPT, not a guess.
    let mut both = gpt.clone();
    both[512 + 24] ^= 1;
    let last = both.len() - 512;
    both[last + 24] ^= 1;
    assert!(matches!(
        list_partitions(&*mem_device(both)),
        Err(vmbdev_partition::PartitionError::CorruptGpt { .. })
    ));
    // A broken entry array (primary) falls back to the backup's copy.
    let mut entries = gpt.clone();
    entries[1024 + 32] ^= 0x10;
    assert_eq!(list_partitions(&*mem_device(entries)).unwrap().len(), 1);

    // An MBR entry past the end of the disk.
    let mbr = tmp.path().join("mbr.img");
    mbr_disk(&fs, &mbr, "e");
    let mut mbr = std::fs::read(&mbr).unwrap();
    mbr[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        list_partitions(&*mem_device(mbr.clone())),
        Err(vmbdev_partition::PartitionError::CorruptMbr { number: 1, .. })
    ));
    // An extended partition whose EBR chain loops (0 → 1 → 2 → 1 ...)
    // ends with an error instead of spinning.
    mbr[446 + 4] = 0x05;
    mbr[446 + 12..446 + 16].copy_from_slice(&16u32.to_le_bytes());
    for (ebr_sector, next) in [(0usize, 1u32), (1, 2), (2, 1)] {
        let ebr = (2048 + ebr_sector) * 512;
        mbr[ebr..ebr + 512].fill(0);
        mbr[ebr + 510] = 0x55;
        mbr[ebr + 511] = 0xAA;
        mbr[ebr + 446 + 16 + 4] = 0x05;
        mbr[ebr + 446 + 16 + 8..ebr + 446 + 16 + 12].copy_from_slice(&next.to_le_bytes());
        mbr[ebr + 446 + 16 + 12..ebr + 446 + 16 + 16].copy_from_slice(&1u32.to_le_bytes());
    }
    assert!(matches!(
        list_partitions(&*mem_device(mbr)),
        Err(vmbdev_partition::PartitionError::CorruptMbr { .. })
    ));

    // Seeded flips over the table sectors of both copies.
    let base = Arc::new(gpt);
    let len = base.len();
    let mut rng = SmallRng::seed_from_u64(6);
    for _ in 0..300 {
        let sector = if rng.random_bool(0.5) {
            rng.random_range(0..34)
        } else {
            len / 512 - 1 - rng.random_range(0..33)
        };
        let device = MutatedDevice {
            base: base.clone(),
            flips: vec![(
                sector * 512 + rng.random_range(0..512),
                1 << rng.random_range(0..8),
            )],
            readable: len,
        };
        let _ = list_partitions(&device);
        if let Ok(tree) = open_tree(Arc::new(device), None) {
            walk_everything(&*tree);
        }
    }
}

/// ntfs 0.4 panics when its reader comes up short. Reads that fail part
/// way into the volume must surface as errors.
#[test]
fn ntfs_short_reads_give_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let img = std::fs::read(ntfs_image(tmp.path(), &src, 8)).unwrap();
    let base = Arc::new(img);
    let len = base.len();
    // Truncated images are refused before the crate sees them.
    let cut = mem_device(base[..len / 2].to_vec());
    assert!(open_tree(cut, None).is_err());
    // The boot sector is intact but reads fail from some point on.
    let mut failures = 0;
    for limit in (1..16).map(|i| i * len / 16) {
        let device = Arc::new(MutatedDevice {
            base: base.clone(),
            flips: Vec::new(),
            readable: limit,
        });
        match open_tree(device, None) {
            Err(_) => failures += 1,
            Ok(tree) => walk_everything(&*tree),
        }
    }
    assert!(failures > 0, "no read limit made mounting fail");
}

/// fatfs 0.3.6 underflows on cluster numbers below 2; our reader refuses
/// them as corruption.
#[test]
fn fat_cluster_numbers_below_two_are_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let img = std::fs::read(fat_image(tmp.path(), &src, 32, 33)).unwrap();

    // A file whose first cluster is 1.
    let entry = img
        .windows(11)
        .position(|w| w == b"ONE     BIN")
        .expect("8.3 entry of one.bin");
    for cluster in [0u16, 1] {
        let mut patched = img.clone();
        patched[entry + 20..entry + 22].copy_from_slice(&0u16.to_le_bytes());
        patched[entry + 26..entry + 28].copy_from_slice(&cluster.to_le_bytes());
        let tree = open_tree(mem_device(patched), None).unwrap();
        let mut buf = [0u8; 16];
        let err = tree
            .read_at(&TreePath::parse("one.bin"), 0, &mut buf)
            .unwrap_err();
        assert!(
            matches!(err, TreeError::Corrupt(_)),
            "cluster {cluster}: {err:?}"
        );
    }
    // A FAT32 root directory at cluster 0 or 1.
    for root in [0u32, 1] {
        let mut patched = img.clone();
        patched[44..48].copy_from_slice(&root.to_le_bytes());
        let err = open_tree(mem_device(patched), None)
            .err()
            .expect("mount must fail");
        assert!(
            matches!(
                err,
                OpenTreeError::Mount {
                    source: TreeError::Corrupt(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

/// ext4-view 1.0 sizes its block-group table from the superblock and
/// aborts on a huge one; the superblock is checked first.
#[test]
fn ext4_superblock_implying_a_huge_group_table_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let img = std::fs::read(ext4_image(tmp.path(), &src, 8)).unwrap();
    let sb = 1024;
    let patches: [(usize, u32); 3] = [
        (4, u32::MAX),  // s_blocks_count_lo: 4 G blocks
        (32, 1),        // s_blocks_per_group: one block per group
        (40, u32::MAX), // s_inodes_per_group
    ];
    for (field, value) in patches {
        let mut patched = img.clone();
        patched[sb + field..sb + field + 4].copy_from_slice(&value.to_le_bytes());
        let err = open_tree(mem_device(patched), None)
            .err()
            .expect("mount must fail");
        assert!(
            matches!(
                err,
                OpenTreeError::Mount {
                    source: TreeError::Corrupt(_),
                    ..
                }
            ),
            "field {field}: {err:?}"
        );
    }
}

/// `Ext4::read` allocates the whole file; a sparse 1 TiB file shows that
/// reads are done at an offset in bounded chunks instead.
#[test]
fn ext4_huge_sparse_file_is_read_at_an_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let size = 1u64 << 40;
    let f = std::fs::File::create(src.join("huge.bin")).unwrap();
    f.set_len(size).unwrap();
    {
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"tail", size - 4).unwrap();
    }
    drop(f);
    let img = ext4_image(tmp.path(), &src, 8);
    let tree = open_tree(mem_device(std::fs::read(img).unwrap()), None).unwrap();
    let path = TreePath::parse("huge.bin");
    let meta = tree.lookup(&path).unwrap();
    assert_eq!((meta.kind, meta.size), (EntryKind::File, size));
    let mut buf = [0xAAu8; 16];
    assert_eq!(tree.read_at(&path, size - 10, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"\0\0\0\0\0\0tail");
    assert_eq!(tree.read_at(&path, 1 << 30, &mut buf).unwrap(), 16);
    assert_eq!(buf, [0u8; 16]);
}

/// The ntfs crate allocates each index record at the size the directory's
/// index root announces; a huge value is refused before that.
#[test]
fn ntfs_huge_index_record_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_source(tmp.path());
    let img = std::fs::read(ntfs_image(tmp.path(), &src, 8)).unwrap();
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([img[at], img[at + 1]]));
    let u32_at = |at: usize| u32::from_le_bytes(img[at..at + 4].try_into().unwrap()) as usize;
    let cluster = u16_at(11) * usize::from(img[13]);
    let mft = u64::from_le_bytes(img[48..56].try_into().unwrap()) as usize * cluster;
    // Record 5 is the root directory; walk its attributes to $INDEX_ROOT.
    let record = mft + 5 * 1024;
    assert_eq!(&img[record..record + 4], b"FILE");
    let mut attr = record + u16_at(record + 0x14);
    while u32_at(attr) != 0x90 {
        assert_ne!(
            u32_at(attr),
            0xFFFF_FFFF,
            "no $INDEX_ROOT in the root record"
        );
        attr += u32_at(attr + 4);
    }
    let value = attr + u16_at(attr + 0x14);
    assert_eq!(
        u32_at(value + 8),
        4096,
        "index record size as mkntfs writes it"
    );
    let mut patched = img.clone();
    patched[value + 8..value + 12].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    let result = open_tree(mem_device(patched), None).and_then(|tree| {
        tree.read_dir(&TreePath::root())
            .map_err(|source| OpenTreeError::Mount {
                number: 0,
                kind: vmbdev_fs::FsKind::Ntfs,
                source,
            })
    });
    let err = result.expect_err("a huge index record size must be refused");
    assert!(format!("{err}").contains("index record size"), "{err}");
}

/// `ext4-view` reads a slow link's whole target into memory at the size
/// its inode claims (the fuzzer's finding: 2.5 GB for one listing). A link
/// claiming more than Linux stores is corrupt: listed without a target,
/// refused in the middle of a path, never read.
#[test]
fn ext4_link_claiming_a_huge_target_is_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/file.txt"), b"x").unwrap();
    let slow = format!("{}/../dir", "d".repeat(100));
    std::os::unix::fs::symlink(&slow, src.join("slow")).unwrap();
    let img = ext4_image(tmp.path(), &src, 8);
    // debugfs keeps a link's size to 32 bits; 2.25 GiB is past any bound.
    let huge = 0x9000_0000u64;
    let request = format!("sif /slow size {huge:#x}");
    tool("debugfs", &["-w", "-R", &request, path_str(&img)]);
    let stat = tool("debugfs", &["-R", "stat /slow", path_str(&img)]);
    assert!(stat.contains(&format!("Size: {huge}")), "{stat}");
    let tree = open_tree(mem_device(std::fs::read(&img).unwrap()), None).unwrap();

    let listing = tree.read_dir(&TreePath::root()).unwrap();
    let (_, meta) = listing.iter().find(|(name, _)| name == "slow").unwrap();
    assert_eq!((meta.kind, meta.size), (EntryKind::Symlink, huge));
    assert_eq!(meta.link_target, None);
    assert_eq!(tree.lookup(&TreePath::parse("slow")).unwrap(), *meta);
    // Through the link (as a directory, or to list it) is refused, naming
    // the link and its size.
    let names_the_size = |path: &str, err: TreeError| match err {
        TreeError::Corrupt(text) => assert!(
            text.contains(&format!("/{path}: a symbolic link of {huge} bytes")),
            "{text}"
        ),
        other => panic!("{path}: {other:?}"),
    };
    let through = TreePath::parse("slow/file.txt");
    names_the_size("slow/file.txt", tree.lookup(&through).unwrap_err());
    names_the_size("slow", tree.read_dir(&TreePath::parse("slow")).unwrap_err());
    // The file itself is still there.
    assert_eq!(
        tree.lookup(&TreePath::parse("dir/file.txt")).unwrap().size,
        1
    );
}
