//! The async vmbfs client over a channel of a [`VmbfsBus`], behaving like
//! the Hyper-V UEFI firmware: every volume open closes and reopens the
//! channel and negotiates version 0x00010000; files are opened as `parent +
//! "\" + name` with the trailing-NUL quirk ([`child_path`]); reads ask for
//! `min(buffer left, 12276)` bytes without clamping to the file size; when
//! GET_FILE_INFO says `rdma_capable`, each chunk is a SETUP_GPA_DIRECT
//! (handle 1, writable, one range over a buffer from the bus's page
//! allocator), a READ_FILE_RDMA, and a TEARDOWN_GPA_DIRECT deferred so it
//! goes out in the same publication as the next setup.
//!
//! Once warm, a read allocates nothing: requests are built and replies
//! received in buffers the client keeps, and the RDMA buffer's guest pages
//! are kept from chunk to chunk (grown when a larger chunk needs it) until
//! the volume closes.
//!
//! [`VmbfsClient::file_info`], [`VmbfsClient::read`] and
//! [`VmbfsClient::read_all`] are the plain API on top.
//!
//! The client knows nothing of the host behind the channel: [`VmbfsBus`]
//! and [`VmbfsChannel`] are the calls the firmware makes of its VMBus
//! driver, implemented by whoever runs the client.

use super::{
    ClientError, FileInfo, FileRead, RDMA_HANDLE, bad_host, child_path, get_file_info_request,
    parse_file_info_response, parse_rdma_response, parse_read_response, parse_version_response,
    rdma_request_into, read_request_into, root_path, version_request,
};
use std::future::Future;
use std::sync::Arc;
use vmbdev_protocol::vmbfs::MAX_RDMA_READ_SIZE;
use vmbdev_ring::StopSignal;
use vmbdev_ring::pipe::MAX_MESSAGE_LEN;
use vmbdev_ring::{
    Endpoint, GpaRange, GuestMemory, LoopbackError, MemoryError, OutgoingPacket, PAGE_SIZE,
    PageAllocator, PipeError, PipeMessage, PipeMessageRef,
};

/// Why a bus call failed, as the bus reports it.
pub type BusFailure = Box<dyn std::error::Error + Send + Sync>;

/// The bus a [`VmbfsClient`] reaches its host through: the few calls the
/// firmware makes of its VMBus driver.
pub trait VmbfsBus {
    /// An open channel to the host.
    type Channel: VmbfsChannel;

    /// Opens a fresh channel to the host: new zeroed rings, the host
    /// serving them.
    fn open_channel(&mut self) -> Result<Self::Channel, BusFailure>;

    /// Guest memory, where RDMA buffers are read.
    fn memory(&self) -> &GuestMemory;

    /// The allocator of free guest pages, where RDMA buffers come from.
    fn pages(&self) -> &PageAllocator;
}

/// An open channel of a [`VmbfsBus`].
pub trait VmbfsChannel {
    /// The guest's endpoint: writes guest→host, reads host→guest.
    fn endpoint(&mut self) -> &mut Endpoint;

    /// A signal raised once the host stops serving the channel (already
    /// raised if it has).
    fn host_stopped(&self) -> Arc<StopSignal>;

    /// Waits until the host stops serving the channel on its own and
    /// returns how it ended.
    fn wait_host_end(&mut self) -> impl Future<Output = Result<(), BusFailure>>;

    /// Stops the host's side, keeping the rings, and returns how it ended.
    fn suspend_host(&mut self) -> impl Future<Output = Result<(), BusFailure>>;

    /// Stops the host's side and releases the rings; returns how the host
    /// side ended.
    fn close(self) -> impl Future<Output = Result<(), BusFailure>>;
}

