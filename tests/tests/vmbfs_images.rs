//! vmbfs serving real file-system images made by mkfs (ext4 with
//! `mke2fs -d`, FAT with mkfs.vfat + mcopy) inside an MBR-partitioned raw
//! disk, read back through the UEFI-like client in-band and by RDMA and
//! compared with the source directory.

use futures_lite::future::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vmbdev_block::RawFile;
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::open_tree;
use vmbdev_loopback::vm::{LoopbackVm, VmConfig};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};
use vmbdev_tests::images::{mbr_disk, run};

/// Source files: boundary sizes around the 12276-byte chunk, one over a
/// MiB, nested directories.
fn make_source(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut rng = SmallRng::seed_from_u64(7);
    let files = [
        ("EFI/BOOT/BOOTX64.EFI", 1_300_001usize),
        ("EFI/BOOT/exact.bin", 12276),
        ("EFI/BOOT/above.bin", 12277),
        ("hive", 1),
        ("empty", 0),
    ];
    files
        .iter()
        .map(|(path, len)| {
            let mut data = vec![0u8; *len];
            rng.fill(&mut data[..]);
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, &data).unwrap();
            (path.to_string(), data)
        })
        .collect()
}

fn serve_and_compare(disk: &PathBuf, files: &[(String, Vec<u8>)]) {
    let tree = open_tree(Arc::new(RawFile::open(disk).unwrap()), None).unwrap();
    let dev = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree,
        rdma_enabled: true,
    }));
    for use_rdma in [false, true] {
        let vm = LoopbackVm::new(&VmConfig::default()).unwrap();
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm, dev.clone()), use_rdma);
        block_on(async {
            for (path, data) in files {
                let got = client.read_all(path).await.unwrap();
                assert!(got == *data, "{path} differs (rdma {use_rdma})");
                let info = client.file_info(path).await.unwrap();
                assert_eq!(info.size, data.len() as u64);
            }
            let dir = client.file_info("EFI\\BOOT").await.unwrap();
            assert!(dir.directory);
            assert!(
                client
                    .read_all("EFI/nope")
                    .await
                    .unwrap_err()
                    .is_not_found()
            );
        });
        if use_rdma {
            assert!(client.stats().rdma_bytes > 0);
        }
    }
    assert_eq!(dev.stats().protocol.total_bad_input(), 0);
}

#[test]
fn ext4_image_made_by_mke2fs_served_over_vmbfs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_source(&src);
    let fs = dir.path().join("ext4.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&fs)
        .arg("8M"));
    let disk = dir.path().join("disk.raw");
    mbr_disk(&fs, &disk, "83");
    serve_and_compare(&disk, &files);
}

#[test]
fn fat_image_made_by_mkfs_vfat_served_over_vmbfs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_source(&src);
    let fs = dir.path().join("fat.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    run(Command::new("mkfs.vfat")
        .args(["-F", "16", "-n", "BOOT"])
        .arg(&fs));
    let entries: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&fs)
        .arg("-s")
        .args(&entries)
        .arg("::/"));
    let disk = dir.path().join("disk.raw");
    mbr_disk(&fs, &disk, "6");
    serve_and_compare(&disk, &files);
}
