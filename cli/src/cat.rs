//! `vmbdev cat SOURCE PATH`: reads one file the way a guest would, through
//! the vmbfs client over a loopback channel to a vmbfs device serving
//! SOURCE (a host directory, or a raw disk image's file system).

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use vmbdev_backing::{FileTree, HostDirTree, open_image, open_tree};

use crate::error::CliError;
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_loopback::vm::{LoopbackVm, VmConfig};
use vmbdev_loopback::vmbfs::{VmbfsClient, VmbfsLoopback};

/// Arguments of `vmbdev cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// A host directory, or a raw disk image holding FAT, NTFS or ext4.
    source: PathBuf,
    /// Path of the file inside the tree (`/` or `\` separated).
    path: String,
    /// Read by RDMA (SETUP_GPA_DIRECT + READ_FILE_RDMA) instead of in-band.
    #[arg(long)]
    rdma: bool,
    /// Partition number to serve from an image (default: the first with a
    /// recognised file system).
    #[arg(long)]
    partition: Option<usize>,
    /// Write the file here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Opens SOURCE as the tree to serve.
pub fn open_source(
    source: &PathBuf,
    partition: Option<usize>,
) -> Result<Arc<dyn FileTree>, String> {
    if source.is_dir() {
        if partition.is_some() {
            return Err("--partition applies to disk images, not directories".into());
        }
        let tree = HostDirTree::open(source).map_err(|e| e.to_string())?;
        return Ok(Arc::new(tree));
    }
    let image = open_image(source).map_err(|e| format!("{}: {e}", source.display()))?;
    open_tree(Arc::from(image), partition).map_err(|e| format!("{}: {e}", source.display()))
}

/// Runs `vmbdev cat`.
pub fn run(args: &CatArgs) -> Result<(), CliError> {
    let tree = open_source(&args.source, args.partition).map_err(CliError::new)?;
    let device: Arc<dyn VmbusDevice> = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree,
        rdma_enabled: args.rdma,
    }));
    let vm = LoopbackVm::new(&VmConfig::default())?;
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm, device), args.rdma);
    let data = match futures_lite::future::block_on(client.read_all(&args.path)) {
        Ok(data) => data,
        Err(e) if e.is_not_found() => {
            return Err(CliError::new(format!(
                "{}: no such file in {}",
                args.path,
                args.source.display()
            )));
        }
        Err(e) => return Err(CliError::new(format!("{}: {e}", args.path))),
    };
    let _ = futures_lite::future::block_on(client.close());
    match &args.output {
        Some(path) => std::fs::write(path, &data)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display()))),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)
                .and_then(|()| out.flush())
                .map_err(|e| CliError::new(format!("standard output: {e}")))
        }
    }
}
