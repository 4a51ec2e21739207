//! `vmbdev cat SOURCE PATH`: reads one file the way a guest would, through
//! the vmbfs client over a loopback channel to a vmbfs device serving
//! SOURCE (a host directory, or a raw disk image's file system). The device
//! sits behind the VMBus control plane of a loopback VM ([`BusVm`]): the
//! guest's VMBus client finds its offer and opens the channel first.

use clap::Args;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmbdev_fs::FsKind;
use vmbdev_fs::{FileTree, HostDirTree, OpenTreeError};

use crate::error::CliError;
use crate::image::{self, FormatChoice, Guard, about};
use crate::messages::{count, escape_name};
use crate::output::{Output, OutputError};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_guest::vmbfs::{ClientError, VmbfsBus, VmbfsClientError};
use vmbdev_loopback::bus::{BusVm, BusVmConfig, BusVmbfsClient};
use vmbdev_protocol::vmbfs::FileStatus;
use vmbdev_ring::{GpaRange, PAGE_SIZE};

/// Arguments of `vmbdev cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// A host directory, or a raw disk image holding FAT, NTFS or ext4.
    source: PathBuf,
    /// Path of the file inside the tree (`/` or `\` separated).
    path: String,
    /// Read by RDMA (SETUP_GPA_DIRECT + READ_FILE_RDMA into guest pages,
    /// which go straight to the output): the default.
    #[arg(long)]
    rdma: bool,
    /// Read in band instead (READ_FILE messages of at most 12 KiB), as a
    /// guest without RDMA does.
    #[arg(long, conflicts_with = "rdma")]
    in_band: bool,
    /// Partition number to serve from an image (default: the first with a
    /// recognised file system).
    #[arg(long)]
    partition: Option<usize>,
    /// How to read the image (default: by its signatures).
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatChoice,
    /// OEM code page of FAT 8.3 names: 437 (default) or 850.
    #[arg(long, default_value = "437")]
    codepage: vmbdev_fs::CodePage,
    /// Write the file here (`-`: standard output, the default) instead of
    /// standard output; never over an input.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// A tree to serve and what must stay locked while it is read.
pub struct Source {
    /// The tree.
    pub tree: Arc<dyn FileTree>,
    /// The image's locks (None for a host directory).
    pub guard: Option<Guard>,
}

/// Opens SOURCE as the tree to serve.
pub fn open_source(
    source: &Path,
    partition: Option<usize>,
    format: FormatChoice,
    code_page: vmbdev_fs::CodePage,
) -> Result<Source, CliError> {
    if source.is_dir() {
        if partition.is_some() {
            // A usage error, the same for every command: clap reports it
            // and exits with status 2.
            clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "{}: --partition only applies to disk images\n",
                    source.display()
                ),
            )
            .exit();
        }
        let tree = HostDirTree::open(source).map_err(|e| about(source, e))?;
        return Ok(Source {
            tree: Arc::new(tree),
            guard: None,
        });
    }
    let opened = image::open(source, format)?;
    let device = opened.disk.into_device();
    if let Some(n) = partition {
        image::find_partition(source, &*device, n)?;
    }
    let options = vmbdev_fs::MountOptions {
        fat_code_page: code_page,
    };
    let tree = vmbdev_fs::open_tree_with(device, partition, options)
        .map_err(|e| about(source, tree_error_text(&e)))?;
    Ok(Source {
        tree,
        guard: Some(opened.guard),
    })
}

/// Refuses, in words, a path naming a symbolic link (never followed) or a
/// special file, before the device is asked: its protocol has only a
/// generic error for them.
fn refuse_unreadable(tree: &dyn FileTree, args: &CatArgs) -> Result<(), CliError> {
    let Ok(meta) = tree.lookup(&vmbdev_fs::TreePath::parse(&args.path)) else {
        return Ok(());
    };
    if meta.kind.is_file() || meta.kind.is_dir() {
        return Ok(());
    }
    let mut what = format!(
        "{}: is {}",
        escape_name(&args.path),
        meta.kind.description()
    );
    if let Some(target) = &meta.link_target {
        what.push_str(&format!(
            " to {}; links are not followed",
            escape_name(target)
        ));
    } else {
        what.push_str(", which holds no bytes to read");
    }
    Err(about(&args.source, what))
}

/// Runs `vmbdev cat`.
pub fn run(args: &CatArgs) -> Result<(), CliError> {
    let source = open_source(&args.source, args.partition, args.format, args.codepage)?;
    let inputs = match &source.guard {
        Some(guard) => guard.files.clone(),
        // The host file being read.
        None => vec![
            args.source
                .join(args.path.replace('\\', "/").trim_start_matches('/')),
        ],
    };
    refuse_unreadable(&*source.tree, args)?;
    let stdout = PathBuf::from("-");
    let mut out = Output::create(args.output.as_ref().unwrap_or(&stdout), &inputs)?;
    let use_rdma = args.rdma || !args.in_band;
    let device: Arc<dyn VmbusDevice> = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree: source.tree,
        rdma_enabled: use_rdma,
    }));
    let vm = BusVm::new(BusVmConfig::default())?;
    let relid = vm.add_device(device)?;
    vm.connect()?;
    let mut client = BusVmbfsClient::new(vm.vmbfs_bus(relid), use_rdma);
    let streamed = futures_lite::future::block_on(stream(&mut client, &args.path, &mut out));
    let _ = futures_lite::future::block_on(client.close());
    drop(client);
    let _ = vm.unload();
    match streamed {
        Ok(()) => {}
        Err(Failure::Read(e)) if e.is_not_found() => {
            return Err(CliError::new(not_found(&args.source, &args.path)));
        }
        Err(Failure::Read(e)) => {
            return Err(about(
                &args.source,
                format!("{}: {e}", escape_name(&args.path)),
            ));
        }
        Err(Failure::ReadAt { offset, len, error }) => {
            return Err(about(
                &args.source,
                format!(
                    "{}: {}",
                    escape_name(&args.path),
                    read_failure(offset, len, &error)
                ),
            ));
        }
        Err(Failure::Write(e)) => return Err(e.into()),
    }
    out.finish()?;
    Ok(())
}

