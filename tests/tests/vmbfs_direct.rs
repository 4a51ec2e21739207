//! vmbfs RDMA reads from a tree that says where file bytes live go from the
//! host file straight into the guest's registered pages: the bytes equal
//! the source files, and the tree's copying read is never used for them.

use futures_lite::future::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::{FileExtent, FileTree, HostDirTree, Metadata, TreeError, TreePath};
use vmbdev_loopback::vm::{LoopbackVm, VmConfig};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};

const MIB: usize = 1 << 20;

/// A host directory that counts its copying reads and extent queries.
struct Counting {
    inner: HostDirTree,
    reads: AtomicU64,
    locates: AtomicU64,
}

impl FileTree for Counting {
    fn lookup(&self, path: &TreePath) -> Result<Metadata, TreeError> {
        self.inner.lookup(path)
    }
    fn read_at(&self, path: &TreePath, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(path, offset, buf)
    }
    fn read_dir(&self, path: &TreePath) -> Result<Vec<(String, Metadata)>, TreeError> {
        self.inner.read_dir(path)
    }
    fn locate(
        &self,
        path: &TreePath,
        offset: u64,
        len: u64,
    ) -> Result<Option<FileExtent<'_>>, TreeError> {
        self.locates.fetch_add(1, Ordering::Relaxed);
        self.inner.locate(path, offset, len)
    }
}

#[test]
fn rdma_reads_of_a_host_directory_skip_the_copy_and_match_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(12);
    let mut files = Vec::new();
    for (name, len) in [
        ("one", 1),
        ("page", 4096),
        ("odd", 12277),
        ("big.bin", 3 * MIB + 77),
        ("sub/over-chunk.bin", 7 * MIB + 4099),
    ] {
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.push((name, data));
    }
    let tree = Arc::new(Counting {
        inner: HostDirTree::open(dir.path()).unwrap(),
        reads: AtomicU64::new(0),
        locates: AtomicU64::new(0),
    });
    let dev = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree: tree.clone(),
        rdma_enabled: true,
    }));
    for use_rdma in [true, false] {
        let vm = LoopbackVm::new(&VmConfig::default()).unwrap();
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm, dev.clone()), use_rdma);
        block_on(async {
            client.open_volume().await.unwrap();
            for (path, data) in &files {
                let got = client.read_all(path).await.unwrap();
                assert!(got == *data, "{path} differs (rdma {use_rdma})");
            }
            client.close().await.unwrap();
        });
        if use_rdma {
            let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
            assert_eq!(client.stats().rdma_bytes, total);
            assert_eq!(tree.reads.load(Ordering::Relaxed), 0, "RDMA used read_at");
            assert!(tree.locates.load(Ordering::Relaxed) >= files.len() as u64);
        } else {
            // In-band reads still copy through the tree.
            assert!(tree.reads.load(Ordering::Relaxed) > 0);
        }
    }
    assert_eq!(dev.stats().protocol.total_bad_input(), 0);
}