/// Largest file [`VmbfsClient::read_all`] reads into memory: the size comes
/// from the host, so it is not trusted with an allocation beyond this.
pub const MAX_READ_ALL: u64 = 4 << 30;

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
    /// The bus could not open a channel.
    #[error(transparent)]
    Bus(BusFailure),
    /// Guest pages for an RDMA buffer ran out.
    #[error("guest pages: {0}")]
    Pages(#[from] LoopbackError),
    /// Guest memory could not be read.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// A read was asked of a directory.
    #[error("{0} is a directory")]
    IsADirectory(String),
    /// A file larger than [`MAX_READ_ALL`] or this address space.
    #[error("file of {0} bytes is too large to read into memory")]
    TooLarge(u64),
    /// A read into guest pages was asked of a file or a buffer it cannot
    /// serve.
    #[error("cannot read into guest pages: {0}")]
    NotRdma(&'static str),
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

/// Buffers every request reuses, so a warm read allocates nothing.
#[derive(Default)]
struct Scratch {
    /// The request being sent.
    request: Vec<u8>,
    /// The last reply's pipe payload (pipe header included).
    reply: Vec<u8>,
    /// The SETUP_GPA_DIRECT being sent.
    setup: Vec<u8>,
    /// The range registered per chunk (its page list reused).
    chunk: Option<GpaRange>,
    /// The guest pages RDMA chunks of [`VmbfsClient::read_file`] land in.
    bounce: Option<GpaRange>,
}

/// The vmbfs client.
pub struct VmbfsClient<B: VmbfsBus> {
    bus: B,
    channel: Option<B::Channel>,
    use_rdma: bool,
    /// The handle of a GPA-direct buffer whose teardown is not sent yet.
    pending_teardown: Option<u32>,
    stats: ClientStats,
    scratch: Scratch,
}

impl<B: VmbfsBus> std::fmt::Debug for VmbfsClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbfsClient")
            .field("use_rdma", &self.use_rdma)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B: VmbfsBus> VmbfsClient<B> {
    /// A client of the host behind `bus`; no channel is open yet. With
    /// `use_rdma`, files the host marks RDMA capable are read by RDMA (as
    /// the firmware does); without, always in-band.
    pub fn new(bus: B, use_rdma: bool) -> Self {
        Self {
            bus,
            channel: None,
            use_rdma,
            pending_teardown: None,
            stats: ClientStats::default(),
            scratch: Scratch::default(),
        }
    }

    /// Chooses whether RDMA-capable files are read by RDMA.
    pub fn set_use_rdma(&mut self, use_rdma: bool) {
        self.use_rdma = use_rdma;
    }

    /// Whether RDMA-capable files are read by RDMA.
    pub fn uses_rdma(&self) -> bool {
        self.use_rdma
    }

    /// What the client moved so far.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The open channel, if any (tests use it to suspend the device).
    pub fn channel_mut(&mut self) -> Option<&mut B::Channel> {
        self.channel.as_mut()
    }

    /// The bus the client runs on.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// The bus the client runs on, to change what later opens reach.
    pub fn bus_mut(&mut self) -> &mut B {
        &mut self.bus
    }

    /// Opens the volume as the firmware's `OpenVolume` does: closes any
    /// open channel, opens a fresh one, negotiates the version and looks
    /// up the root (empty path). Returns the root directory.
    pub async fn open_volume(&mut self) -> Result<UefiFile> {
        if let Err(error) = self.close().await {
            tracing::debug!(%error, "vmbfs client: previous channel ended badly");
        }
        let channel = self.bus.open_channel().map_err(VmbfsClientError::Bus)?;
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
        // The host forgets every buffer when the channel closes.
        self.pending_teardown = None;
        if let Some(bounce) = self.scratch.bounce.take() {
            self.bus.pages().free(bounce.gpns());
        }
        match self.channel.take() {
            Some(channel) => channel.close().await.map_err(stopped),
            None => Ok(()),
        }
    }

    /// Stops the host side of the open channel, keeping the rings (the
    /// VMM's step before saving device state).
    pub async fn suspend_device(&mut self) -> Result<()> {
        match self.channel.as_mut() {
            Some(channel) => channel.suspend_host().await.map_err(stopped),
            None => Ok(()),
        }
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
    pub async fn read_file(
        &mut self,
        file: &UefiFile,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if file.info.directory {
            return Err(VmbfsClientError::IsADirectory(String::from_utf16_lossy(
                &file.path,
            )));
        }
        let mut read = FileRead::new(file.info.size, offset, buf.len());
        let rdma = self.use_rdma && file.info.rdma_capable;
        while let Some((at, done, left)) = read.next_chunk() {
            let n = if rdma {
                self.rdma_chunk(&file.path, at, &mut buf[done..], left)
                    .await?
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
        let requested = read_request_into(path, offset, left, &mut self.scratch.request)?;
        self.exchange().await?;
        let data = parse_read_response(self.reply(), requested)?;
        let out =
            buf.get_mut(..data.len())
                .ok_or(VmbfsClientError::Protocol(ClientError::BadHost {
                    what: "more data than the buffer holds",
                    len: data.len(),
                    message_type: 0,
                }))?;
        out.copy_from_slice(data);
        let n = data.len();
        self.stats.in_band_bytes += n as u64;
        Ok(n)
    }

    async fn rdma_chunk(
        &mut self,
        path: &[u16],
        offset: u64,
        buf: &mut [u8],
        left: usize,
    ) -> Result<usize> {
        let len = left.min(MAX_RDMA_READ_SIZE as usize) as u32;
        let bounce = self.take_bounce(len).await?;
        let result = self.rdma_via(path, offset, &bounce, len, buf).await;
        self.scratch.bounce = Some(bounce);
        result
    }

    /// The RDMA buffer, grown to at least `len` bytes. Its pages stay the
    /// client's from chunk to chunk, so a warm chunk allocates nothing.
    async fn take_bounce(&mut self, len: u32) -> Result<GpaRange> {
        if let Some(bounce) = self.scratch.bounce.take() {
            if bounce.byte_count() >= len {
                return Ok(bounce);
            }
            // The host may still hold the old pages under the deferred
            // teardown: send it before the pages go back.
            let flushed = self.flush_teardown().await;
            self.bus.pages().free(bounce.gpns());
            flushed?;
        }
        Ok(self.bus.pages().alloc_range(len)?)
    }

    /// One chunk of `len` bytes through the first pages of `bounce`, then
    /// copied into `buf`.
    async fn rdma_via(
        &mut self,
        path: &[u16],
        offset: u64,
        bounce: &GpaRange,
        len: u32,
        buf: &mut [u8],
    ) -> Result<usize> {
        // `bounce` holds at least `len` bytes from the start of its first
        // page.
        let pages = bounce
            .gpns()
            .get(..len.div_ceil(PAGE_SIZE as u32) as usize)
            .ok_or(VmbfsClientError::NotRdma("the buffer has too few pages"))?;
        let range = self.chunk_range(len, pages)?;
        let written = self.rdma_into(path, offset, &range).await;
        let copied = written.and_then(|written| {
            let out = buf
                .get_mut(..written as usize)
                .ok_or(VmbfsClientError::Protocol(ClientError::BadHost {
                    what: "more bytes written than the buffer holds",
                    len: written as usize,
                    message_type: 0,
                }))?;
            if written > 0 {
                read_range(self.bus.memory(), &range, out)?;
            }
            Ok(written as usize)
        });
        self.scratch.chunk = Some(range);
        copied
    }

    /// A range of `len` bytes over `pages` from their start, built in the
    /// reused chunk range (its page list not allocated again).
    fn chunk_range(&mut self, len: u32, pages: &[u64]) -> Result<GpaRange> {
        let described = match self.scratch.chunk.take() {
            Some(mut range) => range.assign_pages(len, 0, pages).map(|()| range),
            None => GpaRange::from_pages(len, 0, pages),
        };
        described.map_err(|_| VmbfsClientError::NotRdma("the buffer cannot be described"))
    }

    /// One RDMA chunk into `buffer`: its setup (after the previous
    /// chunk's deferred teardown), the READ_FILE_RDMA, and this chunk's
    /// teardown deferred in turn. The caller keeps the buffer's pages
    /// until that teardown is sent.
    async fn rdma_into(&mut self, path: &[u16], offset: u64, buffer: &GpaRange) -> Result<u32> {
        // The firmware registers exactly the bytes it requests: the buffer
        // cut to the request, or the buffer itself when it is no longer.
        let requested = buffer.byte_count().min(MAX_RDMA_READ_SIZE);
        let cut;
        let range = if requested == buffer.byte_count() {
            buffer
        } else {
            match buffer.truncated(requested) {
                Ok(range) => {
                    cut = range;
                    &cut
                }
                Err(_) => return Err(bad_host("empty RDMA buffer", &[]).into()),
            }
        };
        rdma_request_into(path, offset, requested, &mut self.scratch.request)?;
        // The previous chunk's teardown rides in the same publication as
        // this setup, as the firmware's deferred signal makes it arrive.
        let previous = self.pending_teardown.take();
        let sent = self
            .send_setup_after_teardown(previous, std::slice::from_ref(range))
            .await;
        self.pending_teardown = Some(RDMA_HANDLE);
        sent?;
        self.exchange().await?;
        let written = parse_rdma_response(self.reply(), requested)?;
        self.stats.rdma_bytes += u64::from(written);
        self.stats.rdma_chunks += 1;
        Ok(written)
    }

    /// Reads `file` from `offset` by RDMA straight into the guest pages of
    /// `dest`, the way the firmware reads into its caller's buffer: one
    /// setup and READ_FILE_RDMA per chunk of at most
    /// [`MAX_RDMA_READ_SIZE`] over the next pages of `dest`, and no copy
    /// on the guest side. Fills `dest` or reads to the end of the file;
    /// returns the bytes read. The last chunk's buffer is torn down before
    /// this returns, so the host holds none of `dest` afterwards.
    ///
    /// `dest` must start on a page boundary; the file must be RDMA
    /// capable and the client set to use RDMA.
    pub async fn read_file_to_guest(
        &mut self,
        file: &UefiFile,
        offset: u64,
        dest: &GpaRange,
    ) -> Result<usize> {
        if file.info.directory {
            return Err(VmbfsClientError::IsADirectory(String::from_utf16_lossy(
                &file.path,
            )));
        }
        if !(self.use_rdma && file.info.rdma_capable) {
            return Err(VmbfsClientError::NotRdma(
                "the file is not RDMA capable or RDMA is off",
            ));
        }
        if dest.byte_offset() != 0 {
            return Err(VmbfsClientError::NotRdma(
                "the buffer does not start on a page boundary",
            ));
        }
        let mut read = FileRead::new(file.info.size, offset, dest.byte_count() as usize);
        let result = async {
            while let Some((at, done, left)) = read.next_chunk() {
                if done % PAGE_SIZE != 0 {
                    // A short chunk before the end: the next one would not
                    // start on a page.
                    break;
                }
                let len = left.min(MAX_RDMA_READ_SIZE as usize);
                let first = done / PAGE_SIZE;
                let pages = dest
                    .gpns()
                    .get(first..first + len.div_ceil(PAGE_SIZE))
                    .ok_or(VmbfsClientError::NotRdma("the buffer has too few pages"))?;
                let range = self.chunk_range(len as u32, pages)?;
                let written = self.rdma_into(&file.path, at, &range).await;
                self.scratch.chunk = Some(range);
                read.advance(written? as usize)?;
            }
            Ok::<_, VmbfsClientError>(read.bytes_read())
        }
        .await;
        let teardown = self.flush_teardown().await;
        let bytes = result?;
        teardown?;
        Ok(bytes)
    }

    /// Sends the deferred teardown now, if one is pending.
    async fn flush_teardown(&mut self) -> Result<()> {
        let Some(handle) = self.pending_teardown.take() else {
            return Ok(());
        };
        let channel = self
            .channel
            .as_mut()
            .ok_or_else(|| VmbfsClientError::DeviceStopped("no channel open".into()))?;
        Ok(channel.endpoint().writer.send_teardown(handle).await?)
    }

    async fn send_setup_after_teardown(
        &mut self,
        teardown: Option<u32>,
        ranges: &[GpaRange],
    ) -> Result<()> {
        let channel = self
            .channel
            .as_mut()
            .ok_or_else(|| VmbfsClientError::DeviceStopped("no channel open".into()))?;
        let writer = &mut channel.endpoint().writer;
        if let Some(handle) = teardown {
            let message = PipeMessage::encode_teardown(handle);
            // Unpublished: the setup below publishes both at once.
            if !writer
                .try_write_unpublished(&OutgoingPacket::in_band(&message))
                .map_err(PipeError::from)?
            {
                writer.send_teardown(handle).await?;
            }
        }
        writer
            .send_setup_with(RDMA_HANDLE, true, ranges, &mut self.scratch.setup)
            .await?;
        Ok(())
    }

    /// Sends one request and waits for its reply; fails if the device
    /// stops the channel instead of answering.
    pub async fn request(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        self.scratch.request.clear();
        self.scratch.request.extend_from_slice(message);
        self.exchange().await?;
        Ok(self.reply().to_vec())
    }

    /// The DATA of the last reply [`Self::exchange`] received.
    fn reply(&self) -> &[u8] {
        match PipeMessageRef::decode(&self.scratch.reply, MAX_MESSAGE_LEN) {
            Ok(PipeMessageRef::Data(data)) => data,
            // `exchange` accepted only a DATA reply.
            _ => &[],
        }
    }

    /// Sends the request in the scratch buffer and receives its reply
    /// into the scratch buffer (see [`Self::reply`]), allocating nothing;
    /// fails if the device stops the channel instead of answering.
    async fn exchange(&mut self) -> Result<()> {
        let channel = self
            .channel
            .as_mut()
            .ok_or_else(|| VmbfsClientError::DeviceStopped("no channel open".into()))?;
        let host_stopped = channel.host_stopped();
        self.stats.requests += 1;
        let endpoint = channel.endpoint();
        let (request, reply) = (&self.scratch.request, &mut self.scratch.reply);
        let exchange = async {
            endpoint.send_data(request).await?;
            endpoint.reader.recv_pipe_into(reply).await?;
            PipeMessageRef::decode(reply, MAX_MESSAGE_LEN)
                .map(|message| matches!(message, PipeMessageRef::Data(_)))
        };
        match host_stopped.race(exchange).await {
            Some(Ok(true)) => Ok(()),
            Some(Ok(false)) => Err(VmbfsClientError::UnexpectedPipeMessage),
            Some(Err(e)) => Err(e.into()),
            None => {
                let result = channel.wait_host_end().await;
                Err(VmbfsClientError::DeviceStopped(match result {
                    Ok(()) => "channel closed".into(),
                    Err(e) => e.to_string(),
                }))
            }
        }
    }

    async fn ensure_volume(&mut self) -> Result<UefiFile> {
        let host_stopped = |channel: &B::Channel| channel.host_stopped().is_stopped();
        if self.channel.as_ref().is_none_or(host_stopped) {
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
        let len = len.min(MAX_READ_ALL as usize).min(
            file.info
                .size
                .saturating_sub(offset)
                .try_into()
                .unwrap_or(usize::MAX),
        );
        let mut buf = vec![0u8; len];
        let n = self.read_file(&file, offset, &mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The whole file at `path`.
    pub async fn read_all(&mut self, path: &str) -> Result<Vec<u8>> {
        let file = self.open_path(path).await?;
        let size = usize::try_from(file.info.size)
            .ok()
            .filter(|&s| s as u64 <= MAX_READ_ALL)
            .ok_or(VmbfsClientError::TooLarge(file.info.size))?;
        let mut buf = vec![0u8; size];
        let n = self.read_file(&file, 0, &mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }
}

fn stopped(e: BusFailure) -> VmbfsClientError {
    VmbfsClientError::DeviceStopped(e.to_string())
}

/// Copies the first `out.len()` bytes of a guest range into `out`, one
/// copy per run of consecutive pages.
fn read_range(memory: &GuestMemory, range: &GpaRange, out: &mut [u8]) -> Result<()> {
    let page = PAGE_SIZE as u64;
    let gpns = range.gpns();
    let mut done = 0usize;
    let mut i = 0usize;
    while done < out.len() && i < gpns.len() {
        let mut run = 1usize;
        while i + run < gpns.len() && gpns[i + run] == gpns[i] + run as u64 {
            run += 1;
        }
        let start = if i == 0 {
            u64::from(range.byte_offset())
        } else {
            0
        };
        let n = ((run as u64 * page - start) as usize).min(out.len() - done);
        memory.read(gpns[i] * page + start, &mut out[done..done + n])?;
        done += n;
        i += run;
    }
    Ok(())
}