/// Bytes asked of the device per read: by RDMA, the guest pages of one
/// buffer; in band, what the client splits into messages. Big enough that
/// per-read costs vanish, small enough that a file of any size streams
/// through a fixed buffer.
const CHUNK: usize = 4 << 20;

/// Why streaming a file stopped.
enum Failure {
    /// The guest's read failed (the file is missing, the device refused).
    Read(VmbfsClientError),
    /// Reading `len` bytes of the file at `offset` failed.
    ReadAt {
        /// File offset of the read.
        offset: u64,
        /// Bytes asked.
        len: usize,
        /// What the client said.
        error: VmbfsClientError,
    },
    /// Writing the output failed.
    Write(OutputError),
}

/// Reads `path` chunk by chunk and writes each chunk to `out` as it
/// arrives, so memory stays bounded whatever the file's size. By RDMA
/// (when the client and the file allow it) the device writes each chunk
/// straight into one buffer of contiguous guest pages, which is copied out
/// once.
async fn stream(client: &mut BusVmbfsClient, path: &str, out: &mut Output) -> Result<(), Failure> {
    let file = client.open_path(path).await.map_err(Failure::Read)?;
    let mut offset = 0u64;
    if client.uses_rdma() && file.info.rdma_capable && !file.info.directory {
        // The kernel takes the bytes straight from guest memory, past
        // standard output's line buffer (nothing else is written there).
        let sink = out
            .stream_file()
            .map_err(|e| Failure::Write(out.error(e)))?;
        let pages = client
            .bus()
            .pages()
            .alloc_contiguous((CHUNK / PAGE_SIZE) as u64)
            .map_err(|e| Failure::Read(VmbfsClientError::from(e)))?;
        let result = async {
            let range = GpaRange::from_pages(CHUNK as u32, 0, &pages)
                .map_err(|_| Failure::Read(VmbfsClientError::NotRdma("no room for a buffer")))?;
            loop {
                let n = client
                    .read_file_to_guest(&file, offset, &range)
                    .await
                    .map_err(|error| Failure::ReadAt {
                        offset,
                        len: CHUNK,
                        error,
                    })?;
                if n == 0 {
                    return Ok(());
                }
                client
                    .bus()
                    .memory()
                    .write_to_stream(sink.as_fd(), pages[0] * PAGE_SIZE as u64, n as u64)
                    .map_err(|e| Failure::Write(out.error(e)))?;
                offset += n as u64;
            }
        }
        .await;
        client.bus().pages().free(&pages);
        return result;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = client
            .read_file(&file, offset, &mut buf)
            .await
            .map_err(|error| Failure::ReadAt {
                offset,
                len: CHUNK,
                error,
            })?;
        if n == 0 {
            return Ok(());
        }
        write_chunk(out, &buf[..n])?;
        offset += n as u64;
    }
}

/// A read of the file that failed, in words: which bytes, and the
/// device's answer by name when it gave one.
fn read_failure(offset: u64, len: usize, error: &VmbfsClientError) -> String {
    let end = offset.saturating_add(len as u64);
    match error {
        VmbfsClientError::Protocol(ClientError::DeviceError(status)) => format!(
            "the device could not read the file's bytes {offset}..{end} (vmbfs status {status}, {})",
            status_name(*status)
        ),
        other => format!("reading the file's bytes {offset}..{end}: {other}"),
    }
}

fn status_name(status: u32) -> &'static str {
    match FileStatus(status) {
        FileStatus::NOT_FOUND => "NOT_FOUND",
        FileStatus::END_OF_FILE => "END_OF_FILE",
        FileStatus::ERROR => "ERROR",
        _ => "not a vmbfs status",
    }
}

/// Why no file system could be served, in words and with the right plural.
fn tree_error_text(e: &OpenTreeError) -> String {
    match e {
        OpenTreeError::NothingMountable(n) => format!(
            "no partition holds a FAT, NTFS or ext4 file system ({} examined)",
            count(*n as u64, "partition", "partitions")
        ),
        OpenTreeError::Mount {
            number,
            kind,
            source,
        } => {
            let kind = match kind {
                FsKind::Fat => "FAT",
                FsKind::Ntfs => "NTFS",
                FsKind::Ext4 => "ext4",
            };
            format!("partition {number}: mounting {kind}: {source}")
        }
        other => other.to_string(),
    }
}

/// The one message `cat` and `ls` give for a path the tree does not hold.
pub fn not_found(source: &Path, path: &str) -> String {
    format!(
        "{}: {}: no such file or directory",
        source.display(),
        escape_name(path)
    )
}

fn write_chunk(out: &mut Output, data: &[u8]) -> Result<(), Failure> {
    out.write_all(data).map_err(Failure::Write)
}
