//! The async vmbfs client over a loopback channel, behaving like the
//! Hyper-V UEFI firmware: every volume open closes and reopens the channel
//! and negotiates version 0x00010000; files are opened as `parent + "\" +
//! name` with the trailing-NUL quirk ([`child_path`]); reads ask for
//! `min(buffer left, 12276)` bytes without clamping to the file size; when
//! GET_FILE_INFO says `rdma_capable`, each chunk is a SETUP_GPA_DIRECT
//! (handle 1, writable, one range over a buffer from the VM's page
//! allocator), a READ_FILE_RDMA, and a TEARDOWN_GPA_DIRECT deferred so it
//! goes out in the same publication as the next setup.
//!
//! [`VmbfsClient::file_info`], [`VmbfsClient::read`] and
//! [`VmbfsClient::read_all`] are the plain API on top.

use super::{
    ClientError, FileInfo, FileRead, RDMA_HANDLE, child_path, get_file_info_request,
    parse_file_info_response, parse_rdma_response, parse_read_response, rdma_chunk,
    read_request, root_path, version_request, parse_version_response,
};
use crate::vm::{ExitHandle, GuestChannel, LoopbackVm, RingShape, VmError};
use std::sync::Arc;
use vmbdev_device::bus::{ChannelError, VmbusDevice};
use vmbdev_protocol::vmbfs::MAX_RDMA_READ_SIZE;
use vmbdev_ring::pipe::MAX_MESSAGE_LEN;
use vmbdev_ring::{GpaRange, OutgoingPacket, PAGE_SIZE, PipeError, PipeMessage};

/// An error of the async client.
#[derive(Debug, thiserror::Error)]
pub enum VmbfsClientError {
    /// The host answered with an error status or a bad reply.
    #[error(transparent)]
    Protocol(#[from] ClientError),
    /// The ring or pipe failed.
    #[error("channel: {0}")]
    Pipe(#[from] PipeError),
    /// The host sent something other than a DATA message.
    #[error("host sent a non-data pipe message")]
    UnexpectedPipeMessage,
    /// The device stopped serving the channel.
    #[error("device stopped the channel: {0}")]
    DeviceStopped(String),
    /// The loopback VM failed (out of pages, open refused).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A read was asked of a directory.
    #[error("{0} is a directory")]
    IsADirectory(String),
    /// A length does not fit this machine's address space.
    #[error("length {0} does not fit in memory")]
    TooLarge(u64),
}

impl VmbfsClientError {
    /// Whether the host said the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Protocol(ClientError::NotFound))
    }
}

type Result<T, E = VmbfsClientError> = std::result::Result<T, E>;

/// An opened file or directory, as the firmware keeps it: its full path as
/// sent on the wire and what GET_FILE_INFO said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFile {
    /// UTF-16 path as sent (quirks included).
    pub path: Vec<u16>,
    /// GET_FILE_INFO's answer.
    pub info: FileInfo,
}

/// What the client moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Volume opens (channel opens).
    pub volume_opens: u64,
    /// Requests sent (pipe DATA messages).
    pub requests: u64,
    /// File bytes received in READ_FILE responses.
    pub in_band_bytes: u64,
    /// File bytes received by RDMA.
    pub rdma_bytes: u64,
    /// RDMA chunks read.
    pub rdma_chunks: u64,
}

/// A GPA-direct buffer whose teardown has not been sent yet.
struct PendingTeardown {
    handle: u32,
    pages: Vec<u64>,
}

/// The vmbfs client.
pub struct VmbfsClient {
    vm: LoopbackVm,
    device: Arc<dyn VmbusDevice>,
    channel: Option<GuestChannel>,
    exit: Option<ExitHandle>,
    use_rdma: bool,
    pending_teardown: Option<PendingTeardown>,
    stats: ClientStats,
}

