//! File systems made by the real tools (mkfs.vfat + mcopy, mke2fs -d,
//! mkntfs + wimapply), wrapped in GPT (sgdisk), MBR (sfdisk) or no table,
//! read back through `open_tree` and compared with their source tree.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, RawFile};
use vmbdev_fs::{FileTree, open_tree};
use vmbdev_partition::list_partitions;
use vmbdev_partition::{PartitionScheme, PartitionType};
use vmbdev_tests::faults::FaultyDevice;
use vmbdev_tests::images::*;
use vmbdev_tests::trees::*;

fn open_disk(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(RawFile::open(path).unwrap())
}

fn source(dir: &Path, seed: u64, big: bool) -> std::path::PathBuf {
    let src = dir.join("src");
    make_source_tree(&src, seed, 12, big);
    src
}

/// GUID as sgdisk prints it → on-disk bytes (first three fields
/// little-endian).
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

fn sgdisk_field(info: &str, label: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("sgdisk -i output lacks {label:?}:\n{info}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn fat32_in_gpt_matches_source_and_table_matches_sgdisk() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 1, true);
    let img = fat_image(tmp.path(), &src, 32, 40);
    let disk = tmp.path().join("disk.img");
    let sectors = gpt_disk(&img, &disk, "0700");
    let device = open_disk(&disk);

    let parts = list_partitions(&*device).unwrap();
    assert_eq!(parts.len(), 1);
    let p = &parts[0];
    let info = run_output(Command::new("sgdisk").arg("-i").arg("1").arg(&disk));
    assert_eq!(p.scheme, PartitionScheme::Gpt);
    assert_eq!(p.number, 1);
    assert_eq!(p.first_lba, PART_START);
    assert_eq!(p.last_lba, PART_START + sectors - 1);
    assert_eq!(p.name, "test part");
    assert_eq!(
        p.partition_type,
        PartitionType::Guid(guid_bytes(&sgdisk_field(&info, "Partition GUID code: ")))
    );
    assert_eq!(
        p.unique_guid,
        Some(guid_bytes(&sgdisk_field(&info, "Partition unique GUID: ")))
    );

    let tree = open_tree(device, None).unwrap();
    assert!(assert_tree_matches(&*tree, &src) > 10);
    assert_case_behaviour(&*tree, true);
}

#[test]
fn gpt_backup_header_is_used_when_the_primary_is_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 2, false);
    let img = fat_image(tmp.path(), &src, 16, 16);
    let disk = tmp.path().join("disk.img");
    gpt_disk(&img, &disk, "0700");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[512 + 40] ^= 0x01; // first usable LBA: breaks the primary header's CRC
    let device = mem_device(bytes);
    let parts = list_partitions(&*device).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].first_lba, PART_START);
    let tree = open_tree(device, Some(1)).unwrap();
    assert_tree_matches(&*tree, &src);
}

#[test]
fn fat16_in_mbr_matches_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 3, true);
    let img = fat_image(tmp.path(), &src, 16, 16);
    let disk = tmp.path().join("disk.img");
    let sectors = mbr_disk(&img, &disk, "e");
    let device = open_disk(&disk);
    let parts = list_partitions(&*device).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].scheme, PartitionScheme::Mbr);
    assert_eq!(parts[0].partition_type, PartitionType::MbrType(0x0E));
    assert_eq!(
        (parts[0].first_lba, parts[0].sector_count()),
        (PART_START, sectors)
    );
    let tree = open_tree(device, Some(1)).unwrap();
    assert_tree_matches(&*tree, &src);
    assert_case_behaviour(&*tree, true);
}

#[test]
fn fat12_on_a_whole_disk_matches_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 4, false);
    let img = fat_image(tmp.path(), &src, 12, 4);
    let device = open_disk(&img);
    let parts = list_partitions(&*device).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].scheme, PartitionScheme::WholeDisk);
    let tree = open_tree(device, None).unwrap();
    assert_tree_matches(&*tree, &src);
    assert_case_behaviour(&*tree, true);
}

#[test]
fn ext4_in_gpt_matches_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 5, true);
    let img = ext4_image(tmp.path(), &src, 16);
    let disk = tmp.path().join("disk.img");
    gpt_disk(&img, &disk, "8300");
    let tree = open_tree(open_disk(&disk), None).unwrap();
    assert_tree_matches(&*tree, &src);
    assert_case_behaviour(&*tree, false);
}

