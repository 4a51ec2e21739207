//! The async storvsc driver: runs the init handshake of a [`GuestProfile`]
//! over a ring, creates and opens sub-channels like Linux, scans the bus
//! (Linux: path 0–7 × target 0–1 × LUN 0 with VPD probing and MODE SENSE;
//! UEFI: REPORT LUNS to targets 0–2), and reads sectors with many requests
//! in flight spread over the channels, data buffers being scatter lists of
//! guest pages from a [`PageAllocator`].
//!
//! Each channel has a completion thread (the guest's interrupt handler)
//! that reads the host→guest ring and wakes the waiting request; requests
//! are written from the caller's task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::channel::oneshot;
use futures::lock::Mutex as AsyncMutex;
use futures::stream::{self, StreamExt};
use vmbdev_device::storvsp::{LunAddress, StopSignal};
use vmbdev_protocol::scsi::Opcode;
use vmbdev_protocol::vstor::{self, DataDirection, NtStatus, Operation, SrbStatus};
use vmbdev_ring::{
    Endpoint, GpaRange, GuestMemory, LoopbackError, OutgoingPacket, PacketKind, PageAllocator,
    RingError, RingReader, RingWriter, gpa::pages_spanned,
};

use super::{
    GuestProfile, HostProperties, InitDriver, InquiryInfo, SrbCompletion, SrbParams, StorvscError,
    cdb, completion_status, create_sub_channels_packet, linux_sub_channel_count, parse_inquiry,
    parse_mode_sense6_write_protect, parse_read_capacity10, parse_read_capacity16,
    parse_report_luns, parse_vpd_supported, srb_packet,
};

/// Opens the sub-channels a host offered (the guest side of the bus).
pub trait ChannelOpener: Send + Sync {
    /// Opens sub-channel `index` (1-based) and returns the guest endpoint.
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String>;
}

/// An opener for a bus without sub-channels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSubChannels;

impl ChannelOpener for NoSubChannels {
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String> {
        Err(format!(
            "sub-channel {index} cannot be opened: the bus has none"
        ))
    }
}

/// How the driver behaves.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Which guest to imitate.
    pub profile: GuestProfile,
    /// CPUs of the guest: Linux asks for `cpus - 1` sub-channels.
    pub cpus: u16,
    /// First-page byte offset of data buffers (even, below 4096), as a
    /// guest buffer that does not start on a page boundary.
    pub buffer_offset: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            profile: GuestProfile::Linux,
            cpus: 1,
            buffer_offset: 0,
        }
    }
}

/// An error of the storvsc driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The ring failed.
    #[error("channel {channel}: ring failure: {source}")]
    Ring {
        /// Channel index.
        channel: usize,
        /// What the ring reported.
        source: RingError,
    },
    /// A completion was malformed or an init step failed.
    #[error(transparent)]
    Protocol(#[from] StorvscError),
    /// The channel stopped before answering.
    #[error("channel {0} stopped before the request was answered")]
    ChannelClosed(usize),
    /// Guest pages ran out.
    #[error(transparent)]
    Pages(#[from] LoopbackError),
    /// A buffer could not be described.
    #[error("bad data buffer: {0}")]
    Buffer(#[from] vmbdev_ring::GpaError),
    /// Sub-channels could not be created or opened.
    #[error("sub-channels: {0}")]
    SubChannels(String),
    /// An SRB ended in failure.
    #[error(
        "SRB {opcode:#04x} to {address:?} failed: status {status:#010x}, srb {srb_status:#04x}, scsi {scsi_status:#04x}, sense {sense:?}"
    )]
    Srb {
        /// LUN addressed.
        address: LunAddress,
        /// CDB opcode.
        opcode: u8,
        /// Packet NTSTATUS.
        status: u32,
        /// SRB status.
        srb_status: u8,
        /// SCSI status.
        scsi_status: u8,
        /// Sense key and ASC, if autosense was valid.
        sense: Option<(u8, u8)>,
    },
    /// A read moved fewer bytes than asked.
    #[error("read of {wanted} bytes at LBA {lba} moved {moved}")]
    ShortRead {
        /// First LBA.
        lba: u64,
        /// Bytes asked for.
        wanted: u64,
        /// Bytes moved.
        moved: u32,
    },
    /// A read outside the disk or of zero blocks.
    #[error("read of {count} blocks at LBA {lba} is outside a disk of {blocks} blocks")]
    OutOfRange {
        /// First LBA.
        lba: u64,
        /// Blocks asked for.
        count: u64,
        /// Blocks of the disk.
        blocks: u64,
    },
}

