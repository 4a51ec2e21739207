//! `vmbdev dump` without `--direct`: reads the whole virtual disk the way a
//! guest does, and writes the bytes to a file. The storvsp device serving
//! the image sits behind the VMBus control plane of a loopback VM
//! ([`BusVm`]): the guest's VMBus client finds its offer, opens the primary
//! channel and the sub-channel, and the storvsc driver reads over them.
//! The runs the device maps as zeros are not read through the guest.

use std::sync::Arc;

use futures_lite::future::block_on;
use vmbdev_block::{BlockDevice, BlockError, Extent};
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_guest::storvsc::{Disk, DriverConfig, DriverError, GuestProfile, Storvsc};
use vmbdev_loopback::bus::{BusVm, BusVmConfig, BusVmError};

use crate::messages::sense_text;
use crate::output::OutputError;
use crate::sparse::{DiskSink, Pipe, PipeError, pipelined};

/// Why reading through storvsc failed.
#[derive(Debug, thiserror::Error)]
pub enum StorvscDumpError {
    /// The image has no whole sector.
    #[error("the virtual disk is empty (no whole sector)")]
    Empty,
    /// The loopback VM or its control plane failed.
    #[error("loopback VM: {0}")]
    Vm(#[from] BusVmError),
    /// The device configuration was refused.
    #[error("storvsp: {0}")]
    Config(#[from] vmbdev_device::storvsp::ConfigError),
    /// The guest driver failed.
    #[error("storvsc: {}", driver_text(.0))]
    Driver(#[from] DriverError),
    /// A read through the guest driver failed.
    #[error("{} at sectors {first}-{last}", driver_text(.source))]
    Read {
        /// First sector of the failed batch.
        first: u64,
        /// Last sector of the failed batch.
        last: u64,
        /// Why.
        source: DriverError,
    },
    /// The scan did not find the disk.
    #[error("the storvsc scan found no disk")]
    NoDisk,
    /// The guest saw a different size than the image has.
    #[error("storvsc sees {blocks} blocks of {block_size} bytes, the image has {bytes} bytes")]
    Capacity {
        /// Blocks seen.
        blocks: u64,
        /// Block size seen.
        block_size: u32,
        /// Image size.
        bytes: u64,
    },
    /// The device's map could not be read.
    #[error("{0}")]
    Map(BlockError),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Write(OutputError),
}

/// A driver error in words: a failed SCSI command by its name and sense
/// data, never the driver's raw fields.
fn driver_text(e: &DriverError) -> String {
    match e {
        DriverError::Srb {
            opcode,
            srb_status,
            scsi_status,
            sense,
            ..
        } => {
            let command = scsi_command_name(*opcode);
            match sense {
                Some((key, asc)) => format!("{} (SCSI {command})", sense_text(*key, *asc)),
                None => format!(
                    "SCSI {command} failed (SRB status {srb_status:#04x}, SCSI status {scsi_status:#04x})"
                ),
            }
        }
        other => other.to_string(),
    }
}

/// The name of a SCSI command by its opcode.
fn scsi_command_name(opcode: u8) -> String {
    match opcode {
        0x00 => "TEST UNIT READY".into(),
        0x03 => "REQUEST SENSE".into(),
        0x12 => "INQUIRY".into(),
        0x25 => "READ CAPACITY(10)".into(),
        0x28 => "READ(10)".into(),
        0x2a => "WRITE(10)".into(),
        0x35 => "SYNCHRONIZE CACHE(10)".into(),
        0x88 => "READ(16)".into(),
        0x8a => "WRITE(16)".into(),
        0x9e => "READ CAPACITY(16)".into(),
        0xa0 => "REPORT LUNS".into(),
        other => format!("command {other:#04x}"),
    }
}

/// Bytes read per batch of concurrent requests.
const BATCH_BYTES: u64 = 16 << 20;
/// Requests in flight.
const DEPTH: usize = 16;

/// Reads all of `device` through storvsc → ring → storvsp and writes it to
/// `out`; returns the bytes written. Runs the device says are zeros are
/// not read: the guest reads what is allocated, as a guest that knows the
/// disk's map would.
pub fn dump_through_storvsc(
    device: Arc<dyn BlockDevice>,
    out: &mut (dyn DiskSink + Send),
) -> Result<u64, StorvscDumpError> {
    let vm = BusVm::new(bus_config(false))?;
    let relid = vm.add_device(storvsp_device(device.clone())?)?;
    vm.connect()?;
    let size = dump_on_bus(&vm, relid, device, out, &mut || {})?;
    vm.unload()?;
    Ok(size)
}

/// The loopback VM shape a dump needs: rings as the devices' offers ask,
/// room for a batch of data buffers.
pub fn bus_config(trace: bool) -> BusVmConfig {
    BusVmConfig {
        memory_pages: 12288,
        trace,
        ..BusVmConfig::default()
    }
}

/// A storvsp device serving `device` as LUN 0:0:0, one sub-channel allowed.
pub fn storvsp_device(
    device: Arc<dyn BlockDevice>,
) -> Result<Arc<StorvspDevice>, StorvscDumpError> {
    let controller = Arc::new(Controller::new());
    let lun = LunAddress {
        path: 0,
        target: 0,
        lun: 0,
    };
    controller.insert(lun, Arc::new(ScsiDisk::new(device)));
    let config = StorvspConfig {
        max_sub_channels: 1,
        multi_channel: true,
        ..StorvspConfig::default()
    };
    Ok(Arc::new(StorvspDevice::new(config, controller)?))
}

/// [`dump_through_storvsc`] on a connected `vm` whose storvsp device
/// (serving `device`) is offered as `relid`: opens its channels, calls
/// `opened` once the driver is connected over them, reads, and leaves the
/// channels to the VM's UNLOAD.
pub fn dump_on_bus(
    vm: &BusVm,
    relid: u32,
    device: Arc<dyn BlockDevice>,
    out: &mut (dyn DiskSink + Send),
    opened: &mut dyn FnMut(),
) -> Result<u64, StorvscDumpError> {
    let size = device.size_bytes();
    if size == 0 {
        return Err(StorvscDumpError::Empty);
    }
    let config = DriverConfig {
        profile: GuestProfile::Linux,
        cpus: 2,
        buffer_offset: 0,
        ..DriverConfig::default()
    };
    let (primary, _) = vm.open(relid)?;
    let opener = vm.storvsc_opener(relid)?;
    let driver = block_on(Storvsc::connect(
        primary,
        vm.memory().clone(),
        vm.pages().clone(),
        opener.as_ref(),
        &config,
    ))?;
    opened();
    let disk = driver.disk(0).ok_or(StorvscDumpError::NoDisk)?;
    let (blocks, block_size) = disk.capacity();
    if blocks.saturating_mul(u64::from(block_size)) != size
        || block_size != device.logical_sector_size()
    {
        return Err(StorvscDumpError::Capacity {
            blocks,
            block_size,
            bytes: size,
        });
    }
    let batch = Batch::new(&disk, BATCH_BYTES);
    let bytes = (batch.capacity * u64::from(block_size)) as usize;
    pipelined(out, BUFFERS, bytes, |pipe| {
        read_disk(device.as_ref(), &disk, batch, pipe)
    })
    .map_err(|e| match e {
        PipeError::Produce(e) => e,
        PipeError::Write(e) => StorvscDumpError::Write(e),
    })?;
    drop(disk);
    drop(driver);
    Ok(size)
}

/// Buffers going round between the guest's reads and the writer.
const BUFFERS: usize = 3;

/// Reads the disk's allocated runs through the guest driver into `pipe`,
/// and hands over the zero runs the device maps without reading them.
fn read_disk(
    device: &dyn BlockDevice,
    disk: &Disk,
    mut batch: Batch,
    pipe: &Pipe,
) -> Result<(), StorvscDumpError> {
    let (blocks, block_size) = disk.capacity();
    let mut lba = 0u64;
    while lba < blocks {
        let left = blocks - lba;
        let extent = device.locate(lba, left).map_err(StorvscDumpError::Map)?;
        let run = extent.sectors().clamp(1, left);
        let going = if let Extent::Zero { .. } = extent {
            batch.flush(disk, pipe)? && pipe.zeros(run * u64::from(block_size))
        } else {
            batch.add(disk, lba, run, pipe)?
        };
        if !going {
            return Ok(());
        }
        lba += run;
    }
    batch.flush(disk, pipe)?;
    Ok(())
}

/// Guest reads gathered into one window of requests in flight, and the
/// buffer their data lands in (allocated once).
struct Batch {
    /// `(lba, blocks)` of each request, each at most the disk's maximum.
    requests: Vec<(u64, u32)>,
    /// Blocks the requests cover.
    blocks: u64,
    /// Most blocks a batch holds.
    capacity: u64,
    /// Most blocks per request.
    per: u64,
}

impl Batch {
    fn new(disk: &Disk, bytes: u64) -> Self {
        let (_, block_size) = disk.capacity();
        let per = u64::from(disk.max_blocks_per_request());
        let capacity = (bytes / u64::from(block_size)).max(per);
        Self {
            requests: Vec::with_capacity(capacity.div_ceil(per) as usize + 1),
            blocks: 0,
            capacity,
            per,
        }
    }

    /// Adds the reads of `count` blocks at `lba`, sending the batch each
    /// time it is full; false when the writer has stopped.
    fn add(
        &mut self,
        disk: &Disk,
        lba: u64,
        count: u64,
        pipe: &Pipe,
    ) -> Result<bool, StorvscDumpError> {
        let mut at = lba;
        let end = lba + count;
        while at < end {
            let room = self.capacity - self.blocks;
            let n = (end - at).min(self.per).min(room);
            // Runs that meet are one request, as a block layer merges them.
            match self.requests.last_mut() {
                Some((first, blocks))
                    if *first + u64::from(*blocks) == at && u64::from(*blocks) + n <= self.per =>
                {
                    *blocks += n as u32;
                }
                _ => self.requests.push((at, n as u32)),
            }
            self.blocks += n;
            at += n;
            if self.blocks == self.capacity && !self.flush(disk, pipe)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends the gathered reads and hands their data to the writer, in
    /// order; false when the writer has stopped.
    fn flush(&mut self, disk: &Disk, pipe: &Pipe) -> Result<bool, StorvscDumpError> {
        let Some(&(first, _)) = self.requests.first() else {
            return Ok(true);
        };
        let Some(mut buf) = pipe.take() else {
            return Ok(false);
        };
        let (_, block_size) = disk.capacity();
        let len = (self.blocks * u64::from(block_size)) as usize;
        block_on(disk.read_many_into(&self.requests, DEPTH, &mut buf[..len])).map_err(
            |source| StorvscDumpError::Read {
                first,
                last: first + self.blocks - 1,
                source,
            },
        )?;
        self.requests.clear();
        self.blocks = 0;
        Ok(pipe.data(buf, len))
    }
}