#[test]
fn ext4_in_mbr_and_on_a_whole_disk_match_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 6, false);
    let img = ext4_image(tmp.path(), &src, 8);
    let disk = tmp.path().join("disk.img");
    mbr_disk(&img, &disk, "83");
    let tree = open_tree(open_disk(&disk), None).unwrap();
    assert_tree_matches(&*tree, &src);
    let whole = open_tree(open_disk(&img), None).unwrap();
    assert_tree_matches(&*whole, &src);
}

#[test]
fn ntfs_in_gpt_matches_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 7, true);
    let img = ntfs_image(tmp.path(), &src, 16);
    let disk = tmp.path().join("disk.img");
    gpt_disk(&img, &disk, "0700");
    let tree = open_tree(open_disk(&disk), None).unwrap();
    assert_tree_matches(&*tree, &src);
    assert_case_behaviour(&*tree, true);
}

#[test]
fn ntfs_in_mbr_matches_source() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 8, false);
    let img = ntfs_image(tmp.path(), &src, 8);
    let disk = tmp.path().join("disk.img");
    mbr_disk(&img, &disk, "7");
    let tree = open_tree(open_disk(&disk), Some(1)).unwrap();
    assert_tree_matches(&*tree, &src);
}

#[test]
fn open_tree_skips_partitions_without_a_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 9, false);
    let img = fat_image(tmp.path(), &src, 16, 16);
    let disk = tmp.path().join("disk.img");
    let sectors = (16u64 << 20) / 512;
    blank(&disk, (PART_START + 2048 + sectors + 2048) * 512);
    // Partition 1 is blank; partition 2 holds the file system.
    run(Command::new("sgdisk")
        .arg(format!("--new=1:{}:{}", PART_START, PART_START + 2047))
        .arg(format!(
            "--new=2:{}:{}",
            PART_START + 2048,
            PART_START + 2048 + sectors - 1
        ))
        .arg(&disk));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&std::fs::read(&img).unwrap(), (PART_START + 2048) * 512)
            .unwrap();
    }
    let device = open_disk(&disk);
    assert!(matches!(
        open_tree(device.clone(), Some(1)),
        Err(vmbdev_fs::OpenTreeError::Unrecognised { number: 1 })
    ));
    assert!(open_tree(device.clone(), Some(3)).is_err());
    let tree = open_tree(device, None).unwrap();
    assert_tree_matches(&*tree, &src);
}

#[test]
fn partition_device_refuses_reads_outside_the_partition() {
    let device = mem_device(vec![0u8; 64 * 512]);
    let part = vmbdev_partition::PartitionDevice::new(device.clone(), 8, 16).unwrap();
    assert_eq!(part.sector_count(), 16);
    let mut buf = vec![0u8; 512];
    part.read_sectors(15, &mut buf).unwrap();
    assert!(part.read_sectors(16, &mut buf).is_err());
    assert!(part.read_sectors(u64::MAX, &mut buf).is_err());
    let mut two = vec![0u8; 1024];
    assert!(part.read_sectors(15, &mut two).is_err());
    assert!(vmbdev_partition::PartitionDevice::new(device, 60, 8).is_err());
}

#[test]
fn file_trees_are_send_and_sync() {
    fn check<T: Send + Sync + ?Sized>() {}
    check::<dyn FileTree>();
    check::<vmbdev_fs::NtfsTree>();
    check::<vmbdev_fs::Ext4Tree>();
    check::<vmbdev_fs::FatTree>();
}

#[test]
fn survey_reports_each_partition_with_its_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 10, false);
    let fat = fat_image(tmp.path(), &src, 16, 16);
    let ext4 = ext4_image(tmp.path(), &src, 8);
    let disk = tmp.path().join("disk.img");
    let fat_sectors = (16u64 << 20) / 512;
    let ext4_sectors = (8u64 << 20) / 512;
    let second = PART_START + fat_sectors;
    blank(&disk, (second + ext4_sectors + 4096) * 512);
    run(Command::new("sgdisk")
        .arg(format!("--new=1:{}:{}", PART_START, second - 1))
        .arg(format!("--new=2:{}:{}", second, second + ext4_sectors - 1))
        .arg(format!(
            "--new=3:{}:{}",
            second + ext4_sectors,
            second + ext4_sectors + 2047
        ))
        .arg(&disk));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&std::fs::read(&fat).unwrap(), PART_START * 512)
            .unwrap();
        f.write_all_at(&std::fs::read(&ext4).unwrap(), second * 512)
            .unwrap();
    }
    use vmbdev_fs::FsKind;
    let summary = vmbdev_fs::survey(open_disk(&disk)).unwrap();
    let found: Vec<(usize, Option<FsKind>)> = summary
        .iter()
        .map(|s| (s.info.number, s.file_system))
        .collect();
    assert_eq!(
        found,
        [(1, Some(FsKind::Fat)), (2, Some(FsKind::Ext4)), (3, None)]
    );
    let ext = open_tree(open_disk(&disk), Some(2)).unwrap();
    assert_tree_matches(&*ext, &src);
    assert_case_behaviour(&*ext, false);

    // With the protective MBR wiped, the GPT is still found.
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[..512].fill(0);
    assert_eq!(list_partitions(&*mem_device(bytes)).unwrap().len(), 3);
}

