//! The vmbfs read path allocates nothing per request once warm: a counting
//! global allocator watches in-band READ_FILEs and RDMA reads (setup,
//! READ_FILE_RDMA, teardown) of a 4 MiB in-memory file, sent by a raw
//! guest over an in-process ring to the device task on this thread; then
//! the same reads made by the UEFI-like vmbfs client over the loopback VM
//! (in-band, RDMA into the caller's guest pages, RDMA copied out), client
//! and device task sharing this thread on the ring's executor. Every read's
//! bytes are checked against the file.
//!
//! Not covered, as they still allocate: the device's
//! `IoPolicy::BlockingPool` (each job is boxed for the pool and answered
//! through a channel) and the loopback VM's own executor threads (their
//! general-purpose run queue allocates every few dozen wake-ups).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_lite::future::{block_on, or};
use vmbdev_bench::vmbfs::sample_bytes;
use vmbdev_device::bus::{ChannelError, NoSubChannels, OpenRequest, VmbusDevice};
use vmbdev_device::vmbfs::{IoPolicy, VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::vmbfs::{
    GpaDirectSetup, UefiFile, child_path, parse_rdma_response, parse_read_response,
    parse_version_response, rdma_chunk, read_request, version_request,
};
use vmbdev_loopback::vm::{LoopbackVm, VmConfig};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};
use vmbdev_ring::executor::Executor;
use vmbdev_ring::{
    BorrowedKind, Endpoint, GpaRange, GuestMemory, LoopbackConfig, OutgoingPacket, PipeMessage,
    PipeMessageRef, loopback,
};

mod counting;

use counting::allocations_during;

/// Size of the served file.
const FILE_SIZE: usize = 4 << 20;
/// Bytes one in-band read asks for (a loader's small reads).
const IN_BAND_BYTES: usize = 4096;
/// Bytes one RDMA read asks for: 16 pages, more than a range keeps inline.
const RDMA_BYTES: usize = 64 << 10;
/// Distinct offsets the reads cycle through (requests built beforehand).
const OFFSETS: usize = 16;
/// Where the file lives in the tree.
const PATH: &str = "EFI/BOOT/file.bin";

