//! Throughput of vmbfs over the loopback VM: one file read whole in-band
//! (12276-byte READ_FILE round trips) and by RDMA (7 MiB chunks written
//! straight into guest pages), with the in-band figure as the baseline of
//! the same run. Used by `vmbdev demo` and `vmbdev bench`, whose rows
//! against `pread` ([`compare_with_pread`]) carry the host CPU time per MB
//! of both sides.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::vmbfs::{IoPolicy, VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::vmbfs::VmbfsClientError;
use vmbdev_loopback::vm::{LoopbackVm, VmConfig, VmError};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};

use crate::cpu::{CpuPerUnit, CpuUnit, Span, Stopwatch};

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

/// Where the client and the device task run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The device task on an executor thread of the VM, file reads on the
    /// blocking pool; the client on the calling thread.
    Threads,
    /// Client and device task on the calling thread, file reads inline.
    OneThread,
}

/// How the client reads the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// READ_FILE round trips, the data copied out of the ring.
    InBand,
    /// RDMA chunks into buffers of the client's, then copied into the
    /// caller's host buffer.
    RdmaCopied,
    /// RDMA chunks straight into the caller's guest pages (a loader's
    /// destination), no guest-side copy.
    RdmaToGuest,
}

/// One measured way of reading the file beside `pread` of the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct PreadRow {
    /// How the client read.
    pub mode: Mode,
    /// Where client and device ran.
    pub layout: Layout,
    /// Throughput through vmbfs, MB/s (median of the rounds).
    pub mb_per_s: f64,
    /// `pread` throughput of the same bytes from a page-cached file into
    /// a buffer of the file's size, MB/s (median of the rounds).
    pub pread_mb_per_s: f64,
    /// Process CPU time per MB of vmbfs (client, device task and pools)
    /// and of `pread` (medians of the rounds).
    pub cpu: CpuPerUnit,
}

impl PreadRow {
    /// A name for tables.
    pub fn name(&self) -> String {
        let mode = match self.mode {
            Mode::InBand => "in-band",
            Mode::RdmaCopied => "RDMA, copied out",
            Mode::RdmaToGuest => "RDMA into guest pages",
        };
        let layout = match self.layout {
            Layout::Threads => "threads",
            Layout::OneThread => "one thread",
        };
        format!("{mode}, {layout}")
    }

    /// vmbfs over `pread`.
    pub fn ratio(&self) -> f64 {
        self.mb_per_s / self.pread_mb_per_s.max(1e-9)
    }
}

/// Alternating rounds per mode against `pread`.
const PREAD_ROUNDS: usize = 5;

