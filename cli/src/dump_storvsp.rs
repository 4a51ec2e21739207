//! `vmbdev dump` without `--direct`: reads the whole virtual disk the way a
//! guest does, through the storvsc driver over a loopback ring to the
//! storvsp device serving the image, and writes the bytes to a file.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use futures_lite::future::block_on;
use indicatif::{ProgressBar, ProgressStyle};
use vmbdev_block::BlockDevice;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{Controller, LunAddress, StorvspConfig, StorvspDevice};
use vmbdev_guest::storvsc::{DriverConfig, DriverError, GuestProfile, Storvsc};
use vmbdev_loopback::storvsp::{StorvspVm, StorvspVmConfig, VmError};

use crate::messages::sense_text;

/// Why reading through storvsc failed.
#[derive(Debug, thiserror::Error)]
pub enum StorvscDumpError {
    /// The image has no whole sector.
    #[error("the virtual disk is empty (no whole sector)")]
    Empty,
    /// The loopback VM could not be built.
    #[error("loopback VM: {0}")]
    Vm(#[from] VmError),
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
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Write(std::io::Error),
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
/// `out`; returns the bytes written. Shows a progress bar when stderr is a
/// terminal.
pub fn dump_through_storvsc(
    device: Arc<dyn BlockDevice>,
    out: &mut dyn Write,
) -> Result<u64, StorvscDumpError> {
    let size = device.size_bytes();
    if size == 0 {
        return Err(StorvscDumpError::Empty);
    }
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
    let storvsp = Arc::new(StorvspDevice::new(config, controller)?);
    let (vm, primary) = StorvspVm::start(storvsp, StorvspVmConfig::default())?;
    let opener = vm.opener();
    let driver = block_on(Storvsc::connect(
        primary,
        vm.memory(),
        vm.pages(),
        opener.as_ref(),
        &DriverConfig {
            profile: GuestProfile::Linux,
            cpus: 2,
            buffer_offset: 0,
        },
    ))?;
    let disk = driver.disk(0).ok_or(StorvscDumpError::NoDisk)?;
    let (blocks, block_size) = disk.capacity();
    if blocks.saturating_mul(u64::from(block_size)) != size {
        return Err(StorvscDumpError::Capacity {
            blocks,
            block_size,
            bytes: size,
        });
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(size);
        if let Ok(style) =
            ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} {eta}")
        {
            bar.set_style(style);
        }
        bar
    });
    let per = u64::from(disk.max_blocks_per_request());
    let batch_blocks = (BATCH_BYTES / u64::from(block_size)).max(per);
    let mut lba = 0u64;
    while lba < blocks {
        let end = (lba + batch_blocks).min(blocks);
        let mut requests = Vec::new();
        let mut at = lba;
        while at < end {
            let count = (end - at).min(per);
            requests.push((at, count as u32));
            at += count;
        }
        let chunks = block_on(disk.read_many(&requests, DEPTH)).map_err(|source| {
            StorvscDumpError::Read {
                first: lba,
                last: end - 1,
                source,
            }
        })?;
        for chunk in &chunks {
            out.write_all(chunk).map_err(StorvscDumpError::Write)?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        lba = end;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    drop(driver);
    drop(vm);
    Ok(size)
}