// No test harness (`harness = false`): the counter is process-wide, and
// the harness allocates on its own threads while a test runs.
fn main() {
    // The counter does count (else the zeros below would prove nothing).
    let seen = allocations_during(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert!(seen >= 1, "the counting allocator saw {seen} allocations");
    let data = sample_bytes(FILE_SIZE, 0x5eed_f11e);
    device_reads_allocate_nothing_per_request_once_warm(&data);
    client_reads_allocate_nothing_per_request_once_warm(&data);
}

/// The file offset of request `i`: unaligned and spread over the file.
fn offset_of(i: usize, len: usize) -> u64 {
    ((i * 262_147 + 13) % (FILE_SIZE - len)) as u64
}

fn device(data: &[u8]) -> VmbfsDevice {
    let mut builder = MemoryTree::builder();
    builder.add_file(PATH, data.to_vec()).unwrap();
    VmbfsDevice::new(VmbfsConfig {
        tree: Arc::new(builder.build()),
        rdma_enabled: true,
    })
    .with_io_policy(IoPolicy::Inline)
}

type DeviceTask = Pin<Box<dyn Future<Output = Result<(), ChannelError>> + Send>>;

/// A raw guest on the device's ring: every request built beforehand,
/// replies read in place, so the guest side allocates nothing.
struct RawGuest {
    task: DeviceTask,
    guest: Endpoint,
    memory: GuestMemory,
    /// `(READ_FILE, byte count, file offset)` per offset.
    reads: Vec<(Vec<u8>, u32, u64)>,
    /// `(READ_FILE_RDMA, byte count, file offset)` per offset.
    rdma_reads: Vec<(Vec<u8>, u32, u64)>,
    /// The pipe SETUP_GPA_DIRECT and TEARDOWN_GPA_DIRECT of the target.
    setup: Vec<u8>,
    teardown: Vec<u8>,
    target: GpaRange,
    /// Where RDMA bytes are read back from guest memory.
    landed: Vec<u8>,
}

/// Polls `work` and the device task together on this thread until `work`
/// ends; panics if the device task ends first.
fn drive<T>(task: &mut DeviceTask, work: impl Future<Output = T>) -> T {
    block_on(or(work, async {
        let result = task.as_mut().await;
        panic!("the vmbfs channel task ended: {result:?}")
    }))
}

/// Sends a whole pipe payload (header included) as one in-band packet.
async fn send_raw(guest: &mut Endpoint, payload: &[u8]) {
    guest
        .writer
        .write(&OutgoingPacket::in_band(payload))
        .await
        .unwrap();
}

/// Waits for the next reply and hands its vmbfs message to `f`.
async fn with_reply<T>(guest: &mut Endpoint, f: impl FnOnce(&[u8]) -> T) -> T {
    let mut f = Some(f);
    let mut out = None;
    while out.is_none() {
        guest.reader.wait_readable().await.unwrap();
        guest
            .reader
            .try_read_batch_borrowed(1, |packet| {
                assert!(matches!(packet.kind, BorrowedKind::InBand));
                match PipeMessageRef::decode(packet.payload, 1 << 16) {
                    Ok(PipeMessageRef::Data(message)) => {
                        out = f.take().map(|f| f(message));
                    }
                    other => panic!("expected a DATA reply, got {other:?}"),
                }
            })
            .unwrap();
    }
    out.unwrap()
}

impl RawGuest {
    fn new(device: &VmbfsDevice) -> Self {
        let lb = loopback(&LoopbackConfig {
            buffer_pages: 64,
            ..LoopbackConfig::default()
        })
        .unwrap();
        let task = device
            .open(
                0,
                OpenRequest {
                    endpoint: lb.host,
                    memory: lb.memory.clone(),
                    gpadls: vmbdev_ring::GpadlRegistry::new(),
                    sub_channels: Arc::new(NoSubChannels),
                },
            )
            .unwrap();
        let path = child_path(&[], &PATH.replace('/', "\\"));
        let target = lb.pages.alloc_range(RDMA_BYTES as u32).unwrap();
        let reads = (0..OFFSETS)
            .map(|i| {
                let offset = offset_of(i, IN_BAND_BYTES);
                let (message, count) = read_request(&path, offset, IN_BAND_BYTES).unwrap();
                (message, count, offset)
            })
            .collect();
        let rdma_reads = (0..OFFSETS)
            .map(|i| {
                let offset = offset_of(i, RDMA_BYTES);
                let chunk = rdma_chunk(&path, offset, &target).unwrap();
                (chunk.request, chunk.requested, offset)
            })
            .collect();
        let chunk = rdma_chunk(&path, 0, &target).unwrap();
        let GpaDirectSetup {
            handle,
            writable,
            ranges,
        } = chunk.setup;
        let setup = PipeMessage::SetupGpaDirect {
            handle,
            writable,
            ranges,
        }
        .encode();
        let teardown = PipeMessage::TeardownGpaDirect {
            handle: chunk.teardown_handle,
        }
        .encode();
        let mut guest = Self {
            task,
            guest: lb.guest,
            memory: lb.memory,
            reads,
            rdma_reads,
            setup,
            teardown,
            target,
            landed: vec![0; RDMA_BYTES],
        };
        let endpoint = &mut guest.guest;
        drive(&mut guest.task, async {
            endpoint.send_data(&version_request()).await.unwrap();
            with_reply(endpoint, |reply| parse_version_response(reply).unwrap()).await;
        });
        guest
    }

    /// Sends `count` READ_FILEs; returns how many returned the file's bytes.
    fn read_in_band(&mut self, count: usize, data: &[u8]) -> usize {
        let (guest, reads) = (&mut self.guest, &self.reads);
        drive(&mut self.task, async {
            let mut good = 0;
            for i in 0..count {
                let (message, requested, offset) = &reads[i % OFFSETS];
                guest.send_data(message).await.unwrap();
                let expected = &data[*offset as usize..][..*requested as usize];
                let same = with_reply(guest, |reply| {
                    parse_read_response(reply, *requested).is_ok_and(|got| got == expected)
                })
                .await;
                good += usize::from(same);
            }
            good
        })
    }

    /// Runs `count` RDMA reads (setup, read, teardown); returns how many
    /// wrote the file's bytes into the target pages.
    fn read_rdma(&mut self, count: usize, data: &[u8]) -> usize {
        let (guest, reads) = (&mut self.guest, &self.rdma_reads);
        let (setup, teardown) = (&self.setup, &self.teardown);
        let (target, memory, landed) = (&self.target, &self.memory, &mut self.landed);
        drive(&mut self.task, async {
            let mut good = 0;
            for i in 0..count {
                let (message, requested, offset) = &reads[i % OFFSETS];
                send_raw(guest, setup).await;
                guest.send_data(message).await.unwrap();
                let written =
                    with_reply(guest, |reply| parse_rdma_response(reply, *requested)).await;
                send_raw(guest, teardown).await;
                landed.fill(0);
                target.read_at(memory, 0, landed).unwrap();
                let expected = &data[*offset as usize..][..*requested as usize];
                good += usize::from(written == Ok(*requested) && &landed[..] == expected);
            }
            good
        })
    }
}

fn device_reads_allocate_nothing_per_request_once_warm(data: &[u8]) {
    let device = device(data);
    let mut guest = RawGuest::new(&device);
    const N: usize = 500;
    // Warm-up: buffers reach their sizes, the path is decoded once.
    assert_eq!(guest.read_in_band(2 * OFFSETS, data), 2 * OFFSETS);
    assert_eq!(guest.read_rdma(2 * OFFSETS, data), 2 * OFFSETS);
    let mut good = 0;
    let in_band = allocations_during(|| good = guest.read_in_band(N, data));
    assert_eq!(good, N, "every in-band read returns the file's bytes");
    let rdma = allocations_during(|| good = guest.read_rdma(N, data));
    assert_eq!(good, N, "every RDMA read writes the file's bytes");
    assert_eq!(
        (in_band, rdma),
        (0, 0),
        "allocations over {N} in-band reads and over {N} RDMA reads"
    );
    assert!(device.stats().rdma_bytes >= (N * RDMA_BYTES) as u64);
    device.close(0).unwrap();
    block_on(guest.task.as_mut()).unwrap();
}

/// The client's reads in the one-thread layout: client and device task
/// on this thread (on the ring's executor, whose wake-ups allocate
/// nothing), the device reading the tree inline.
struct ClientRig {
    vm: LoopbackVm,
    executor: Arc<Executor>,
    client: VmbfsClient,
    file: UefiFile,
    /// The loader's destination of RDMA reads, in guest pages.
    dest: GpaRange,
    buf: Vec<u8>,
}

impl ClientRig {
    fn new(data: &[u8]) -> Self {
        let device: Arc<dyn VmbusDevice> = Arc::new(device(data));
        let executor = Arc::new(Executor::new());
        let vm = LoopbackVm::new(&VmConfig {
            memory_pages: 8192,
            executor_threads: 0,
            task_executor: Some(executor.clone()),
        })
        .unwrap();
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm.clone(), device), true);
        let dest = vm.pages().alloc_range(RDMA_BYTES as u32).unwrap();
        let file = block_on(executor.run(async {
            client.open_volume().await?;
            client.open_path(PATH).await
        }))
        .unwrap();
        assert!(file.info.rdma_capable);
        Self {
            vm,
            executor,
            client,
            file,
            dest,
            buf: vec![0; RDMA_BYTES],
        }
    }

    /// `count` in-band reads (RDMA off); how many got the file's bytes.
    fn read_in_band(&mut self, count: usize, data: &[u8]) -> usize {
        self.read_copied(count, data, false)
    }

    /// `count` RDMA reads into the client's own buffer, copied out into a
    /// host buffer; how many got the file's bytes.
    fn read_rdma_copied(&mut self, count: usize, data: &[u8]) -> usize {
        self.read_copied(count, data, true)
    }

    /// `count` reads into a host buffer, by RDMA or in-band; how many got
    /// the file's bytes.
    fn read_copied(&mut self, count: usize, data: &[u8], rdma: bool) -> usize {
        let len = if rdma { RDMA_BYTES } else { IN_BAND_BYTES };
        let (client, file, buf) = (&mut self.client, &self.file, &mut self.buf[..len]);
        client.set_use_rdma(rdma);
        block_on(self.executor.run(async {
            let mut good = 0;
            for i in 0..count {
                let offset = offset_of(i, len);
                buf.fill(0);
                let n = client.read_file(file, offset, buf).await.unwrap();
                good += usize::from(n == len && *buf == data[offset as usize..][..n]);
            }
            good
        }))
    }

    /// `count` RDMA reads into the destination pages; how many put the
    /// file's bytes there.
    fn read_rdma(&mut self, count: usize, data: &[u8]) -> usize {
        let (client, file, buf) = (&mut self.client, &self.file, &mut self.buf);
        let (dest, memory) = (&self.dest, self.vm.memory());
        client.set_use_rdma(true);
        block_on(self.executor.run(async {
            let mut good = 0;
            for i in 0..count {
                let offset = offset_of(i, RDMA_BYTES);
                let n = client.read_file_to_guest(file, offset, dest).await.unwrap();
                buf.fill(0);
                dest.read_at(memory, 0, buf).unwrap();
                good += usize::from(n == RDMA_BYTES && *buf == data[offset as usize..][..n]);
            }
            good
        }))
    }
}

