//! The async storvsc driver: runs the init handshake of a [`GuestProfile`]
//! over a ring, creates and opens sub-channels like Linux, scans the bus
//! (Linux: path 0–7 × target 0–1 × LUN 0 with VPD probing and MODE SENSE;
//! UEFI: REPORT LUNS to targets 0–2), and reads sectors with many requests
//! in flight spread over the channels, data buffers being scatter lists of
//! guest pages from a [`PageAllocator`].
//!
//! This module owns the driver's public face ([`Storvsc`], its
//! configuration and errors); the work is split by concern:
//! - `channel`: the rings, completion threads and SRB round trips;
//! - `init`: the init/version handshake and sub-channel creation;
//! - `scan`: the Linux and UEFI bus scans;
//! - `disk`: the [`Disk`] read/write API.

mod channel;
mod disk;
mod init;
mod scan;
mod slots;
mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vmbdev_ring::{Endpoint, GuestMemory, LoopbackError, PageAllocator, RingError};

use self::channel::Inner;
use super::{GuestProfile, HostProperties, InquiryInfo, LunAddress, SrbCompletion, StorvscError};

pub use disk::Disk;

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

/// Who reads a channel's host→guest ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Completions {
    /// A thread per channel, as a guest's interrupt handler: completions
    /// and host notifications are taken as they arrive.
    #[default]
    Thread,
    /// The waiting requests themselves, one at a time: no thread and no
    /// hand-off per reply, so guest and device can share one thread.
    /// Host packets are read only while a request waits.
    Polled,
    /// A thread per channel, as [`Thread`](Self::Thread), that polls its
    /// ring this many times before sleeping on the doorbell
    /// ([`RingReader::set_spin`](vmbdev_ring::RingReader::set_spin)): a
    /// guest whose device runs on another, otherwise idle CPU then takes a
    /// completion without a sleeping thread's wake-up.
    SpinningThread(u32),
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
    /// Who reads the host→guest rings.
    pub completions: Completions,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            profile: GuestProfile::Linux,
            cpus: 1,
            buffer_offset: 0,
            completions: Completions::Thread,
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
    /// A caller's buffer is not as long as the reads it is to receive.
    #[error("a buffer of {given} bytes for reads of {wanted} bytes")]
    BufferLength {
        /// Bytes the reads return (saturated at `u64::MAX`).
        wanted: u64,
        /// Bytes of the buffer.
        given: usize,
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

    fn count_enumerate_bus(&self) {
        self.enumerate_bus.fetch_add(1, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    fn count_unexpected(&self) {
        self.unexpected.fetch_add(1, Ordering::SeqCst);
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
            .field("channels", &self.inner.channel_count())
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
        let mut inner = Inner::new(
            memory,
            pages,
            config.profile,
            config.buffer_offset,
            config.completions,
        );
        inner.add_channel(primary)?;
        let (version, properties) = init::handshake(&mut inner, config.profile).await?;
        if config.profile == GuestProfile::Linux {
            init::open_linux_sub_channels(&mut inner, opener, config.cpus, version, properties)
                .await?;
        }
        let mut this = Self {
            inner: Arc::new(inner),
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
        self.inner.channel_count()
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
        self.disks
            .get(index)
            .map(|info| Disk::new(self.inner.clone(), info.clone()))
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
        let reply = self.inner.request(channel, payload, None).await?;
        Ok(reply.bytes().to_vec())
    }

    /// Scans the bus again the way the profile does.
    pub async fn rescan(&mut self) -> Result<(), DriverError> {
        let found = scan::scan(&self.inner).await?;
        self.disks = found.disks;
        self.probe = found.log;
        Ok(())
    }
}
