//! Read benchmarks through the whole stack — storvsc → ring → storvsp →
//! SCSI disk → image — against `pread` of a raw file with the same bytes
//! in the same run (into as many buffers, used in turn, as the guest has
//! reads in flight): 4 KiB random reads at queue depth 1 and 32, and 1 MiB
//! sequential reads, with one and two channels, served from the raw file
//! or from a dynamic VHDX of it. Results are ratios to the baseline, so
//! they mean the same on any machine; rounds alternate the baseline and
//! the stack, and the medians count. Each row also carries the host CPU
//! time per read of both sides, every thread of the process counted (the
//! device and completion threads of [`Layout::Threads`] included).
//!
//! Two layouts: [`Layout::Threads`] (a thread per device channel, a
//! completion thread per guest channel: every request crosses threads
//! twice, the cost of a VMM whose device threads sleep while the guest
//! runs) and [`Layout::OneThread`] (the guest driver reads its own
//! completions and the channel tasks run on the guest's thread, as in
//! OpenVMM's `ioperf`: what the device and the driver themselves cost).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::future::block_on;
use vmbdev_block::{BlockDevice, BlockError, RawFile};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{ConfigError, Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_vhdx::{Vhdx, VhdxError, WriteError, WriteOptions, write_vhdx};

use vmbdev_guest::storvsc::{Completions, DriverConfig, DriverError, GuestProfile};
use vmbdev_loopback::storvsp::{StartError, StorvspVm, StorvspVmConfig, VmError};

use crate::cpu::{CpuPerUnit, CpuUnit, Span, Stopwatch};

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Bytes per read.
    pub block: u32,
    /// Requests in flight through storvsc.
    pub depth: usize,
    /// Random offsets (else sequential).
    pub random: bool,
}

/// Where the guest driver and the device channels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A thread per device channel and a completion thread per guest
    /// channel; doorbells wake sleeping threads.
    Threads,
    /// The guest driver and every device channel on the calling thread.
    OneThread,
}

impl Layout {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Threads => "threads",
            Self::OneThread => "one thread",
        }
    }
}

/// What the device serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// The raw file itself.
    Raw,
    /// A dynamic VHDX written from it (next to it, `.vhdx` added).
    Vhdx,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The raw image (should be in the page cache); the `pread` baseline
    /// always reads it.
    pub image: PathBuf,
    /// What the device serves.
    pub format: ImageFormat,
    /// Layouts and channel counts to try (1 = primary only).
    pub runs: Vec<(Layout, u16)>,
    /// Workloads to run.
    pub workloads: Vec<Workload>,
    /// Minimum bytes each measurement reads (more for small blocks).
    pub bytes_per_run: u64,
    /// Measurements of each side per workload (alternating); the medians
    /// count.
    pub rounds: usize,
    /// Ring polls before a sleep, in the threads layout, of the device's
    /// channels and the driver's completion threads (0: sleep at once).
    pub spin: u32,
}

impl BenchConfig {
    /// The standard set: 4 KiB random at QD1 and QD32, 1 MiB sequential
    /// at QD8, from a VHDX, on one thread and with threads (1 and 2
    /// channels).
    pub fn standard(image: PathBuf) -> Self {
        Self {
            image,
            format: ImageFormat::Vhdx,
            runs: vec![
                (Layout::OneThread, 1),
                (Layout::Threads, 1),
                (Layout::Threads, 2),
            ],
            workloads: vec![
                Workload {
                    block: 4096,
                    depth: 1,
                    random: true,
                },
                Workload {
                    block: 4096,
                    depth: 32,
                    random: true,
                },
                Workload {
                    block: 1 << 20,
                    depth: 8,
                    random: false,
                },
            ],
            bytes_per_run: 512 << 20,
            rounds: DEFAULT_ROUNDS,
            spin: 0,
        }
    }
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// The workload.
    pub workload: Workload,
    /// Where the driver and the channels ran.
    pub layout: Layout,
    /// Channels used.
    pub channels: u16,
    /// Reads per second through storvsc.
    pub iops: f64,
    /// MB/s (10^6) through storvsc.
    pub mb_per_s: f64,
    /// Reads per second of `pread` (one thread) on the same offsets.
    pub pread_iops: f64,
    /// Through-stack rate divided by the `pread` rate.
    pub ratio: f64,
    /// Process CPU time per read through storvsc and per `pread` (medians
    /// of the rounds).
    pub cpu: CpuPerUnit,
    /// For random reads at a depth of two or more, the second baseline:
    /// [`PREAD_THREADS`] threads reading the same offsets in turn, with the
    /// requests in flight split between them, as a host serving the depth
    /// from a thread pool would (reads/s and CPU ns per read).
    pub threaded_pread: Option<(f64, f64)>,
}

