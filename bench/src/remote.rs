//! The out-of-process device backend against the same device in process:
//! storvsc → ring → storvsp 4 KiB random reads at QD32, once with the
//! device local and once through a
//! [`RemoteDevice`](vmbdev_remote::RemoteDevice) whose server runs
//! elsewhere, both on the same kind of VMM side (memfd memory, eventfd
//! doorbells, a thread per channel). Only control crosses the socket, so
//! the two should be close.
//!
//! The host CPU time per read counts this process and, for the remote
//! device, the server's threads as its caller reports them: the server
//! does the device's work.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::block_on;
use vmbdev_device::bus::VmbusDevice;
use vmbdev_guest::storvsc::driver::NoSubChannels;
use vmbdev_guest::storvsc::{DriverConfig, DriverError, GuestProfile, Storvsc};
use vmbdev_remote::devices::{BuildError, DeviceKind, build_device};
use vmbdev_remote::vmm::{EventfdVm, VmmError};

use crate::cpu::{CpuPerUnit, CpuUnit, Span, Stopwatch};

/// Bytes of one read.
pub const BLOCK: u32 = 4096;
/// Reads in flight.
pub const DEPTH: usize = 32;

/// An error of the remote suite.
#[derive(Debug, thiserror::Error)]
pub enum RemoteBenchError {
    /// The local device could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The VMM side failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The device offered no disk.
    #[error("no disk at LUN 0")]
    NoDisk,
}

/// One figure pair of the suite.
#[derive(Debug, Clone, Copy)]
pub struct RemoteRow {
    /// IOPS through the remote device.
    pub remote_iops: f64,
    /// IOPS with the device in process.
    pub local_iops: f64,
    /// CPU time per read through the remote device (this process and the
    /// server) and with the device in process (medians of the rounds).
    pub cpu: CpuPerUnit,
}

impl RemoteRow {
    /// `remote / local`.
    pub fn ratio(&self) -> f64 {
        self.remote_iops / self.local_iops.max(1e-9)
    }
}

/// Rounds of the comparison; the medians are reported.
pub const ROUNDS: usize = 5;

/// Measures `count` random 4 KiB reads of `image` at QD32 through `remote`
/// (a storvsp device over the same image, served elsewhere, without
/// sub-channels) and through a local storvsp device, alternating local and
/// remote for [`ROUNDS`] rounds so both see the same page cache and the
/// same background load, and reports the median of each. `server_cpu`
/// reads the CPU time the server has used so far (`None` where it cannot
/// be read: the remote figure then counts this process alone).
pub fn run(
    image: &Path,
    remote: Arc<dyn VmbusDevice>,
    server_cpu: &dyn Fn() -> Option<Duration>,
    count: u64,
) -> Result<RemoteRow, RemoteBenchError> {
    let local = build_device(DeviceKind::Storvsp, image, 0)?;
    let in_process = || None;
    // One unmeasured run warms the page cache for both.
    reads(local.clone(), &in_process, count)?;
    let mut local_spans = Vec::with_capacity(ROUNDS);
    let mut remote_spans = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        local_spans.push(reads(local.clone(), &in_process, count)?);
        remote_spans.push(reads(remote.clone(), server_cpu, count)?);
    }
    let count = count as f64;
    let rate = |s: Span| count / s.secs();
    let cpu = |s: Span| CpuUnit::NsPerRequest.per(s.cpu, count);
    Ok(RemoteRow {
        remote_iops: median_of(&remote_spans, rate),
        local_iops: median_of(&local_spans, rate),
        cpu: CpuPerUnit {
            value: median_of(&remote_spans, cpu),
            baseline: median_of(&local_spans, cpu),
            unit: CpuUnit::NsPerRequest,
        },
    })
}

fn median_of(spans: &[Span], figure: impl Fn(Span) -> f64) -> f64 {
    median(&mut spans.iter().map(|&s| figure(s)).collect::<Vec<_>>())
}

fn median(figures: &mut [f64]) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// Times `count` reads through `device`; the CPU time is this process's
/// plus what `device_cpu` says the device's process used meanwhile.
fn reads(
    device: Arc<dyn VmbusDevice>,
    device_cpu: &dyn Fn() -> Option<Duration>,
    count: u64,
) -> Result<Span, RemoteBenchError> {
    let vm = EventfdVm::new(device, 16384, 32, 0, true)?;
    let primary = vm.open_channel(0)?;
    let driver = block_on(Storvsc::connect(
        primary,
        vm.memory().clone(),
        vm.pages().clone(),
        &NoSubChannels,
        &DriverConfig {
            profile: GuestProfile::Linux,
            cpus: 1,
            buffer_offset: 0,
            ..DriverConfig::default()
        },
    ))?;
    let disk = driver.disk(0).ok_or(RemoteBenchError::NoDisk)?;
    let (blocks, block_size) = disk.capacity();
    let per_read = u64::from(BLOCK) / u64::from(block_size.max(1));
    let slots = (blocks / per_read.max(1)).max(1);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let lbas: Vec<u64> = (0..count)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D) % slots * per_read
        })
        .collect();
    // Sampled while the server's channel thread is alive (it is opened
    // above and closed below), so its time is all counted.
    let device_before = device_cpu();
    let watch = Stopwatch::start();
    block_on(disk.read_discard(lbas.iter().map(|&lba| (lba, per_read as u32)), DEPTH))?;
    let mut span = watch.stop();
    if let (Some(before), Some(after)) = (device_before, device_cpu()) {
        span.cpu += after.saturating_sub(before);
    }
    drop(driver);
    vm.suspend();
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_cpu_time_is_charged_to_the_remote_reads() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        crate::storvsp::make_image(&image, 4 << 20).unwrap();
        // A second local device stands in for the server; its "process"
        // uses one second between any two samples.
        let stand_in = build_device(DeviceKind::Storvsp, &image, 0).unwrap();
        let samples = std::cell::Cell::new(0u64);
        let server_cpu = || {
            samples.set(samples.get() + 1);
            Some(Duration::from_secs(samples.get()))
        };
        let count = 200;
        let row = run(&image, stand_in, &server_cpu, count).unwrap();
        assert_eq!(samples.get(), 2 * ROUNDS as u64);
        assert!(row.remote_iops > 0.0 && row.local_iops > 0.0, "{row:?}");
        assert!(row.cpu.value >= 1e9 / count as f64, "{row:?}");
        assert!(
            row.cpu.baseline.is_finite() && row.cpu.baseline > 0.0,
            "{row:?}"
        );
    }
}
