//! The vmbfs guest-driver behaviours against a vmbfs device in a child
//! process, through the proxy plugged into the loopback VM: open and
//! negotiation, file info, in-band and RDMA reads checked byte for byte
//! against the source, kill -9 during I/O, and a new process restored from
//! the last saved state serving the same memory and rings.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{ServerProcess, within};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_guest::vmbfs::VmbfsClientError;
use vmbdev_loopback::vm::{LoopbackVm, VmConfig};
use vmbdev_loopback::vmbfs::{ResumeDevice, VmbfsClient, VmbfsLoopback};
use vmbdev_ring::pipe::MAX_MESSAGE_LEN;

const MIB: usize = 1 << 20;

/// Files with sizes around the in-band and RDMA chunk boundaries, written
/// into `dir` with bytes from a simple generator (not from the code under
/// test); also returned as a map.
fn write_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let sizes = [
        ("empty", 0),
        ("one", 1),
        ("EFI/BOOT/below", 12275),
        ("EFI/BOOT/exact", 12276),
        ("EFI/BOOT/above", 12277),
        ("EFI/Microsoft/Boot/big.bin", 3 * MIB + 77),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut files = BTreeMap::new();
    for (path, len) in sizes {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, &data).unwrap();
        files.insert(path.to_owned(), data);
    }
    files
}

fn vm() -> LoopbackVm {
    LoopbackVm::new(&VmConfig::default()).unwrap()
}

#[test]
fn every_file_reads_back_in_band_and_by_rdma_through_the_remote_device() {
    let tree = tempfile::tempdir().unwrap();
    let files = write_tree(tree.path());
    let mut server = ServerProcess::spawn("vmbfs", tree.path());
    let device: Arc<dyn VmbusDevice> = Arc::new(server.connect());
    assert_eq!(device.offer().name, "vmbfs-boot");
    for use_rdma in [false, true] {
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), device.clone()), use_rdma);
        within(async {
            client.open_volume().await.unwrap();
            let info = client.file_info("EFI/BOOT/exact").await.unwrap();
            assert_eq!(info.size, 12276);
            assert!(info.rdma_capable);
            for (path, data) in &files {
                let got = client.read_all(path).await.unwrap();
                assert!(got == *data, "{path} differs (rdma {use_rdma})");
            }
            assert!(
                client
                    .file_info("no/such/file")
                    .await
                    .unwrap_err()
                    .is_not_found()
            );
            client.close().await.unwrap();
        })
        .expect("hang guard");
        let stats = client.stats();
        let total: u64 = files.values().map(|d| d.len() as u64).sum();
        if use_rdma {
            assert_eq!(stats.rdma_bytes, total);
            assert_eq!(stats.in_band_bytes, 0);
        } else {
            assert_eq!(stats.in_band_bytes, total);
            assert_eq!(stats.rdma_bytes, 0);
        }
    }
}

#[test]
fn kill_9_during_io_ends_the_channel_and_a_restored_process_serves_the_same_rings() {
    let tree = tempfile::tempdir().unwrap();
    let files = write_tree(tree.path());
    let path = "EFI/Microsoft/Boot/big.bin";
    let data = &files[path];
    let mut first_server = ServerProcess::spawn("vmbfs", tree.path());
    let first = Arc::new(first_server.connect());
    // In-band reads: the saved state then holds no RDMA registration that
    // later traffic could change.
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), first.clone()), false);
    let quarter = data.len() / 4;
    let got = within(client.read(path, 0, quarter)).unwrap().unwrap();
    assert!(got[..] == data[..quarter]);
    // The last quiescent point: the state a new process resumes from.
    within(client.suspend_device()).unwrap().unwrap();
    let saved = first.save().unwrap();
    // An open resets the protocol state unless state was restored.
    first.restore(&saved).unwrap();
    client.resume_device(first.clone()).unwrap();

    // Die in the middle of a stream of reads.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        first_server.kill();
        first_server
    });
    let lost = within(async {
        loop {
            if let Err(e) = client.read(path, quarter as u64, quarter).await {
                return e;
            }
        }
    })
    .expect("a guest request waited on a dead device");
    drop(killer.join().unwrap());
    assert!(
        matches!(&lost, VmbfsClientError::DeviceStopped(text) if text.contains("connection to the peer is lost")),
        "{lost:?}"
    );
    assert!(!first.is_connected());
    assert!(first.save().is_err(), "a dead device saves nothing");

    // The rings as the dead process left them: replies it wrote that the
    // client gave up on are dropped; a request it never consumed will be
    // answered by the next process, and that reply dropped too.
    let channel = client.channel_mut().unwrap();
    while channel.endpoint.try_read().unwrap().is_some() {}
    let request_ring = channel.endpoint.writer.half();
    let unconsumed =
        request_ring.load_read_index().unwrap() != request_ring.load_write_index().unwrap();

    // A new process, restored from the last saved state, on the same
    // memory and rings.
    let mut second_server = ServerProcess::spawn("vmbfs", tree.path());
    let second = Arc::new(second_server.connect());
    second.restore(&saved).unwrap();
    client.resume_device(second.clone()).unwrap();
    if unconsumed {
        let endpoint = &mut client.channel_mut().unwrap().endpoint;
        within(endpoint.recv_pipe(MAX_MESSAGE_LEN))
            .expect("the pending request was never answered")
            .unwrap();
    }
    let rest = within(client.read(path, quarter as u64, data.len()))
        .unwrap()
        .unwrap();
    assert!(
        rest[..] == data[quarter..],
        "bytes differ after the restart"
    );
    within(client.close()).unwrap().unwrap();
}