/// Threads of the threaded `pread` baseline.
pub const PREAD_THREADS: usize = 2;

/// A benchmark failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The image could not be opened or read.
    #[error("image: {0}")]
    Image(#[from] BlockError),
    /// The VHDX could not be written.
    #[error("writing the VHDX: {0}")]
    WriteVhdx(#[from] WriteError),
    /// The VHDX could not be opened.
    #[error("opening the VHDX: {0}")]
    OpenVhdx(#[from] VhdxError),
    /// pread failed.
    #[error("pread: {0}")]
    Io(#[from] std::io::Error),
    /// The device configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The loopback VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The image is too small for the workload.
    #[error("image of {0} bytes is too small")]
    TooSmall(u64),
    /// A thread of the threaded `pread` baseline panicked.
    #[error("a pread baseline thread panicked")]
    ReaderPanicked,
}

/// Offsets (in bytes) of `count` reads of `block` bytes in `size`.
fn offsets(workload: Workload, size: u64, count: u64) -> Vec<u64> {
    let slots = size / u64::from(workload.block);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|i| {
            let slot = if workload.random {
                // xorshift64*: cheap and reproducible.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                state.wrapping_mul(0x2545_F491_4F6C_DD1D) % slots
            } else {
                i % slots
            };
            slot * u64::from(workload.block)
        })
        .collect()
}

/// `pread` of each offset into `depth` buffers of `block` bytes in turn:
/// the memory the guest's `depth` requests in flight read into, so the
/// baseline's copies land in caches as warm as the device's (one buffer
/// of 1 MiB stays in L2 where eight in flight do not).
fn pread_span(file: &File, block: u32, depth: usize, offsets: &[u64]) -> Result<Span, BenchError> {
    let block = block as usize;
    let depth = depth.max(1);
    let mut buffers = vec![0u8; block * depth];
    let watch = Stopwatch::start();
    for (i, &at) in offsets.iter().enumerate() {
        let turn = i % depth * block;
        file.read_exact_at(&mut buffers[turn..turn + block], at)?;
    }
    Ok(watch.stop())
}

/// [`pread_span`] on [`PREAD_THREADS`] threads: thread `t` reads every
/// offset `i` with `i % PREAD_THREADS == t`, into its share of the
/// `depth` buffers.
fn threaded_pread_span(
    file: &File,
    block: u32,
    depth: usize,
    offsets: &[u64],
) -> Result<Span, BenchError> {
    let share = depth.div_ceil(PREAD_THREADS).max(1);
    let mine = |t: usize| -> Vec<u64> {
        offsets
            .iter()
            .skip(t)
            .step_by(PREAD_THREADS)
            .copied()
            .collect()
    };
    let parts: Vec<Vec<u64>> = (0..PREAD_THREADS).map(mine).collect();
    let watch = Stopwatch::start();
    std::thread::scope(|scope| {
        let readers: Vec<_> = parts
            .iter()
            .map(|part| scope.spawn(move || pread_span(file, block, share, part)))
            .collect();
        readers.into_iter().try_for_each(|r| {
            r.join()
                .unwrap_or(Err(BenchError::ReaderPanicked))
                .map(drop)
        })
    })?;
    Ok(watch.stop())
}

/// Alternating rounds of each measurement.
const DEFAULT_ROUNDS: usize = 5;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians of the rates (reads/s) and of the CPU time per read of
/// `spans`, each of `reads` reads.
fn medians(spans: &[Span], reads: usize) -> (f64, f64) {
    let reads = reads as f64;
    let mut rates: Vec<f64> = spans.iter().map(|s| reads / s.secs()).collect();
    let mut cpu: Vec<f64> = spans
        .iter()
        .map(|s| CpuUnit::NsPerRequest.per(s.cpu, reads))
        .collect();
    (median(&mut rates), median(&mut cpu))
}

/// The device the benchmark serves: the raw file or a VHDX written from
/// it.
fn served_image(config: &BenchConfig) -> Result<Arc<dyn BlockDevice>, BenchError> {
    let raw = RawFile::open(&config.image)?;
    Ok(match config.format {
        ImageFormat::Raw => Arc::new(raw),
        ImageFormat::Vhdx => {
            let mut path = config.image.clone().into_os_string();
            path.push(".vhdx");
            let path = PathBuf::from(path);
            write_vhdx(&raw, &path, &WriteOptions::default())?;
            // Into the page cache the way the raw file is (see `recache`).
            recache(&path)?;
            recache(&config.image)?;
            Arc::new(Vhdx::open(&path)?)
        }
    })
}

/// Runs every workload in every layout and channel count.
pub fn run(config: &BenchConfig) -> Result<Vec<BenchRow>, BenchError> {
    // The baseline opens the file as the image readers do (no access-time
    // updates), so neither side pays a check the other skips.
    let file = vmbdev_block::open_image_file(&config.image)?;
    let served = served_image(config)?;
    let size = served.size_bytes();
    let mut rows = Vec::new();
    for &(layout, channels) in &config.runs {
        let controller = Arc::new(Controller::new());
        let lun = LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        };
        controller.insert(lun, Arc::new(ScsiDisk::new(served.clone())));
        let spin = match layout {
            Layout::Threads => config.spin,
            // Nothing arrives while a thread's only task spins.
            Layout::OneThread => 0,
        };
        let device = Arc::new(
            StorvspDevice::new(
                StorvspConfig {
                    max_sub_channels: channels.saturating_sub(1),
                    multi_channel: channels > 1,
                    ..StorvspConfig::default()
                },
                controller,
            )?
            .with_spin(spin),
        );
        let executor =
            (layout == Layout::OneThread).then(|| Arc::new(vmbdev_ring::executor::Executor::new()));
        let completions = match layout {
            Layout::Threads if spin > 0 => Completions::SpinningThread(spin),
            Layout::Threads => Completions::Thread,
            Layout::OneThread => Completions::Polled,
        };
        let (vm, driver) = StorvspVm::start_with_storvsc(
            device,
            StorvspVmConfig {
                ring_pages: 32,
                buffer_pages: 16384,
                // Buffers of consecutive guest pages, as a guest backed by
                // huge pages hands out; scattered pages are the tests' job.
                scatter_buffers: false,
                executor: executor.clone(),
                ..StorvspVmConfig::default()
            },
            &DriverConfig {
                profile: GuestProfile::Linux,
                cpus: channels,
                buffer_offset: 0,
                completions,
            },
        )
        .map_err(|e| match e {
            StartError::Vm(e) => BenchError::Vm(e),
            StartError::Driver(e) => BenchError::Driver(e),
        })?;
        let disk = driver.disk(0).ok_or(BenchError::TooSmall(size))?;
        let block_size = u64::from(disk.capacity().1);
        for &workload in &config.workloads {
            if size < u64::from(workload.block) {
                return Err(BenchError::TooSmall(size));
            }
            let count = (config.bytes_per_run / u64::from(workload.block)).clamp(400, 40_000);
            let count = if workload.block <= 4096 {
                count.min(20_000)
            } else {
                count
            };
            let offsets = offsets(workload, size, count);
            let blocks = (u64::from(workload.block) / block_size) as u32;
            // Rounds alternate the baseline and the device so both see the
            // same machine; the medians count.
            let rounds = config.rounds.max(1);
            let mut pread = Vec::with_capacity(rounds);
            let mut threaded = Vec::with_capacity(rounds);
            let mut device = Vec::with_capacity(rounds);
            let with_threads = workload.random && workload.depth >= 2;
            for _ in 0..rounds {
                pread.push(pread_span(&file, workload.block, workload.depth, &offsets)?);
                if with_threads {
                    threaded.push(threaded_pread_span(
                        &file,
                        workload.block,
                        workload.depth,
                        &offsets,
                    )?);
                }
                let reads = disk.read_discard(
                    offsets.iter().map(|&at| (at / block_size, blocks)),
                    workload.depth,
                );
                let watch = Stopwatch::start();
                match &executor {
                    Some(executor) => block_on(executor.run(reads)),
                    None => block_on(reads),
                }?;
                device.push(watch.stop());
            }
            let (pread_iops, pread_cpu) = medians(&pread, offsets.len());
            let (iops, cpu) = medians(&device, offsets.len());
            let threaded_pread = with_threads.then(|| medians(&threaded, offsets.len()));
            rows.push(BenchRow {
                workload,
                layout,
                channels,
                iops,
                mb_per_s: iops * f64::from(workload.block) / 1e6,
                pread_iops,
                ratio: iops / pread_iops,
                cpu: CpuPerUnit {
                    value: cpu,
                    baseline: pread_cpu,
                    unit: CpuUnit::NsPerRequest,
                },
                threaded_pread,
            });
        }
        drop(driver);
        drop(vm);
    }
    Ok(rows)
}

/// Formats rows as a table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "workload                 layout      ch  storvsc IOPS   storvsc MB/s    pread IOPS     pread MB/s  ratio  storvsc CPU ns/read  pread CPU ns/read\n",
    );
    for r in rows {
        let w = r.workload;
        let name = format!(
            "{} {} QD{}",
            if w.block >= 1 << 20 {
                format!("{} MiB", w.block >> 20)
            } else {
                format!("{} KiB", w.block >> 10)
            },
            if w.random { "random" } else { "seq" },
            w.depth
        );
        out.push_str(&format!(
            "{name:<24} {:<10} {:>3} {:>13.0} {:>14.1} {:>13.0} {:>14.1} {:>6.2} {:>20.0} {:>18.0}\n",
            r.layout.name(),
            r.channels,
            r.iops,
            r.mb_per_s,
            r.pread_iops,
            r.pread_iops * f64::from(w.block) / 1e6,
            r.ratio,
            r.cpu.value,
            r.cpu.baseline
        ));
        if let Some((iops, cpu)) = r.threaded_pread {
            out.push_str(&format!(
                "{:<24} {:<10} {:>3} {:>13} {:>14} {:>13.0} {:>14.1} {:>6.2} {:>20} {:>18.0}\n",
                format!("  vs pread, {PREAD_THREADS} threads"),
                "",
                "",
                "",
                "",
                iops,
                iops * f64::from(w.block) / 1e6,
                r.iops / iops,
                "",
                cpu
            ));
        }
    }
    out
}

