//! `vmbdev dump`: reads a whole virtual disk (or, with `--partition N`,
//! one partition) and writes its bytes to a file (or standard output with
//! `-o -`), through the storvsc guest driver (default) or straight from the
//! block device (`--direct`). The output is never one of the images read,
//! and appears only when the dump is complete. Both paths ask the device
//! where its zeros are and never read them; a regular-file output gets
//! them, and zero blocks found in the data, as holes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use vmbdev_block::{BlockDevice, BlockError, Extent};

use crate::dump_storvsp::{StorvscDumpError, dump_through_storvsc};
use crate::error::CliError;
use crate::image::{self, FormatChoice, about};
use crate::output::Output;
use crate::sparse::{Pipe, PipeError, SparseWriter, pipelined};

/// Arguments of `vmbdev dump`.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// Read the image directly through the block device (no VM).
    #[arg(long)]
    direct: bool,
    /// The disk image (VHDX, VHD or raw).
    image: PathBuf,
    /// Where to write the disk bytes (`-`: standard output).
    #[arg(short, long)]
    output: PathBuf,
    /// Write only this partition's bytes (numbered as `info` shows them).
    #[arg(long)]
    partition: Option<usize>,
    /// How to read the image (default: by its signatures).
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatChoice,
}

/// Bytes read per request with `--direct`.
const CHUNK: u64 = 4 << 20;

/// Runs the dump.
pub fn run(args: &DumpArgs) -> Result<(), CliError> {
    let opened = image::open(&args.image, args.format)?;
    let mut device = opened.disk.into_device();
    if let Some(n) = args.partition {
        device = image::partition_device(&args.image, device, n)?;
    }
    // Both paths refuse what the storvsc path cannot serve, before the
    // output is created.
    if device.size_bytes() < u64::from(device.logical_sector_size()) {
        return Err(about(
            &args.image,
            "the virtual disk is empty (no whole sector)",
        ));
    }
    if crate::output::is_stdout(&args.output) && std::io::stdout().is_terminal() {
        return Err(CliError::new(
            "standard output: is a terminal; refusing to write the disk's bytes to it (redirect it or give -o FILE)",
        ));
    }
    let output = Output::create(&args.output, &opened.guard.files)?;
    let mut out = SparseWriter::new(output, device.size_bytes())?;
    if args.direct {
        direct(device.as_ref(), &args.image, &mut out)?;
    } else {
        dump_through_storvsc(device, &mut out).map_err(|e| match e {
            StorvscDumpError::Write(e) => CliError::from(e),
            other => about(&args.image, other),
        })?;
    }
    out.finish()?;
    drop(opened.guard);
    Ok(())
}

/// Copies the device's bytes to `out`, extent by extent: zero extents are
/// never read (the device's map says what they hold). Reads run on this
/// thread while the previous chunk is written on another.
fn direct(device: &dyn BlockDevice, image: &Path, out: &mut SparseWriter) -> Result<(), CliError> {
    let failed = |lba: u64, e: BlockError| about(image, format!("{e} at sector {lba}"));
    pipelined(out, BUFFERS, CHUNK as usize, |pipe| walk(device, pipe)).map_err(|e| match e {
        PipeError::Produce((lba, e)) => failed(lba, e),
        PipeError::Write(e) => e.into(),
    })
}

/// Buffers going round between reading and writing.
const BUFFERS: usize = 3;

/// Hands the device's extents to `pipe` in order; stops early (with
/// success) when the writer has stopped.
fn walk(device: &dyn BlockDevice, pipe: &Pipe) -> Result<(), (u64, BlockError)> {
    let sector = u64::from(device.logical_sector_size());
    let sectors = device.sector_count();
    let mut lba = 0u64;
    while lba < sectors {
        let left = sectors - lba;
        let extent = device.locate(lba, left).map_err(|e| (lba, e))?;
        // A device's answer is at least one sector and at most what was
        // asked; clamp it anyway so a wrong one cannot stall or overrun.
        let run = extent.sectors().clamp(1, left);
        let going = match extent {
            Extent::Zero { .. } => pipe.zeros(run * sector),
            _ => copy_run(device, lba, run, pipe)?,
        };
        if !going {
            return Ok(());
        }
        lba += run;
    }
    Ok(())
}

/// Reads `count` sectors at `lba` into the pipe's buffers; false when the
/// writer has stopped.
fn copy_run(
    device: &dyn BlockDevice,
    lba: u64,
    count: u64,
    pipe: &Pipe,
) -> Result<bool, (u64, BlockError)> {
    let sector = u64::from(device.logical_sector_size());
    let mut at = lba;
    while at < lba + count {
        let Some(mut buf) = pipe.take() else {
            return Ok(false);
        };
        let n = (lba + count - at).min(buf.len() as u64 / sector);
        let len = (n * sector) as usize;
        device
            .read_sectors(at, &mut buf[..len])
            .map_err(|e| (at, e))?;
        if !pipe.data(buf, len) {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}