/// One SRB of the probe and its answer.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    /// LUN addressed.
    pub address: LunAddress,
    /// CDB sent.
    pub cdb: Vec<u8>,
    /// Buffer length sent.
    pub buffer_len: u32,
    /// The answer.
    pub completion: SrbCompletion,
    /// Data returned.
    pub data: Vec<u8>,
}

/// A disk the scan found.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Where it sits.
    pub address: LunAddress,
    /// Standard INQUIRY.
    pub inquiry: InquiryInfo,
    /// VPD pages listed in page 0x00.
    pub vpd_pages: Vec<u8>,
    /// Logical block size.
    pub block_size: u32,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Write-protect bit from MODE SENSE(6) (Linux only).
    pub write_protect: Option<bool>,
}

/// Per-channel request state shared with its completion thread.
#[derive(Debug, Default)]
struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Vec<u8>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct GuestChannel {
    writer: AsyncMutex<RingWriter>,
    waiters: Arc<Waiters>,
    next_tid: AtomicU64,
}

/// Events the host sent unasked.
#[derive(Debug, Default)]
pub struct HostEvents {
    enumerate_bus: AtomicU64,
    unexpected: AtomicU64,
    event: event_listener::Event,
}

impl HostEvents {
    /// ENUMERATE_BUS notifications received.
    pub fn enumerate_bus(&self) -> u64 {
        self.enumerate_bus.load(Ordering::SeqCst)
    }