/// Drops `path` from the page cache and reads it back in sequentially, in
/// 1 MiB reads. The folios a file's pages are cached in depend on how they
/// got there (the writes that made it, or read-ahead), and copying out of
/// small folios costs measurably more per byte (about 12 % here between a
/// file written in 4 KiB and one written in 1 MiB pieces). The baseline's
/// raw file and the served VHDX go through this same path, so both are
/// cached alike, as a guest finds an image it has read once.
fn recache(path: &Path) -> Result<(), BenchError> {
    let file = File::open(path)?;
    file.sync_all()?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
        .map_err(std::io::Error::from)?;
    let size = file.metadata()?.len();
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let len = (size - at).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// Makes a page-cached image of `size` bytes of pseudo-random data at
/// `path`: written, then dropped from the page cache and read back
/// sequentially, the way the served VHDX is cached too.
pub fn make_image(path: &Path, size: u64) -> Result<(), BenchError> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(File::create(path)?);
    let mut state = 0x1234_5678_9ABC_DEF1u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let len = (size - written).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..len])?;
        written += len as u64;
    }
    file.flush()?;
    drop(file);
    recache(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_report_positive_cpu_per_read_beside_pread() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        make_image(&image, 4 << 20).unwrap();
        let mut config = BenchConfig::standard(image);
        config.format = ImageFormat::Raw;
        config.runs = vec![(Layout::OneThread, 1), (Layout::Threads, 1)];
        config.workloads[2].block = 64 << 10;
        config.bytes_per_run = 0;
        let rows = run(&config).unwrap();
        assert_eq!(rows.len(), 6);
        for r in &rows {
            assert!(r.iops > 0.0 && r.pread_iops > 0.0, "{r:?}");
            assert_eq!(r.cpu.unit, CpuUnit::NsPerRequest);
            assert!(r.cpu.both_measured(), "{r:?}");
            // The threaded baseline: random reads with more than one in
            // flight (QD32 here), measured.
            let deep_random = r.workload.random && r.workload.depth > 1;
            assert_eq!(r.threaded_pread.is_some(), deep_random, "{r:?}");
            if let Some((iops, cpu)) = r.threaded_pread {
                assert!(iops > 0.0 && cpu.is_finite() && cpu > 0.0, "{r:?}");
            }
        }
        let table = table(&rows);
        assert_eq!(table.lines().count(), 7 + 2, "a line per threaded baseline");
        assert!(table.lines().next().unwrap().ends_with("pread CPU ns/read"));
    }
}
