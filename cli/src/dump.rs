//! `vmbdev dump`: reads a whole virtual disk and writes its bytes to a file.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use vmbdev_backing::{BlockError, VhdxError, open_image};

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
    /// Only direct reads exist so far.
    #[error("dump without --direct is not supported; pass --direct")]
    NotDirect,
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
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Write {
        /// Output path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Bytes read per request.
const CHUNK: u64 = 4 << 20;

/// Runs the dump.
pub fn run(args: &DumpArgs) -> Result<(), DumpError> {
    if !args.direct {
        return Err(DumpError::NotDirect);
    }
    let device = open_image(&args.image).map_err(|source| DumpError::Open {
        path: args.image.clone(),
        source,
    })?;
    let write_err = |source| DumpError::Write {
        path: args.output.clone(),
        source,
    };
    let mut out = File::create(&args.output).map_err(write_err)?;
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
        out.write_all(&buf[..len]).map_err(write_err)?;
        at += len as u64;
    }
    out.sync_all().map_err(write_err)
}
