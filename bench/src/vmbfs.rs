//! Throughput of vmbfs over the loopback VM: one file read whole in-band
//! (12276-byte READ_FILE round trips) and by RDMA (7 MiB chunks written
//! straight into guest pages), with the in-band figure as the baseline of
//! the same run. Used by `vmbdev demo` and `vmbdev bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::vmbfs::{IoPolicy, VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::vmbfs::VmbfsClientError;
use vmbdev_loopback::vm::{LoopbackVm, VmConfig, VmError};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};

/// Size of the file the standard measurement reads.
pub const BENCH_FILE_SIZE: usize = 64 << 20;

/// Timed reads per mode; the fastest counts.
const ROUNDS: usize = 3;

/// One timed read of the whole file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadTiming {
    /// Bytes read.
    pub bytes: u64,
    /// Wall time of the read.
    pub elapsed: Duration,
    /// Requests the client sent.
    pub requests: u64,
}

impl ReadTiming {
    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// In-band against RDMA for one file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThroughputReport {
    /// The in-band read (the baseline).
    pub in_band: ReadTiming,
    /// The RDMA read.
    pub rdma: ReadTiming,
}

impl ThroughputReport {
    /// RDMA throughput divided by in-band throughput.
    pub fn ratio(&self) -> f64 {
        self.rdma.mb_per_s() / self.in_band.mb_per_s().max(1e-9)
    }
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The in-memory tree could not be built.
    #[error("cannot build the bench tree: {0}")]
    Tree(vmbdev_fs::TreeError),
    /// A read failed.
    #[error(transparent)]
    Client(#[from] VmbfsClientError),
    /// The bytes read differ from the file.
    #[error("{mode} read returned different bytes than the file holds")]
    Mismatch {
        /// `in-band` or `RDMA`.
        mode: &'static str,
    },
}

/// Deterministic pseudo-random bytes (xorshift64 from `seed`) that differ
/// at every 8-byte word, for sample files and benchmarks.
pub fn sample_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The benchmark file's contents.
fn contents(len: usize) -> Vec<u8> {
    sample_bytes(len, 0x9e37_79b9_7f4a_7c15)
}

fn timed_read(
    client: &mut VmbfsClient,
    path: &str,
    expected: &[u8],
    mode: &'static str,
) -> Result<ReadTiming, BenchError> {
    let file = futures_lite::future::block_on(client.open_path(path))?;
    // The caller's buffer is touched beforehand, as a loader's would be,
    // so page faults on it are not charged to the transfer.
    let mut buf = vec![0xA5u8; expected.len()];
    let mut best: Option<ReadTiming> = None;
    // The first round also warms the guest pages and the thread pool.
    for _ in 0..ROUNDS {
        let requests = client.stats().requests;
        let start = Instant::now();
        let n = futures_lite::future::block_on(client.read_file(&file, 0, &mut buf))?;
        let elapsed = start.elapsed();
        if n != expected.len() || buf != expected {
            return Err(BenchError::Mismatch { mode });
        }
        buf.fill(0xA5);
        let timing = ReadTiming {
            bytes: n as u64,
            elapsed,
            requests: client.stats().requests - requests,
        };
        if best.is_none_or(|b| timing.elapsed < b.elapsed) {
            best = Some(timing);
        }
    }
    best.ok_or(BenchError::Mismatch { mode })
}

/// Reads a `file_size`-byte in-memory file over the loopback VM in-band,
/// then by RDMA, checking the bytes each time, and times both (best of
/// three rounds each). Tree I/O runs on the blocking pool.
pub fn measure_throughput(file_size: usize) -> Result<ThroughputReport, BenchError> {
    measure_throughput_with(file_size, IoPolicy::BlockingPool)
}

/// [`measure_throughput`] with the device's tree I/O run per `io` (the
/// loopback VM runs the one device task on its own executor thread, so
/// [`IoPolicy::Inline`] is allowed here).
pub fn measure_throughput_with(
    file_size: usize,
    io: IoPolicy,
) -> Result<ThroughputReport, BenchError> {
    let path = "bench/file.bin";
    let data = contents(file_size);
    let mut builder = MemoryTree::builder();
    builder
        .add_file(path, data.clone())
        .map_err(BenchError::Tree)?;
    let device: Arc<dyn VmbusDevice> = Arc::new(
        VmbfsDevice::new(VmbfsConfig {
            tree: Arc::new(builder.build()),
            rdma_enabled: true,
        })
        .with_io_policy(io),
    );
    let vm = LoopbackVm::new(&VmConfig::default())?;
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm, device), false);
    futures_lite::future::block_on(client.open_volume())?;
    let in_band = timed_read(&mut client, path, &data, "in-band")?;
    client.set_use_rdma(true);
    let rdma = timed_read(&mut client, path, &data, "RDMA")?;
    futures_lite::future::block_on(client.close())?;
    Ok(ThroughputReport { in_band, rdma })
}