/// What [`compare_with_pread`] can fail with besides the reads.
#[derive(Debug, thiserror::Error)]
pub enum PreadBenchError {
    /// The vmbfs side failed.
    #[error(transparent)]
    Vmbfs(#[from] BenchError),
    /// The baseline file could not be written or read.
    #[error("pread baseline: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a `file_size`-byte file over vmbfs in every mode and layout, in
/// rounds alternating with `pread` of the same bytes from a file written
/// to `dir` (in 1 MiB calls into a buffer of the file's size, as the
/// client fills one); every read is checked against the file.
pub fn compare_with_pread(dir: &Path, file_size: usize) -> Result<Vec<PreadRow>, PreadBenchError> {
    let data = contents(file_size);
    let path = dir.join("vmbfs-pread-baseline.bin");
    std::fs::write(&path, &data)?;
    let file = vmbdev_block::open_image_file(&path)?;
    let mut host_buf = vec![0xA5u8; file_size];
    let pread = |buf: &mut [u8]| -> std::io::Result<Span> {
        use std::os::unix::fs::FileExt;
        let watch = Stopwatch::start();
        for (i, chunk) in buf.chunks_mut(1 << 20).enumerate() {
            file.read_exact_at(chunk, (i << 20) as u64)?;
        }
        Ok(watch.stop())
    };
    let mb = file_size as f64 / 1e6;
    let runs = [
        (Mode::InBand, Layout::Threads),
        (Mode::RdmaCopied, Layout::Threads),
        (Mode::InBand, Layout::OneThread),
        (Mode::RdmaToGuest, Layout::OneThread),
    ];
    let mut rows = Vec::new();
    for (mode, layout) in runs {
        let mut rig = PreadRig::new(&data, mode, layout)?;
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..PREAD_ROUNDS {
            theirs.push(pread(&mut host_buf)?);
            ours.push(rig.read(&data, &mut host_buf)?);
        }
        if host_buf != data && mode != Mode::RdmaToGuest {
            return Err(BenchError::Mismatch { mode: "pread" }.into());
        }
        let median_of = |spans: &[Span], figure: &dyn Fn(Span) -> f64| {
            median(&mut spans.iter().map(|&s| figure(s)).collect::<Vec<_>>())
        };
        let rate = |s: Span| mb / s.secs();
        let cpu = |s: Span| CpuUnit::UsPerMb.per(s.cpu, mb);
        rows.push(PreadRow {
            mode,
            layout,
            mb_per_s: median_of(&ours, &rate),
            pread_mb_per_s: median_of(&theirs, &rate),
            cpu: CpuPerUnit {
                value: median_of(&ours, &cpu),
                baseline: median_of(&theirs, &cpu),
                unit: CpuUnit::UsPerMb,
            },
        });
        rig.close()?;
    }
    Ok(rows)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A client with the bench file open, in one mode and layout.
struct PreadRig {
    client: VmbfsClient,
    vm: LoopbackVm,
    file: Option<vmbdev_guest::vmbfs::UefiFile>,
    mode: Mode,
    layout: Layout,
    /// The guest destination of [`Mode::RdmaToGuest`].
    dest: Option<vmbdev_ring::GpaRange>,
}

impl PreadRig {
    const PATH: &'static str = "bench/file.bin";

    fn new(data: &[u8], mode: Mode, layout: Layout) -> Result<Self, BenchError> {
        let mut builder = MemoryTree::builder();
        builder
            .add_file(Self::PATH, data.to_vec())
            .map_err(BenchError::Tree)?;
        let io = match layout {
            Layout::Threads => IoPolicy::BlockingPool,
            Layout::OneThread => IoPolicy::Inline,
        };
        let device: Arc<dyn VmbusDevice> = Arc::new(
            VmbfsDevice::new(VmbfsConfig {
                tree: Arc::new(builder.build()),
                rdma_enabled: true,
            })
            .with_io_policy(io),
        );
        let vm = LoopbackVm::new(&VmConfig {
            memory_pages: 8192 + data.len().div_ceil(vmbdev_ring::PAGE_SIZE) as u64,
            executor_threads: match layout {
                Layout::Threads => 1,
                Layout::OneThread => 0,
            },
            // One thread: the device task on an executor whose wake-ups
            // allocate nothing, so the figure is the device's.
            task_executor: (layout == Layout::OneThread)
                .then(|| Arc::new(vmbdev_ring::executor::Executor::new())),
        })?;
        let client = VmbfsClient::new(VmbfsLoopback::new(vm.clone(), device), mode != Mode::InBand);
        let dest = match mode {
            Mode::RdmaToGuest => Some(
                vm.pages()
                    .alloc_range(data.len() as u32)
                    .map_err(|e| BenchError::Vm(e.into()))?,
            ),
            _ => None,
        };
        let mut rig = Self {
            client,
            vm,
            file: None,
            mode,
            layout,
            dest,
        };
        let client = &mut rig.client;
        let open = async move {
            client.open_volume().await?;
            client.open_path(Self::PATH).await
        };
        rig.file = Some(drive(&rig.vm, layout, open)?);
        // A first read warms guest pages, caches and pools.
        let mut buf = vec![0u8; data.len()];
        rig.read(data, &mut buf)?;
        Ok(rig)
    }

    /// One timed read of the whole file, checked against `data`.
    fn read(&mut self, data: &[u8], buf: &mut [u8]) -> Result<Span, BenchError> {
        let file = self
            .file
            .clone()
            .ok_or(BenchError::Mismatch { mode: "open" })?;
        let dest = self.dest.clone();
        buf.fill(0xA5);
        let watch = Stopwatch::start();
        let (vm, layout, client) = (&self.vm, self.layout, &mut self.client);
        let n = match (self.mode, dest) {
            (Mode::RdmaToGuest, Some(dest)) => {
                drive(vm, layout, client.read_file_to_guest(&file, 0, &dest))?
            }
            _ => drive(vm, layout, client.read_file(&file, 0, buf))?,
        };
        let span = watch.stop();
        if let (Mode::RdmaToGuest, Some(dest)) = (self.mode, &self.dest) {
            dest.read_at(self.vm.memory(), 0, buf)
                .map_err(|_| BenchError::Mismatch { mode: "RDMA" })?;
        }
        if n != data.len() || buf != data {
            return Err(BenchError::Mismatch {
                mode: match self.mode {
                    Mode::InBand => "in-band",
                    _ => "RDMA",
                },
            });
        }
        Ok(span)
    }

    fn close(mut self) -> Result<(), BenchError> {
        drive(&self.vm, self.layout, self.client.close())
    }
}

/// Runs a client future to its end: on the calling thread, with the VM's
/// task executor (and so the device task) beside it in the one-thread
/// layout.
fn drive<T>(
    vm: &LoopbackVm,
    layout: Layout,
    work: impl Future<Output = Result<T, VmbfsClientError>>,
) -> Result<T, BenchError> {
    Ok(match (layout, vm.task_executor()) {
        (Layout::OneThread, Some(executor)) => futures_lite::future::block_on(executor.run(work)),
        (Layout::OneThread, None) => futures_lite::future::block_on(vm.executor().run(work)),
        (Layout::Threads, _) => futures_lite::future::block_on(work),
    }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_reports_positive_cpu_per_mb_beside_pread() {
        let dir = tempfile::tempdir().unwrap();
        let rows = compare_with_pread(dir.path(), 1 << 20).unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.mb_per_s > 0.0 && r.pread_mb_per_s > 0.0, "{r:?}");
            assert_eq!(r.cpu.unit, CpuUnit::UsPerMb);
            assert!(r.cpu.both_measured(), "{r:?}");
        }
    }
}