impl std::fmt::Debug for VmbfsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbfsClient")
            .field("use_rdma", &self.use_rdma)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl VmbfsClient {
    /// A client of `device` in `vm`; no channel is open yet. With
    /// `use_rdma`, files the host marks RDMA capable are read by RDMA (as
    /// the firmware does); without, always in-band.
    pub fn new(vm: LoopbackVm, device: Arc<dyn VmbusDevice>, use_rdma: bool) -> Self {
        Self {
            vm,
            device,
            channel: None,
            exit: None,
            use_rdma,
            pending_teardown: None,
            stats: ClientStats::default(),
        }
    }

    /// Chooses whether RDMA-capable files are read by RDMA.
    pub fn set_use_rdma(&mut self, use_rdma: bool) {
        self.use_rdma = use_rdma;
    }

    /// What the client moved so far.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The open channel, if any (tests use it to suspend the device).
    pub fn channel_mut(&mut self) -> Option<&mut GuestChannel> {
        self.channel.as_mut()
    }

    /// Opens the volume as the firmware's `OpenVolume` does: closes any
    /// open channel, opens a fresh one, negotiates the version and looks
    /// up the root (empty path). Returns the root directory.
    pub async fn open_volume(&mut self) -> Result<UefiFile> {
        if let Err(error) = self.close().await {
            tracing::debug!(%error, "vmbfs client: previous channel ended badly");
        }
        let shape = RingShape::from_offer(&*self.device);
        let channel = self.vm.open_channel(self.device.clone(), 0, shape)?;
        self.exit = Some(channel.exit_handle());
        self.channel = Some(channel);
        self.stats.volume_opens += 1;
        let reply = self.request(&version_request()).await?;
        parse_version_response(&reply)?;
        let path = root_path();
        let info = self.get_file_info(&path).await?;
        Ok(UefiFile { path, info })
    }

    /// Closes the channel (if open) and returns how the device task ended.
    pub async fn close(&mut self) -> Result<()> {
        self.exit = None;
        if let Some(pending) = self.pending_teardown.take() {
            // The host forgets every buffer when the channel closes.
            self.vm.pages().free(&pending.pages);
        }
        match self.channel.take() {
            Some(channel) => channel.close().await.map_err(stopped),
            None => Ok(()),
        }
    }

    /// Stops the device task behind the open channel, keeping the rings
    /// (the VMM's step before saving device state).
    pub async fn suspend_device(&mut self) -> Result<()> {
        match self.channel.as_mut() {
            Some(channel) => channel.suspend_device().await.map_err(stopped),
            None => Ok(()),
        }
    }

    /// Serves the open channel with `device` (e.g. restored from saved
    /// state); later volume opens use it too.
    pub fn resume_device(&mut self, device: Arc<dyn VmbusDevice>) -> Result<()> {
        self.device = device.clone();
        if let Some(channel) = self.channel.as_mut() {
            channel.resume_device(device)?;
            self.exit = Some(channel.exit_handle());
        }
        Ok(())
    }

    /// Opens `name` under `parent` (the firmware's `Open`): builds the
    /// child path with its quirks and asks GET_FILE_INFO.
    pub async fn open(&mut self, parent: &UefiFile, name: &str) -> Result<UefiFile> {
        let path = child_path(&parent.path, name);
        let info = self.get_file_info(&path).await?;
        Ok(UefiFile { path, info })
    }

    /// GET_FILE_INFO of a raw UTF-16 path.
    pub async fn get_file_info(&mut self, path: &[u16]) -> Result<FileInfo> {
        let reply = self.request(&get_file_info_request(path)?).await?;
        Ok(parse_file_info_response(&reply)?)
    }

    /// The firmware's `Read`: fills `buf` from `offset` until it is full
    /// or the file ends; returns the bytes read.
    pub async fn read_file(&mut self, file: &UefiFile, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if file.info.directory {
            return Err(VmbfsClientError::IsADirectory(String::from_utf16_lossy(
                &file.path,
            )));
        }
        let mut read = FileRead::new(file.info.size, offset, buf.len());
        let rdma = self.use_rdma && file.info.rdma_capable;
        while let Some((at, done, left)) = read.next_chunk() {
            let n = if rdma {
                self.rdma_chunk(&file.path, at, &mut buf[done..], left).await?
            } else {
                self.in_band_chunk(&file.path, at, &mut buf[done..], left)
                    .await?
            };
            read.advance(n)?;
        }
        Ok(read.bytes_read())
    }

    async fn in_band_chunk(
        &mut self,
        path: &[u16],
        offset: u64,
        buf: &mut [u8],
        left: usize,
    ) -> Result<usize> {
        let (request, requested) = read_request(path, offset, left)?;
        let reply = self.request(&request).await?;
        let data = parse_read_response(&reply, requested)?;
        let out = buf
            .get_mut(..data.len())
            .ok_or(VmbfsClientError::Protocol(ClientError::BadHost {
                what: "more data than the buffer holds",
                len: data.len(),
                message_type: 0,
            }))?;
        out.copy_from_slice(data);
        self.stats.in_band_bytes += data.len() as u64;
        Ok(data.len())
    }

    async fn rdma_chunk(
        &mut self,
        path: &[u16],
        offset: u64,
        buf: &mut [u8],
        left: usize,
    ) -> Result<usize> {
        let len = left.min(MAX_RDMA_READ_SIZE as usize) as u32;
        let buffer = self.vm.pages().alloc_range(len).map_err(VmError::from)?;
        let chunk = match rdma_chunk(path, offset, &buffer) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.vm.pages().free(buffer.gpns());
                return Err(e.into());
            }
        };
        // The previous chunk's teardown rides in the same publication as
        // this setup, as the firmware's deferred signal makes it arrive.
        let previous = self.pending_teardown.take();
        let sent = self
            .send_setup_after_teardown(previous.as_ref().map(|p| p.handle), &chunk.setup.ranges)
            .await;
        if let Some(previous) = previous {
            self.vm.pages().free(&previous.pages);
        }
        self.pending_teardown = Some(PendingTeardown {
            handle: RDMA_HANDLE,
            pages: buffer.gpns().to_vec(),
        });
        sent?;
        let reply = self.request(&chunk.request).await?;
        let written = parse_rdma_response(&reply, chunk.requested)?;
        let out = buf
            .get_mut(..written as usize)
            .ok_or(VmbfsClientError::Protocol(ClientError::BadHost {
                what: "more bytes written than the buffer holds",
                len: written as usize,
                message_type: 0,
            }))?;
        if written > 0 {
            read_range(&self.vm, &buffer, out)?;
        }
        self.stats.rdma_bytes += u64::from(written);
        self.stats.rdma_chunks += 1;
        Ok(written as usize)
    }

    async fn send_setup_after_teardown(
        &mut self,
        teardown: Option<u32>,
        ranges: &[GpaRange],
    ) -> Result<()> {
        let channel = self.channel.as_mut().ok_or(VmbfsClientError::DeviceStopped(
            "no channel open".into(),
        ))?;
        let writer = &mut channel.endpoint.writer;
        if let Some(handle) = teardown {
            let message = PipeMessage::TeardownGpaDirect { handle }.encode();
            // Unpublished: the setup below publishes both at once.
            if !writer
                .try_write_unpublished(&OutgoingPacket::in_band(&message))
                .map_err(PipeError::from)?
            {
                writer.send_teardown(handle).await?;
            }
        }
        writer.send_setup(RDMA_HANDLE, true, ranges).await?;
        Ok(())
    }

    /// Sends one request and waits for its reply; fails if the device
    /// stops the channel instead of answering.
    pub async fn request(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        let channel = self.channel.as_mut().ok_or(VmbfsClientError::DeviceStopped(
            "no channel open".into(),
        ))?;
        let exit = self.exit.clone().unwrap_or_else(|| channel.exit_handle());
        self.stats.requests += 1;
        let endpoint = &mut channel.endpoint;
        let exchange = async {
            endpoint.send_data(message).await?;
            endpoint.recv_pipe(MAX_MESSAGE_LEN).await
        };
        match exit.race(exchange).await {
            Some(Ok(PipeMessage::Data(reply))) => Ok(reply),
            Some(Ok(_)) => Err(VmbfsClientError::UnexpectedPipeMessage),
            Some(Err(e)) => Err(e.into()),
            None => {
                let result = channel.wait_device_end().await;
                Err(VmbfsClientError::DeviceStopped(match result {
                    Ok(()) => "channel closed".into(),
                    Err(e) => e.to_string(),
                }))
            }
        }
    }

    async fn ensure_volume(&mut self) -> Result<UefiFile> {
        if self.channel.is_none() || self.exit.as_ref().is_some_and(ExitHandle::ended) {
            return self.open_volume().await;
        }
        let path = root_path();
        let info = self.get_file_info(&path).await?;
        Ok(UefiFile { path, info })
    }

    /// Opens a `/`- or `\`-separated path from the root as one name, the
    /// way a boot manager passes `\EFI\BOOT\BOOTX64.EFI`.
    pub async fn open_path(&mut self, path: &str) -> Result<UefiFile> {
        let root = self.ensure_volume().await?;
        let name: String = path
            .chars()
            .map(|c| if c == '/' { '\\' } else { c })
            .collect();
        let name = if name.starts_with('\\') || name.is_empty() {
            name
        } else {
            format!("\\{name}")
        };
        self.open(&root, &name).await
    }

    /// What GET_FILE_INFO says about `path`.
    pub async fn file_info(&mut self, path: &str) -> Result<FileInfo> {
        Ok(self.open_path(path).await?.info)
    }

    /// Up to `len` bytes of `path` at `offset` (fewer at end of file).
    pub async fn read(&mut self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let file = self.open_path(path).await?;
        let len = len.min(file.info.size.saturating_sub(offset).try_into().unwrap_or(usize::MAX));
        let mut buf = vec![0u8; len];
        let n = self.read_file(&file, offset, &mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The whole file at `path`.
    pub async fn read_all(&mut self, path: &str) -> Result<Vec<u8>> {
        let file = self.open_path(path).await?;
        let size = usize::try_from(file.info.size)
            .map_err(|_| VmbfsClientError::TooLarge(file.info.size))?;
        let mut buf = vec![0u8; size];
        let n = self.read_file(&file, 0, &mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }
}

fn stopped(e: ChannelError) -> VmbfsClientError {
    VmbfsClientError::DeviceStopped(e.to_string())
}

/// Copies the first `out.len()` bytes of a guest range into `out`.
fn read_range(vm: &LoopbackVm, range: &GpaRange, out: &mut [u8]) -> Result<()> {
    let mut done = 0usize;
    for (i, &gpn) in range.gpns().iter().enumerate() {
        if done == out.len() {
            break;
        }
        let start = if i == 0 { range.byte_offset() as usize } else { 0 };
        let n = (PAGE_SIZE - start).min(out.len() - done);
        vm.memory()
            .read(gpn * PAGE_SIZE as u64 + start as u64, &mut out[done..done + n])
            .map_err(|e| VmError::Memory(e))?;
        done += n;
    }
    Ok(())
}
