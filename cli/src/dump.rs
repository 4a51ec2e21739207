//! `vmbdev dump`: reads a whole virtual disk and writes its bytes to a file,
//! through the storvsc guest driver (default) or straight from the block
//! device (`--direct`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use vmbdev_block::{BlockDevice, BlockError};

use vmbdev_vhdx::{VhdxError, open_image};

use crate::dump_storvsp::{StorvscDumpError, dump_through_storvsc};

/// Arguments of `vmbdev dump`.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// Read the image directly through the block device (no VM).
    #[arg(long)]
    direct: bool,
    /// The disk image (VHDX or raw).
    image: PathBuf,
    /// Where to write the disk bytes.
    #[arg(short, long)]
    output: PathBuf,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The image could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Why.
        source: VhdxError,
    },
    /// Reading the image failed.
    #[error("{path}: reading sector {lba}: {source}")]
    Read {
        /// Image path.
        path: PathBuf,
        /// First sector of the failed read.
        lba: u64,
        /// Why.
        source: BlockError,
    },
    /// Reading through the storvsc guest driver failed.
    #[error("{path}: {source}")]
    Storvsc {
        /// Image path.
        path: PathBuf,
        /// Why.
        source: StorvscDumpError,
    },
    /// The virtual disk holds no whole sector: nothing a disk could serve.
    #[error("{path}: the virtual disk is empty (no whole sector)")]
    Empty {
        /// Image path.
        path: PathBuf,
    },
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Write {
        /// Output path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Bytes read per request with `--direct`.
const CHUNK: u64 = 4 << 20;

/// Runs the dump.
pub fn run(args: &DumpArgs) -> Result<(), DumpError> {
    let device: Arc<dyn BlockDevice> =
        Arc::from(open_image(&args.image).map_err(|source| DumpError::Open {
            path: args.image.clone(),
            source,
        })?);
    // Both paths refuse what the storvsc path cannot serve, before the
    // output is created.
    if device.size_bytes() < u64::from(device.logical_sector_size()) {
        return Err(DumpError::Empty {
            path: args.image.clone(),
        });
    }
    let write_err = |source| DumpError::Write {
        path: args.output.clone(),
        source,
    };
    let file = File::create(&args.output).map_err(write_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    if args.direct {
        direct(device.as_ref(), args, &mut out)?;
    } else {
        dump_through_storvsc(device, &mut out).map_err(|source| DumpError::Storvsc {
            path: args.image.clone(),
            source,
        })?;
    }
    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)
}

fn direct(device: &dyn BlockDevice, args: &DumpArgs, out: &mut dyn Write) -> Result<(), DumpError> {
    let sector = u64::from(device.logical_sector_size());
    let size = device.size_bytes();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(CHUNK) as usize;
        let lba = at / sector;
        device
            .read_sectors(lba, &mut buf[..len])
            .map_err(|source| DumpError::Read {
                path: args.image.clone(),
                lba,
                source,
            })?;
        out.write_all(&buf[..len])
            .map_err(|source| DumpError::Write {
                path: args.output.clone(),
                source,
            })?;
        at += len as u64;
    }
    Ok(())
}