fn client_reads_allocate_nothing_per_request_once_warm(data: &[u8]) {
    let mut rig = ClientRig::new(data);
    const N: usize = 500;
    // Warm-up: buffers reach their sizes, the RDMA buffer is allocated.
    assert_eq!(rig.read_in_band(2 * OFFSETS, data), 2 * OFFSETS);
    assert_eq!(rig.read_rdma(2 * OFFSETS, data), 2 * OFFSETS);
    assert_eq!(rig.read_rdma_copied(2 * OFFSETS, data), 2 * OFFSETS);
    let chunks = rig.client.stats().rdma_chunks;
    let mut good = 0;
    let in_band = allocations_during(|| good = rig.read_in_band(N, data));
    assert_eq!(good, N, "every in-band read returns the file's bytes");
    let rdma = allocations_during(|| good = rig.read_rdma(N, data));
    assert_eq!(
        good, N,
        "every RDMA read puts the file's bytes in the pages"
    );
    let copied = allocations_during(|| good = rig.read_rdma_copied(N, data));
    assert_eq!(good, N, "every copied RDMA read returns the file's bytes");
    assert_eq!(
        rig.client.stats().rdma_chunks - chunks,
        2 * N as u64,
        "the RDMA reads went by RDMA"
    );
    assert_eq!(
        (in_band, rdma, copied),
        (0, 0, 0),
        "allocations over {N} reads each: in-band, RDMA into guest pages, RDMA copied out"
    );
    block_on(rig.executor.run(rig.client.close())).unwrap();
}
