//! The out-of-process device backend against the same device in process:
//! storvsc → ring → storvsp 4 KiB random reads at QD32, once with the
//! device local and once through a
//! [`RemoteDevice`](vmbdev_remote::RemoteDevice) whose server runs
//! elsewhere, both on the same kind of VMM side (memfd memory, eventfd
//! doorbells, a thread per channel). Only control crosses the socket, so
//! the two should be close.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::future::block_on;
use vmbdev_device::bus::VmbusDevice;
use vmbdev_guest::storvsc::driver::NoSubChannels;
use vmbdev_guest::storvsc::{DriverConfig, DriverError, GuestProfile, Storvsc};
use vmbdev_remote::devices::{BuildError, DeviceKind, build_device};
use vmbdev_remote::vmm::{EventfdVm, VmmError};

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
/// same background load, and reports the median of each.
pub fn run(
    image: &Path,
    remote: Arc<dyn VmbusDevice>,
    count: u64,
) -> Result<RemoteRow, RemoteBenchError> {
    let local = build_device(DeviceKind::Storvsp, image, 0)?;
    // One unmeasured run warms the page cache for both.
    iops(local.clone(), count)?;
    let mut local_figures = Vec::with_capacity(ROUNDS);
    let mut remote_figures = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        local_figures.push(iops(local.clone(), count)?);
        remote_figures.push(iops(remote.clone(), count)?);
    }
    Ok(RemoteRow {
        remote_iops: median(&mut remote_figures),
        local_iops: median(&mut local_figures),
    })
}

fn median(figures: &mut [f64]) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

fn iops(device: Arc<dyn VmbusDevice>, count: u64) -> Result<f64, RemoteBenchError> {
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
    let start = Instant::now();
    block_on(disk.read_discard(lbas.iter().map(|&lba| (lba, per_read as u32)), DEPTH))?;
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    drop(driver);
    vm.suspend();
    Ok(count as f64 / elapsed)
}
