//! `vmbdev dump`: reads a whole virtual disk (or, with `--partition N`,
//! one partition) and writes its bytes to a file (or standard output with
//! `-o -`), through the storvsc guest driver (default) or straight from the
//! block device (`--direct`). The output is never one of the images read,
//! and appears only when the dump is complete.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use vmbdev_block::BlockDevice;

use crate::dump_storvsp::{StorvscDumpError, dump_through_storvsc};
use crate::error::CliError;
use crate::image::{self, FormatChoice, about};
use crate::output::{Output, OutputError, stdout_error};

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

/// A write error on the output, as the command reports it.
fn write_error(args: &DumpArgs, e: std::io::Error) -> CliError {
    if crate::output::is_stdout(&args.output) {
        CliError::from(stdout_error(e))
    } else {
        CliError::from(OutputError::Io {
            path: args.output.clone(),
            source: e,
        })
    }
}

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
    let mut out = BufWriter::with_capacity(1 << 20, output);
    if args.direct {
        direct(device.as_ref(), args, &mut out)?;
    } else {
        dump_through_storvsc(device, &mut out).map_err(|e| match e {
            StorvscDumpError::Write(e) => write_error(args, e),
            other => about(&args.image, other),
        })?;
    }
    let output = out
        .into_inner()
        .map_err(|e| write_error(args, e.into_error()))?;
    output.finish()?;
    drop(opened.guard);
    Ok(())
}

fn direct(device: &dyn BlockDevice, args: &DumpArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let sector = u64::from(device.logical_sector_size());
    let size = device.size_bytes();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(CHUNK) as usize;
        let lba = at / sector;
        device
            .read_sectors(lba, &mut buf[..len])
            .map_err(|e| about(&args.image, format!("{e} at sector {lba}")))?;
        out.write_all(&buf[..len])
            .map_err(|e| write_error(args, e))?;
        at += len as u64;
    }
    Ok(())
}