    /// Packets that were neither completions of outstanding requests nor
    /// notifications.
    pub fn unexpected(&self) -> u64 {
        self.unexpected.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` ENUMERATE_BUS notifications arrived.
    pub async fn wait_enumerate_bus(&self, count: u64) {
        loop {
            if self.enumerate_bus() >= count {
                return;
            }
            let listener = self.event.listen();
            if self.enumerate_bus() >= count {
                return;
            }
            listener.await;
        }
    }
}

struct Inner {
    channels: Vec<GuestChannel>,
    memory: GuestMemory,
    pages: PageAllocator,
    next_channel: AtomicUsize,
    srb_size: usize,
    profile: GuestProfile,
    buffer_offset: u32,
    max_transfer: u32,
    stop: Arc<StopSignal>,
    threads: Mutex<Vec<JoinHandle<Result<(), RingError>>>>,
    events: Arc<HostEvents>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.stop();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A guest data buffer: guest pages handed back on drop.
struct Buffer {
    range: GpaRange,
    pages: PageAllocator,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pages.free(self.range.gpns());
    }
}

impl Inner {
    fn buffer(&self, len: u32) -> Result<Buffer, DriverError> {
        let count = pages_spanned(self.buffer_offset, len);
        let gpns = self.pages.alloc(count)?;
        match GpaRange::new(len, self.buffer_offset, gpns.clone()) {
            Ok(range) => Ok(Buffer {
                range,
                pages: self.pages.clone(),
            }),
            Err(e) => {
                self.pages.free(&gpns);
                Err(e.into())
            }
        }
    }

    /// Sends `payload` on channel `index` and waits for its completion.
    async fn request(
        &self,
        index: usize,
        payload: &[u8],
        range: Option<&GpaRange>,
    ) -> Result<Vec<u8>, DriverError> {
        let channel = &self.channels[index % self.channels.len()];
        let tid = channel.next_tid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        channel.waiters.lock().insert(tid, tx);
        let ranges;
        let packet = match range {
            Some(range) => {
                ranges = [range.clone()];
                OutgoingPacket::gpa_direct(tid, &ranges, payload)
            }
            None => OutgoingPacket::request(tid, payload),
        };
        let written = channel.writer.lock().await.write(&packet).await;
        if let Err(source) = written {
            channel.waiters.lock().remove(&tid);
            return Err(DriverError::Ring {
                channel: index,
                source,
            });
        }
        rx.await.map_err(|_| DriverError::ChannelClosed(index))
    }

    fn pick_channel(&self) -> usize {
        self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len()
    }

    /// Runs one SRB; returns its completion and the buffer.
    async fn srb(
        &self,
        address: LunAddress,
        cdb: &[u8],
        direction: DataDirection,
        buffer: Option<&Buffer>,
    ) -> Result<SrbCompletion, DriverError> {
        let length = buffer.map(|b| b.range.byte_count()).unwrap_or(0);
        // The firmware marks even zero-length commands as data-in.
        let data_in = if self.profile == GuestProfile::Uefi && buffer.is_none() {
            DataDirection::READ
        } else {
            direction
        };
        let payload = srb_packet(
            &SrbParams {
                path: address.path,
                target: address.target,
                lun: address.lun,
                cdb: cdb.to_vec(),
                data_in: data_in.0,
                data_transfer_length: length,
            },
            self.srb_size,
        );
        let bytes = self
            .request(self.pick_channel(), &payload, buffer.map(|b| &b.range))
            .await?;
        let mut completion = SrbCompletion::parse(&bytes)?;
        if self.profile == GuestProfile::Linux {
            if let Some(&opcode) = cdb.first() {
                completion.linux_fixup(opcode);
            }
        }
        Ok(completion)
    }

    /// Runs a data-in SRB with a buffer of `len` bytes; returns the
    /// completion and the bytes moved.
    async fn srb_in(
        &self,
        address: LunAddress,
        cdb: &[u8],
        len: u32,
    ) -> Result<(SrbCompletion, Vec<u8>), DriverError> {
        let buffer = if len == 0 {
            None
        } else {
            Some(self.buffer(len)?)
        };
        let completion = self
            .srb(address, cdb, DataDirection::READ, buffer.as_ref())
            .await?;
        let moved = completion.transferred.min(len) as usize;
        let mut data = vec![0u8; moved];
        if let (Some(buffer), true) = (&buffer, moved > 0) {
            buffer.range.read_at(&self.memory, 0, &mut data)?;
        }
        Ok((completion, data))
    }
}

fn good(completion: &SrbCompletion) -> bool {
    completion.status == NtStatus::SUCCESS.0
        && completion.srb_status & vstor::SRB_STATUS_MASK == SrbStatus::SUCCESS.0
        && completion.scsi_status == 0
}

fn srb_error(address: LunAddress, cdb: &[u8], c: &SrbCompletion) -> DriverError {
    DriverError::Srb {
        address,
        opcode: cdb.first().copied().unwrap_or(0),
        status: c.status,
        srb_status: c.srb_status,
        scsi_status: c.scsi_status,
        sense: c.sense_key_asc(),
    }
}

/// Reads the host→guest ring of one channel and wakes waiters.
fn completion_thread(
    index: usize,
    mut reader: RingReader,
    waiters: Arc<Waiters>,
    events: Arc<HostEvents>,
    stop: Arc<StopSignal>,
) -> std::io::Result<JoinHandle<Result<(), RingError>>> {
    std::thread::Builder::new()
        .name(format!("storvsc-{index}"))
        .spawn(move || {
            let result = futures_lite::future::block_on(futures_lite::future::or(
                async {
                    loop {
                        reader
                            .read_batch(64, |view| {
                                deliver(
                                    &waiters,
                                    &events,
                                    view.kind,
                                    view.transaction_id,
                                    view.payload,
                                )
                            })
                            .await?;
                    }
                },
                async {
                    stop.wait().await;
                    Ok(())
                },
            ));
            if let Err(error) = &result {
                tracing::warn!(channel = index, %error, "storvsc channel failed");
            }
            // Wake every waiter with an error.
            waiters.lock().clear();
            result
        })
}

fn deliver(waiters: &Waiters, events: &HostEvents, kind: PacketKind, tid: u64, payload: &[u8]) {
    match kind {
        PacketKind::Completion => {
            let waiter = waiters.lock().remove(&tid);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(payload.to_vec());
                }
                None => {
                    events.unexpected.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        PacketKind::InBand
            if payload.get(..4) == Some(&Operation::ENUMERATE_BUS.0.to_le_bytes()) =>
        {
            events.enumerate_bus.fetch_add(1, Ordering::SeqCst);
            events.event.notify(usize::MAX);
        }
        _ => {
            events.unexpected.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A connected storvsc: init done, sub-channels open, bus scanned.
pub struct Storvsc {
    inner: Arc<Inner>,
    version: u16,
    properties: HostProperties,
    disks: Vec<DiskInfo>,
    probe: Vec<ProbeRecord>,
}

impl std::fmt::Debug for Storvsc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storvsc")
            .field("version", &self.version)
            .field("channels", &self.inner.channels.len())
            .field("disks", &self.disks)
            .finish()
    }
}

impl Storvsc {
    /// Connects over the primary channel `primary`: init, sub-channels
    /// (Linux, if the host offers them and `cpus > 1`), then the scan.
    pub async fn connect(
        primary: Endpoint,
        memory: GuestMemory,
        pages: PageAllocator,
        opener: &dyn ChannelOpener,
        config: &DriverConfig,
    ) -> Result<Self, DriverError> {
        let stop = Arc::new(StopSignal::new());
        let events = Arc::new(HostEvents::default());
        let mut inner = Inner {
            channels: Vec::new(),
            memory,
            pages,
            next_channel: AtomicUsize::new(0),
            srb_size: config.profile.packet_size(),
            profile: config.profile,
            buffer_offset: config.buffer_offset,
            max_transfer: 0,
            stop,
            threads: Mutex::new(Vec::new()),
            events,
        };
        inner.add_channel(primary)?;
        let mut init = InitDriver::new(config.profile);
        while let Some(packet) = init.request() {
            let reply = inner.request(0, &packet, None).await?;
            init.on_completion(&reply)?;
        }
        let version = init.version().unwrap_or(0);
        let properties = init.properties();
        inner.max_transfer = properties.max_transfer_bytes;
        inner.srb_size = match config.profile {
            GuestProfile::Linux if version >= vstor::ProtocolVersion::WIN8.0 => {
                vstor::PACKET_SIZE_WIN8
            }
            GuestProfile::Linux => vstor::PACKET_SIZE_PRE_WIN8,
            GuestProfile::Uefi => config.profile.packet_size(),
        };
        if config.profile == GuestProfile::Linux {
            let count = linux_sub_channel_count(config.cpus, version, properties);
            if count > 0 {
                let reply = inner
                    .request(0, &create_sub_channels_packet(count), None)
                    .await?;
                let status = completion_status(&reply)?;
                if status != NtStatus::SUCCESS {
                    return Err(DriverError::SubChannels(format!(
                        "CREATE_SUB_CHANNELS({count}) failed with {:#010x}",
                        status.0
                    )));
                }
                for index in 1..=count {
                    let endpoint = opener
                        .open_sub_channel(index)
                        .map_err(DriverError::SubChannels)?;
                    inner.add_channel(endpoint)?;
                }
            }
        }
        let inner = Arc::new(inner);
        let mut this = Self {
            inner,
            version,
            properties,
            disks: Vec::new(),
            probe: Vec::new(),
        };
        this.rescan().await?;
        Ok(this)
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// What the host reported in QUERY_PROPERTIES.
    pub fn properties(&self) -> HostProperties {
        self.properties
    }

    /// Number of open channels (primary + sub-channels).
    pub fn channel_count(&self) -> usize {
        self.inner.channels.len()
    }

    /// Disks found by the last scan.
    pub fn disks(&self) -> &[DiskInfo] {
        &self.disks
    }

    /// Every SRB of the last scan with its answer, in order.
    pub fn probe_log(&self) -> &[ProbeRecord] {
        &self.probe
    }

    /// Unsolicited host packets.
    pub fn events(&self) -> &Arc<HostEvents> {
        &self.inner.events
    }

    /// A handle on disk `index` of the last scan.
    pub fn disk(&self, index: usize) -> Option<Disk> {
        self.disks.get(index).map(|info| Disk {
            inner: self.inner.clone(),
            info: info.clone(),
        })
    }

    /// Runs one SRB with a data-in buffer of `len` bytes (0: none) on the
    /// next channel; returns the completion and the bytes moved.
    pub async fn execute(
        &self,
        address: LunAddress,
        cdb: &[u8],
        len: u32,
    ) -> Result<(SrbCompletion, Vec<u8>), DriverError> {
        self.inner.srb_in(address, cdb, len).await
    }

    /// Sends a raw vstor packet on `channel` (in-band) and returns the
    /// completion bytes.
    pub async fn raw_request(
        &self,
        channel: usize,
        payload: &[u8],
    ) -> Result<Vec<u8>, DriverError> {
        self.inner.request(channel, payload, None).await
    }

    /// Scans the bus again the way the profile does.
    pub async fn rescan(&mut self) -> Result<(), DriverError> {
        let mut scan = Scan {
            inner: &self.inner,
            log: Vec::new(),
            disks: Vec::new(),
        };
        match self.inner.profile {
            GuestProfile::Linux => scan.linux().await?,
            GuestProfile::Uefi => scan.uefi().await?,
        }
        self.disks = scan.disks;
        self.probe = scan.log;
        Ok(())
    }
}

impl Inner {
    fn add_channel(&mut self, endpoint: Endpoint) -> Result<(), DriverError> {
        let index = self.channels.len();
        let (reader, writer) = endpoint.split();
        let waiters = Arc::new(Waiters::default());
        let thread = completion_thread(
            index,
            reader,
            waiters.clone(),
            self.events.clone(),
            self.stop.clone(),
        )
        .map_err(|e| DriverError::SubChannels(format!("cannot start channel thread: {e}")))?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
        self.channels.push(GuestChannel {
            writer: AsyncMutex::new(writer),
            waiters,
            next_tid: AtomicU64::new(1),
        });
        Ok(())
    }
}

/// The bus scan of one profile.
struct Scan<'a> {
    inner: &'a Inner,
    log: Vec<ProbeRecord>,
    disks: Vec<DiskInfo>,
}

/// VPD pages Linux reads when page 0x00 lists them.
const LINUX_VPD_PAGES: [u8; 6] = [0x80, 0x83, 0x89, 0xB0, 0xB1, 0xB2];

impl Scan<'_> {
    async fn cmd(
        &mut self,
        address: LunAddress,
        cdb: Vec<u8>,
        len: u32,
    ) -> Result<(SrbCompletion, Vec<u8>), DriverError> {
        let (completion, data) = self.inner.srb_in(address, &cdb, len).await?;
        self.log.push(ProbeRecord {
            address,
            cdb,
            buffer_len: len,
            completion: completion.clone(),
            data: data.clone(),
        });
        Ok((completion, data))
    }

    async fn checked(
        &mut self,
        address: LunAddress,
        cdb: Vec<u8>,
        len: u32,
    ) -> Result<Vec<u8>, DriverError> {
        let (completion, data) = self.cmd(address, cdb.clone(), len).await?;
        if !good(&completion) {
            return Err(srb_error(address, &cdb, &completion));
        }
        Ok(data)
    }

    async fn linux(&mut self) -> Result<(), DriverError> {
        for path in 0..8u8 {
            for target in 0..2u8 {
                let lun0 = LunAddress {
                    path,
                    target,
                    lun: 0,
                };
                let info = self.linux_inquiry(lun0).await?;
                if info.present() {
                    self.linux_probe(lun0, info).await?;
                }
                // SCSI-3 targets list their other LUNs.
                let (completion, data) = self.cmd(lun0, cdb::report_luns(512), 512).await?;
                if good(&completion) {
                    for lun in parse_report_luns(&data)? {
                        if lun == 0 {
                            continue;
                        }
                        let address = LunAddress { path, target, lun };
                        let info = self.linux_inquiry(address).await?;
                        if info.present() {
                            self.linux_probe(address, info).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn linux_inquiry(&mut self, address: LunAddress) -> Result<InquiryInfo, DriverError> {
        let data = self.checked(address, cdb::inquiry(None, 36), 36).await?;
        Ok(parse_inquiry(&data)?)
    }

    async fn linux_probe(
        &mut self,
        address: LunAddress,
        mut inquiry: InquiryInfo,
    ) -> Result<(), DriverError> {
        if inquiry.full_length > 36 {
            let len = inquiry.full_length.min(255) as u16;
            let data = self
                .checked(address, cdb::inquiry(None, len), u32::from(len))
                .await?;
            inquiry = parse_inquiry(&data)?;
        }
        let data = self
            .checked(address, cdb::inquiry(Some(0), 255), 255)
            .await?;
        let vpd_pages = parse_vpd_supported(&data)?;
        for page in LINUX_VPD_PAGES {
            if vpd_pages.contains(&page) {
                self.checked(address, cdb::inquiry(Some(page), 255), 255)
                    .await?;
            }
        }
        self.checked(address, cdb::test_unit_ready(), 0).await?;
        let data = self.checked(address, cdb::read_capacity16(32), 32).await?;
        let (last16, block16, _) = parse_read_capacity16(&data)?;
        let data = self.checked(address, cdb::read_capacity10(), 8).await?;
        let (last10, block10) = parse_read_capacity10(&data)?;
        if block10 != block16 || (last10 != u32::MAX && u64::from(last10) != last16) {
            return Err(StorvscError::ShortData {
                what: "READ CAPACITY(10) disagrees with READ CAPACITY(16)",
                len: 0,
                needed: 0,
            }
            .into());
        }
        let data = self
            .checked(address, cdb::mode_sense6(0x3F, 192), 192)
            .await?;
        let write_protect = parse_mode_sense6_write_protect(&data)?;
        self.checked(address, cdb::mode_sense6(0x08, 192), 192)
            .await?;
        // Partition scan: the first 4 KiB.
        let blocks = last16.saturating_add(1);
        let first = (4096 / block16.max(1)).max(1) as u16;
        if blocks >= u64::from(first) {
            self.checked(address, cdb::read10(0, first), u32::from(first) * block16)
                .await?;
        }
        self.disks.push(DiskInfo {
            address,
            inquiry,
            vpd_pages,
            block_size: block16,
            blocks,
            write_protect: Some(write_protect),
        });
        Ok(())
    }

    async fn uefi(&mut self) -> Result<(), DriverError> {
        for target in 0..3u8 {
            let lun0 = LunAddress {
                path: 0,
                target,
                lun: 0,
            };
            let data = self.checked(lun0, cdb::report_luns(0), 2048).await?;
            for lun in parse_report_luns(&data)? {
                let address = LunAddress {
                    path: 0,
                    target,
                    lun,
                };
                self.uefi_probe(address).await?;
            }
        }
        Ok(())
    }

    async fn uefi_probe(&mut self, address: LunAddress) -> Result<(), DriverError> {
        let data = self.checked(address, cdb::inquiry(None, 96), 96).await?;
        let inquiry = parse_inquiry(&data)?;
        if !inquiry.present() {
            return Ok(());
        }
        let data = self
            .checked(address, cdb::inquiry(Some(0), 255), 255)
            .await?;
        let vpd_pages = parse_vpd_supported(&data)?;
        if vpd_pages.contains(&0xB0) {
            self.checked(address, cdb::inquiry(Some(0xB0), 64), 64)
                .await?;
        }
        self.checked(address, cdb::test_unit_ready(), 0).await?;
        let data = self.checked(address, cdb::read_capacity10(), 8).await?;
        let (last10, block10) = parse_read_capacity10(&data)?;
        let (blocks, block_size) = if last10 == u32::MAX {
            let data = self.checked(address, cdb::read_capacity16(32), 32).await?;
            let (last, block, _) = parse_read_capacity16(&data)?;
            (last.saturating_add(1), block)
        } else {
            (u64::from(last10) + 1, block10)
        };
        if blocks > 0 && block_size > 0 {
            self.checked(address, cdb::read10(0, 1), block_size).await?;
        }
        self.disks.push(DiskInfo {
            address,
            inquiry,
            vpd_pages,
            block_size,
            blocks,
            write_protect: None,
        });
        Ok(())
    }
}

/// A disk on a connected storvsc.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<Inner>,
    info: DiskInfo,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("info", &self.info).finish()
    }
}

/// The READ CDB Linux would use for `count` blocks at `lba`.
fn read_cdb(lba: u64, count: u32) -> Vec<u8> {
    match (u32::try_from(lba), u16::try_from(count)) {
        (Ok(lba32), Ok(count16)) if lba32.checked_add(u32::from(count16)).is_some() => {
            cdb::read10(lba32, count16)
        }
        _ => cdb::read16(lba, count),
    }
}

impl Disk {
    /// What the scan found.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// `(blocks, block_size)`.
    pub fn capacity(&self) -> (u64, u32) {
        (self.info.blocks, self.info.block_size)
    }

    /// The standard INQUIRY data.
    pub fn inquiry(&self) -> &InquiryInfo {
        &self.info.inquiry
    }

    /// Most blocks one SRB carries.
    pub fn max_blocks_per_request(&self) -> u32 {
        (self.inner.max_transfer / self.info.block_size.max(1)).max(1)
    }

    fn check(&self, lba: u64, count: u64) -> Result<(), DriverError> {
        if count == 0
            || lba
                .checked_add(count)
                .is_none_or(|end| end > self.info.blocks)
        {
            return Err(DriverError::OutOfRange {
                lba,
                count,
                blocks: self.info.blocks,
            });
        }
        Ok(())
    }

    /// Reads `count` blocks at `lba` into guest buffers and copies them
    /// out. Large reads are split at the host's maximum transfer; the
    /// pieces run concurrently.
    pub async fn read(&self, lba: u64, count: u64) -> Result<Vec<u8>, DriverError> {
        self.check(lba, count)?;
        let per = u64::from(self.max_blocks_per_request());
        let pieces: Vec<(u64, u32)> = (0..count.div_ceil(per))
            .map(|i| (lba + i * per, (count - i * per).min(per) as u32))
            .collect();
        let chunks = self.read_many(&pieces, 8).await?;
        Ok(chunks.concat())
    }

    /// Reads each `(lba, count)` (each at most
    /// [`max_blocks_per_request`](Self::max_blocks_per_request)) with up
    /// to `depth` requests in flight; results in request order.
    pub async fn read_many(
        &self,
        requests: &[(u64, u32)],
        depth: usize,
    ) -> Result<Vec<Vec<u8>>, DriverError> {
        let results: Vec<Result<Vec<u8>, DriverError>> = stream::iter(requests.iter().copied())
            .map(
                |(lba, count)| async move { self.read_one(lba, count, true).await.map(|(_, d)| d) },
            )
            .buffered(depth.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Reads each `(lba, count)` with up to `depth` in flight, leaving the
    /// data in guest memory (as a guest whose DMA lands in its page cache);
    /// returns the bytes moved.
    pub async fn read_discard(
        &self,
        requests: impl Iterator<Item = (u64, u32)>,
        depth: usize,
    ) -> Result<u64, DriverError> {
        let mut total = 0u64;
        let mut results = stream::iter(requests)
            .map(|(lba, count)| self.read_one(lba, count, false))
            .buffer_unordered(depth.max(1));
        while let Some(result) = results.next().await {
            total += result?.0;
        }
        Ok(total)
    }

    async fn read_one(
        &self,
        lba: u64,
        count: u32,
        copy: bool,
    ) -> Result<(u64, Vec<u8>), DriverError> {
        self.check(lba, u64::from(count))?;
        let wanted = u64::from(count) * u64::from(self.info.block_size);
        let len = u32::try_from(wanted).map_err(|_| DriverError::OutOfRange {
            lba,
            count: u64::from(count),
            blocks: self.info.blocks,
        })?;
        let cdb = read_cdb(lba, count);
        let buffer = self.inner.buffer(len)?;
        let completion = self
            .inner
            .srb(self.info.address, &cdb, DataDirection::READ, Some(&buffer))
            .await?;
        if !good(&completion) {
            return Err(srb_error(self.info.address, &cdb, &completion));
        }
        if completion.transferred != len {
            return Err(DriverError::ShortRead {
                lba,
                wanted,
                moved: completion.transferred,
            });
        }
        if !copy {
            return Ok((u64::from(len), Vec::new()));
        }
        let mut data = vec![0u8; len as usize];
        buffer.range.read_at(&self.inner.memory, 0, &mut data)?;
        Ok((u64::from(len), data))
    }

    /// Sends a WRITE(10) of `data` (whole blocks) at `lba`; the completion
    /// tells how the host refused it.
    pub async fn try_write(&self, lba: u32, data: &[u8]) -> Result<SrbCompletion, DriverError> {
        let block = self.info.block_size.max(1) as usize;
        let blocks = (data.len() / block) as u16;
        let len = u32::from(blocks) * block as u32;
        let mut cdb = vec![0u8; 10];
        cdb[0] = Opcode::WRITE10.0;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let buffer = if len == 0 {
            None
        } else {
            let buffer = self.inner.buffer(len)?;
            buffer
                .range
                .write_at(&self.inner.memory, 0, &data[..len as usize])?;
            Some(buffer)
        };
        self.inner
            .srb(
                self.info.address,
                &cdb,
                DataDirection::WRITE,
                buffer.as_ref(),
            )
            .await
    }
}