#[test]
fn whole_disk_volumes_on_4k_sector_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 12, false);
    let fat = fat_image(tmp.path(), &src, 16, 16);
    let ext4 = ext4_image(tmp.path(), &src, 8);
    let ntfs = ntfs_image(tmp.path(), &src, 8);
    for img in [fat, ext4, ntfs] {
        let device: Arc<dyn BlockDevice> =
            Arc::new(RawFile::open_with_sector_size(&img, 4096).unwrap());
        let tree = open_tree(device, None).unwrap();
        assert_tree_matches(&*tree, &src);
    }
}

/// Reading near the end of a large file, or through it in order, reads
/// about as many device bytes as file bytes: no read starts over from the
/// beginning of the file.
#[test]
fn reads_at_an_offset_do_not_reread_the_file() {
    use vmbdev_fs::TreePath;
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 13, true);
    let images = [
        fat_image(tmp.path(), &src, 32, 40),
        ext4_image(tmp.path(), &src, 16),
        ntfs_image(tmp.path(), &src, 16),
    ];
    let path = TreePath::parse("docs/big file.bin");
    let want = std::fs::read(src.join("docs/big file.bin")).unwrap();
    let size = want.len() as u64;
    for img in images {
        let counter = Arc::new(FaultyDevice::new(open_disk(&img), Vec::new()));
        let tree = open_tree(counter.clone(), None).unwrap();
        assert_eq!(tree.lookup(&path).unwrap().size, size);

        let before = counter.bytes_read();
        let mut tail = vec![0u8; 4096];
        assert_eq!(tree.read_at(&path, size - 4096, &mut tail).unwrap(), 4096);
        assert_eq!(tail, want[want.len() - 4096..]);
        let tail_cost = counter.bytes_read() - before;
        assert!(
            tail_cost < size / 8,
            "{img:?}: reading the last 4 KiB read {tail_cost} bytes"
        );

        let before = counter.bytes_read();
        let mut chunk = vec![0u8; 65536];
        let mut offset = 0;
        while offset < size {
            offset += tree.read_at(&path, offset, &mut chunk).unwrap() as u64;
        }
        let whole_cost = counter.bytes_read() - before;
        assert!(
            whole_cost < size * 2,
            "{img:?}: reading {size} bytes read {whole_cost} bytes"
        );
    }
}

#[test]
fn logical_partition_in_an_extended_mbr_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 14, false);
    let img = fat_image(tmp.path(), &src, 16, 16);
    let sectors = (16u64 << 20) / 512;
    let disk = tmp.path().join("disk.img");
    let logical_start = 6144;
    blank(&disk, (logical_start + sectors + 2048) * 512);
    let script = format!(
        "label: dos\n2048,2048,83\n4096,{},5\n{logical_start},{sectors},e\n",
        2048 + sectors
    );
    let mut child = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run sfdisk (is it installed?)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&std::fs::read(&img).unwrap(), logical_start * 512)
            .unwrap();
    }
    let device = open_disk(&disk);
    let parts = list_partitions(&*device).unwrap();
    let found: Vec<(usize, u64, u64)> = parts
        .iter()
        .map(|p| (p.number, p.first_lba, p.sector_count()))
        .collect();
    assert_eq!(found, [(1, 2048, 2048), (5, logical_start, sectors)]);
    let tree = open_tree(device.clone(), Some(5)).unwrap();
    assert_tree_matches(&*tree, &src);
    let tree = open_tree(device, None).unwrap();
    assert_tree_matches(&*tree, &src);
}

#[test]
fn trees_serve_several_threads_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 15, true);
    let images = [
        fat_image(tmp.path(), &src, 32, 40),
        ext4_image(tmp.path(), &src, 16),
        ntfs_image(tmp.path(), &src, 16),
    ];
    for img in images {
        let tree = open_tree(open_disk(&img), None).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| assert_tree_matches(&*tree, &src));
            }
        });
    }
}
