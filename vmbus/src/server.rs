//! The host's VMBus control-plane state machine.
//!
//! [`Server`] takes guest messages ([`Server::post_message`]) and answers
//! through a [`VmbusHost`] the VMM implements. It owns the connection
//! (version and the vCPU/SINT messages go to), the channels (one relid per
//! registered [`VmbusDevice`], from 1), the GPADLs the guest created, and
//! the host→guest message queue. It does no I/O and starts no threads; the
//! only work that outlives a call is handed to the VMM:
//!
//! - a channel's device task ([`VmbusHost::start_channel`]), and
//! - a GPADL teardown that must wait until a device released the pages
//!   ([`VmbusHost::wait_teardown`]): the VMM polls the [`TeardownWait`]
//!   anywhere it likes and hands its output to [`Server::teardown_complete`],
//!   which sends GPADL_TORNDOWN (and UNLOAD_RESPONSE once nothing is left).
//!
//! # Bounded output
//!
//! [`VmbusHost::post_message`] answers [`PostResult::SlotFull`] while the
//! guest's SIMP slot is full; the message then waits in the server's queue
//! until the VMM calls [`Server::slot_freed`] (on the guest's EOM). A
//! message that can never arrive ([`PostResult::Undeliverable`]: no such
//! vCPU, a disabled SIMP) gets no EOM either, so it is dropped and counted
//! ([`Server::undelivered`]) instead of blocking everything behind it. A
//! new connection (INITIATE_CONTACT, the end of an UNLOAD) starts with an
//! empty queue: what waits there was meant for the guest that left. Offers are not queued but
//! produced one at a time from a cursor, so a guest that never drains its
//! slot costs at most the queue limit ([`ServerConfig::queue_limit`]) in
//! replies: from there on its requests are dropped unanswered
//! ([`Dropped::QueueFull`]). Messages the host sends on its own (TORNDOWN
//! after a wait, an offer of a device added later and its RESCIND,
//! UNLOAD_RESPONSE) are queued past that limit; there is at most one
//! TORNDOWN per GPADL and an offer and a RESCIND per channel, all bounded
//! by the configuration ([`ServerConfig::queue_bound`]).
//!
//! # Sub-channels
//!
//! Every open hands the device a [`SubChannelControl`] that records its
//! request (from the device's own task, any thread) and calls the hook set
//! with [`Server::on_sub_channel_request`]; the VMM then calls
//! [`Server::offer_sub_channels`], which gives sub-channels `1..=count` of
//! the device relids and offers them (same instance GUID, their index in
//! the offer). They are opened like primaries and forgotten with the
//! connection, since a new guest asks again.
//!
//! # Hostile messages
//!
//! Every guest message has one of three outcomes: it is handled (possibly
//! with an error status in the reply, when the reply has one), it is
//! dropped and counted per [`Dropped`] kind ([`Server::dropped`]), or (for
//! a message on the wrong connection id) it is refused with
//! [`Dropped::WrongConnection`], which the VMM reports to the guest as an
//! invalid connection id. Nothing a guest sends panics, blocks or grows a
//! structure beyond the configured bounds.

use crate::protocol::{
    ChannelOffer, GpadlBody, GpadlCreated, GpadlHeader, GpadlTeardown, GpadlTorndown,
    InitiateContact, MAX_MESSAGE_LEN, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4,
    MessageHeader, MessageType, ModifyChannel, ModifyChannelResponse, OfferChannel, OpenChannel,
    OpenResult, RelidMessage, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, VMBUS_SINT, Version,
    VersionResponse,
};
use crate::saved::{
    SavedBus, SavedChannel, SavedGpadl, SavedGpadlState, SavedLink, SavedMessage, SavedStateError,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use vmbdev_device::bus::{
    BusError, ChannelTask, Offer, OpenRequest, PipeMode, SubChannelControl, VmbusDevice,
};
use vmbdev_ring::{Doorbell, GpaError, GpaRange, GpadlRegistry, GuestMemory, PAGE_SIZE};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Event connection ids handed out in offers are this plus the relid, so
/// they never collide with the message connection ids (1 and 4).
pub const CHANNEL_CONNECTION_BASE: u32 = 0x1_0000;

/// Limits on what a guest can make the server hold. [`Server::new`]
/// checks them ([`ServerConfig::validate`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most pages in one GPADL (the wire allows about 8190).
    pub max_gpadl_pages: u32,
    /// Most pages in all GPADLs together.
    pub max_total_gpadl_pages: u64,
    /// Most GPADLs alive at once (created, being built or torn down).
    pub max_gpadls: usize,
    /// Most GPADLs being built (header seen, bodies missing) at once.
    pub max_assembling: usize,
    /// Replies held while the guest's message slot is full, 1 to
    /// [`MAX_QUEUE_LIMIT`].
    pub queue_limit: usize,
    /// Most channels (relids 1..=this), at most [`MAX_CHANNELS`].
    pub max_channels: u32,
    /// vCPUs of the VM (0..this): a guest naming another one as the target
    /// of messages or interrupts is refused. The default, 1, suits a VM
    /// with one vCPU; set it to the VM's count.
    pub vp_count: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // 16 MiB: the largest data buffers the workspace's devices use,
            // with room to spare.
            max_gpadl_pages: 4096,
            max_total_gpadl_pages: 1 << 20,
            max_gpadls: 1024,
            max_assembling: 16,
            queue_limit: 32,
            max_channels: 2047,
            vp_count: 1,
        }
    }
}

/// The most channels a server can have: a channel's relid is its event
/// flag, and a SINT has 2048 of them with flag 0 unused.
pub const MAX_CHANNELS: u32 = 2047;

/// The largest [`ServerConfig::queue_limit`]: the queue is allocated up
/// front, a slot's worth of bytes per message.
pub const MAX_QUEUE_LIMIT: usize = 4096;

/// A [`ServerConfig`] field outside the bounds the server relies on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ServerConfig::{field} is {value}; it must be {bound}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// What it must be.
    pub bound: &'static str,
}

impl ServerConfig {
    /// The most host messages the queue holds: replies up to
    /// [`queue_limit`](Self::queue_limit), one TORNDOWN per GPADL, an offer
    /// and a RESCIND per channel, one UNLOAD_RESPONSE.
    pub fn queue_bound(&self) -> usize {
        self.queue_limit
            .saturating_add(self.max_gpadls)
            .saturating_add(2 * self.max_channels as usize)
            .saturating_add(1)
    }

    /// Checks every bound the server relies on; the error names the first
    /// field out of bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, field, value: u64, bound| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError {
                    field,
                    value,
                    bound,
                })
            }
        };
        let channels = self.max_channels;
        check(
            (1..=MAX_CHANNELS).contains(&channels),
            "max_channels",
            channels.into(),
            "1 to 2047 (a relid is an event-flag number)",
        )?;
        let queue = self.queue_limit;
        check(
            (1..=MAX_QUEUE_LIMIT).contains(&queue),
            "queue_limit",
            queue as u64,
            "1 to 4096 (with 0 no reply could wait for the slot)",
        )?;
        check(
            self.vp_count >= 1,
            "vp_count",
            self.vp_count.into(),
            "at least 1",
        )?;
        // GPADL handles are u32; the queue bound adds this count up.
        check(
            self.max_gpadls as u64 <= u64::from(u32::MAX),
            "max_gpadls",
            self.max_gpadls as u64,
            "at most 2^32 - 1 (GPADL handles are 32-bit)",
        )?;
        check(
            self.max_assembling <= self.max_gpadls,
            "max_assembling",
            self.max_assembling as u64,
            "at most max_gpadls (a GPADL being built is a GPADL)",
        )
    }
}

/// Why a guest message was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Dropped {
    /// Shorter than its type needs.
    #[error("message shorter than its type needs")]
    TooShort,
    /// Longer than a SynIC message payload.
    #[error("message longer than 240 bytes")]
    TooLong,
    /// A type the host does not know or does not take from a guest.
    #[error("unknown message type")]
    UnknownType,
    /// Anything but INITIATE_CONTACT before a version was agreed.
    #[error("message before INITIATE_CONTACT")]
    NotConnected,
    /// Posted on a connection id the protocol does not allow for it.
    #[error("message on the wrong connection id")]
    WrongConnection,
    /// Any message while an UNLOAD is being completed.
    #[error("message during UNLOAD")]
    Unloading,
    /// The guest has not drained its slot and the reply queue is full.
    #[error("host message queue full")]
    QueueFull,
    /// A second REQUESTOFFERS on the same connection.
    #[error("offers already requested")]
    OffersAlreadyRequested,
    /// A relid that names no offered channel.
    #[error("unknown relid")]
    UnknownRelid,
    /// CLOSECHANNEL or MODIFYCHANNEL of a channel that is not open.
    #[error("channel not open")]
    NotOpen,
    /// GPADL_BODY or GPADL_TEARDOWN of a GPADL that does not exist (or
    /// belongs to another channel).
    #[error("unknown GPADL")]
    UnknownGpadl,
    /// GPADL_BODY of a GPADL already complete.
    #[error("GPADL already complete")]
    GpadlComplete,
    /// GPADL_TEARDOWN of a GPADL still being built or already being torn
    /// down.
    #[error("GPADL not in a state to tear down")]
    GpadlNotCreated,
    /// RELID_RELEASED of a channel that was not rescinded.
    #[error("relid not rescinded")]
    NotRescinded,
    /// A target vCPU at or past [`ServerConfig::vp_count`] where no status
    /// can report it (INITIATE_CONTACT, MODIFYCHANNEL before 5.3).
    #[error("target vCPU the VM does not have")]
    BadVp,
    /// INITIATE_CONTACT naming a SINT past 15: there is no slot to answer
    /// in.
    #[error("message SINT past 15")]
    BadSint,
}

impl Dropped {
    const ALL: [Self; 16] = [
        Self::TooShort,
        Self::TooLong,
        Self::UnknownType,
        Self::NotConnected,
        Self::WrongConnection,
        Self::Unloading,
        Self::QueueFull,
        Self::OffersAlreadyRequested,
        Self::UnknownRelid,
        Self::NotOpen,
        Self::UnknownGpadl,
        Self::GpadlComplete,
        Self::GpadlNotCreated,
        Self::NotRescinded,
        Self::BadVp,
        Self::BadSint,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

/// Why the server refused to register a device.
#[derive(Debug, thiserror::Error)]
pub enum AddDeviceError {
    /// Every relid up to [`ServerConfig::max_channels`] was handed out.
    #[error("no relid left (at most {0} channels)")]
    TooManyChannels(u32),
}

/// What the VMM needs to route a channel's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSignal {
    /// The channel's relid (its bit in the SIEF event flags).
    pub relid: u32,
    /// What the guest passes to HvSignalEvent for the channel.
    pub connection_id: u32,
    /// vCPU that takes the channel's interrupts.
    pub target_vp: u32,
    /// SINT of the connection.
    pub sint: u8,
}

/// The doorbells of one open channel.
#[derive(Clone)]
pub struct ChannelDoorbells {
    /// Rung by the guest (HvSignalEvent on the channel's connection id);
    /// the device waits on it.
    pub guest_to_host: Arc<dyn Doorbell>,
    /// Rung by the device; sets the relid's event flag and raises the SINT
    /// on the target vCPU.
    pub host_to_guest: Arc<dyn Doorbell>,
}

/// What became of a message handed to [`VmbusHost::post_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostResult {
    /// In the guest's slot, and the SINT was raised.
    Posted,
    /// The slot still holds a message; its message-pending flag is now set,
    /// so the guest's EOM will come and the server tries again then.
    SlotFull,
    /// It can never arrive (no such vCPU or SINT, the SIMP is disabled, the
    /// payload does not fit a slot): no EOM will follow, so the server
    /// drops it.
    Undeliverable,
}

/// What the VMM provides the control plane.
pub trait VmbusHost {
    /// Writes `message` into the guest's SIMP slot for `sint` on vCPU `vp`
    /// and raises the SINT. If the slot still holds a message, sets its
    /// message-pending flag and returns [`PostResult::SlotFull`]: the server
    /// keeps the message and tries again on [`Server::slot_freed`].
    fn post_message(&mut self, vp: u32, sint: u8, message: &[u8]) -> PostResult;

    /// Builds the doorbells of a channel being opened and routes
    /// HvSignalEvent on `signal.connection_id` to `guest_to_host`.
    fn open_doorbells(&mut self, signal: &ChannelSignal) -> ChannelDoorbells;

    /// The channel's interrupts now go to `signal.target_vp`.
    fn retarget(&mut self, signal: &ChannelSignal);

    /// The channel closed: stop routing its connection id.
    fn close_doorbells(&mut self, relid: u32);

    /// Runs a device's channel task to completion, on any executor.
    fn start_channel(&mut self, relid: u32, task: ChannelTask);

    /// Polls `wait` to completion and hands its output to
    /// [`Server::teardown_complete`]. Dropping it unfinished leaves the
    /// GPADL being torn down forever (the guest sees no TORNDOWN).
    fn wait_teardown(&mut self, wait: TeardownWait);
}

/// A GPADL teardown waiting until no device holds the pages.
pub struct TeardownWait {
    gpadl: u32,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl TeardownWait {
    /// The GPADL being torn down.
    pub fn gpadl(&self) -> u32 {
        self.gpadl
    }
}

impl std::fmt::Debug for TeardownWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeardownWait")
            .field("gpadl", &self.gpadl)
            .finish_non_exhaustive()
    }
}

impl Future for TeardownWait {
    type Output = Released;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Released> {
        let gpadl = self.gpadl;
        self.wait.as_mut().poll(cx).map(|()| Released { gpadl })
    }
}

/// A GPADL whose pages no device holds any more.
#[derive(Debug)]
pub struct Released {
    gpadl: u32,
}

impl Released {
    /// The GPADL.
    pub fn gpadl(&self) -> u32 {
        self.gpadl
    }
}

/// Index of a registered device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceId(usize);

/// One host→guest message, held in place (no allocation per message).
#[derive(Clone)]
struct HostMessage {
    vp: u32,
    sint: u8,
    len: u8,
    bytes: [u8; MAX_MESSAGE_LEN],
}

impl HostMessage {
    fn new(vp: u32, sint: u8, message: &(impl IntoBytes + Immutable)) -> Self {
        let body = message.as_bytes();
        let mut bytes = [0; MAX_MESSAGE_LEN];
        let len = body.len().min(MAX_MESSAGE_LEN);
        bytes[..len].copy_from_slice(&body[..len]);
        Self {
            vp,
            sint,
            len: len as u8,
            bytes,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The agreed connection.
#[derive(Debug, Clone, Copy)]
struct Link {
    version: Version,
    target_vp: u32,
    sint: u8,
    offers_requested: bool,
}

#[derive(Debug, Clone, Copy)]
enum Connection {
    Disconnected,
    Connected(Link),
    /// UNLOAD received; UNLOAD_RESPONSE goes out once every GPADL is gone.
    Unloading(Link),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Closed,
    Open {
        ring_gpadl: u32,
        target_vp: u32,
        downstream: u32,
    },
}

struct Channel {
    device: DeviceId,
    index: u16,
    offered: bool,
    rescinded: bool,
    state: ChannelState,
    /// The doorbells the VMM routes for the open channel, kept while its
    /// device task is stopped by [`Server::suspend`].
    doorbells: Option<ChannelDoorbells>,
    /// Open, but its device task was stopped by a suspend (or it was
    /// restored): [`Server::resume`] starts it again.
    suspended: bool,
}

/// A guest GPADL's progress.
enum GpadlState {
    /// Header seen; `bytes` of `expected` range bytes received.
    Assembling {
        range_count: u16,
        expected: usize,
        bytes: Vec<u8>,
    },
    Created {
        pages: u64,
    },
    /// Waiting for the devices to let go; `notify`: the guest asked and
    /// gets GPADL_TORNDOWN.
    TearingDown {
        pages: u64,
        notify: bool,
    },
}

struct GuestGpadl {
    relid: u32,
    state: GpadlState,
}

/// Why a GPADL was refused (reported as a GPADL_CREATED error status; the
/// reason only goes to the log).
#[derive(Debug, thiserror::Error)]
enum GpadlRefusal {
    #[error("unknown channel")]
    UnknownChannel,
    #[error("handle already in use")]
    Duplicate,
    #[error("too many GPADLs")]
    TooMany,
    #[error("range_buflen {buflen} cannot hold {count} ranges")]
    BadRangeLength { buflen: usize, count: u16 },
    #[error("more than {0} pages")]
    TooLarge(u32),
    #[error("page numbers are not whole u64s")]
    PartialPfn,
    #[error("more page numbers than range_buflen allows")]
    TooManyPfns,
    #[error("ranges take {used} of {buflen} bytes")]
    LengthMismatch { used: usize, buflen: usize },
    #[error("{0} ranges; only single-range GPADLs are taken")]
    NotOneRange(u16),
    #[error("byte_offset {byte_offset} and byte_count {byte_count} do not cover whole pages")]
    NotWholePages { byte_offset: u32, byte_count: u32 },
    #[error(transparent)]
    Gpa(#[from] GpaError),
}

/// The host control plane.
pub struct Server {
    config: ServerConfig,
    memory: GuestMemory,
    registry: GpadlRegistry,
    devices: Vec<Option<(Arc<dyn VmbusDevice>, Offer)>>,
    channels: BTreeMap<u32, Channel>,
    connection: Connection,
    gpadls: HashMap<u32, GuestGpadl>,
    assembling: usize,
    total_pages: u64,
    queue: VecDeque<HostMessage>,
    /// Next relid to offer while REQUESTOFFERS is being answered.
    offer_cursor: Option<u32>,
    dropped: [u64; Dropped::ALL.len()],
    /// Host messages dropped because they could never be delivered.
    undelivered: u64,
    sub_channels: Arc<SubChannelRequests>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("connection", &self.connection)
            .field("channels", &self.channels.len())
            .field("gpadls", &self.gpadls.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// The fixed part of a message of type `T`, and what follows it.
fn parse<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<(T, &[u8]), Dropped> {
    T::read_from_prefix(bytes).map_err(|_| Dropped::TooShort)
}

impl Server {
    /// A server over guest memory `memory`, registering guest GPADLs in
    /// `registry` (the one the devices' open requests use). Refused if
    /// `config` is out of bounds ([`ServerConfig::validate`]).
    pub fn new(
        memory: GuestMemory,
        registry: GpadlRegistry,
        config: ServerConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            queue: VecDeque::with_capacity(config.queue_limit),
            config,
            memory,
            registry,
            devices: Vec::new(),
            channels: BTreeMap::new(),
            connection: Connection::Disconnected,
            gpadls: HashMap::new(),
            assembling: 0,
            total_pages: 0,
            offer_cursor: None,
            dropped: [0; Dropped::ALL.len()],
            undelivered: 0,
            sub_channels: Arc::default(),
        })
    }

    /// Registers `device` and gives its primary channel the next relid. A
    /// guest that already asked for offers is offered it at once.
    pub fn add_device(
        &mut self,
        device: Arc<dyn VmbusDevice>,
        host: &mut dyn VmbusHost,
    ) -> Result<(DeviceId, u32), AddDeviceError> {
        let relid = self
            .free_relid()
            .ok_or(AddDeviceError::TooManyChannels(self.config.max_channels))?;
        let id = DeviceId(self.devices.len());
        let offer = device.offer();
        self.devices.push(Some((device, offer)));
        self.add_channel(relid, id, 0, host);
        Ok((id, relid))
    }

    /// The lowest relid not in use (a released one is reused).
    fn free_relid(&self) -> Option<u32> {
        (1..=self.config.max_channels).find(|relid| !self.channels.contains_key(relid))
    }

    /// Creates channel `index` of `device` as `relid` and offers it at once
    /// if the guest already asked for offers.
    fn add_channel(&mut self, relid: u32, device: DeviceId, index: u16, host: &mut dyn VmbusHost) {
        self.channels.insert(
            relid,
            Channel {
                device,
                index,
                offered: false,
                rescinded: false,
                state: ChannelState::Closed,
                doorbells: None,
                suspended: false,
            },
        );
        if let Connection::Connected(link) = self.connection {
            match self.offer_cursor {
                // A reused relid below a running cursor: the cursor goes
                // back to it, or it would never be offered.
                Some(cursor) if relid < cursor => self.offer_cursor = Some(relid),
                // A running cursor reaches a relid above it by itself.
                Some(_) => {}
                None if link.offers_requested => self.offer_now(relid, link, host),
                None => {}
            }
        }
    }

    /// Calls `notify` (from any thread) whenever a device asks for
    /// sub-channels; the VMM answers with [`offer_sub_channels`](Self::offer_sub_channels).
    pub fn on_sub_channel_request(&mut self, notify: impl Fn() + Send + Sync + 'static) {
        *lock(&self.sub_channels.notify) = Some(Arc::new(notify));
    }

    /// Devices whose sub-channel requests wait for
    /// [`offer_sub_channels`](Self::offer_sub_channels) (a device asking
    /// again is still one).
    pub fn sub_channel_requests(&self) -> usize {
        lock(&self.sub_channels.pending).len()
    }

    /// Creates and offers the sub-channels devices asked for; returns how
    /// many new channels were offered.
    pub fn offer_sub_channels(&mut self, host: &mut dyn VmbusHost) -> usize {
        let requests = std::mem::take(&mut *lock(&self.sub_channels.pending));
        // Sub-channels belong to a connection; a request that outlived it
        // is forgotten, since a new guest asks again.
        if !matches!(self.connection, Connection::Connected(_)) {
            return 0;
        }
        let mut added = 0;
        for (device, count) in requests {
            for index in 1..=count {
                let exists = self
                    .channels
                    .values()
                    .any(|c| c.device == device && c.index == index && !c.rescinded);
                if exists || self.devices.get(device.0).is_none_or(Option::is_none) {
                    continue;
                }
                let Some(relid) = self.free_relid() else {
                    tracing::warn!("vmbus: no relid left for a sub-channel");
                    return added;
                };
                self.add_channel(relid, device, index, host);
                added += 1;
            }
        }
        added
    }

    /// Hot-removes `device`: its open channels are closed and offers the
    /// guest has seen are rescinded (the relid stays taken until the guest
    /// sends RELID_RELEASED).
    pub fn remove_device(&mut self, id: DeviceId, host: &mut dyn VmbusHost) {
        let relids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, c)| c.device == id && !c.rescinded)
            .map(|(&relid, _)| relid)
            .collect();
        let link = match self.connection {
            Connection::Connected(link) => Some(link),
            _ => None,
        };
        for relid in relids {
            self.close(relid, host);
            let Some(channel) = self.channels.get_mut(&relid) else {
                continue;
            };
            match link {
                Some(link) if channel.offered => {
                    channel.rescinded = true;
                    // A GPADL still being built for the channel would be
                    // created for a device that is gone: it is discarded,
                    // and its remaining bodies are dropped as unknown.
                    for gpadl in self.gpadls_of(|g| {
                        g.relid == relid && matches!(g.state, GpadlState::Assembling { .. })
                    }) {
                        self.abandon_gpadl(gpadl);
                    }
                    let message = RelidMessage {
                        header: MessageHeader::new(MessageType::RESCIND_CHANNEL_OFFER),
                        child_relid: U32::new(relid),
                    };
                    self.send(link.target_vp, link.sint, &message, host);
                }
                _ => {
                    self.channels.remove(&relid);
                }
            }
        }
        if let Some(slot) = self.devices.get_mut(id.0) {
            *slot = None;
        }
    }

    /// The agreed protocol version, if connected.
    pub fn version(&self) -> Option<Version> {
        match self.connection {
            Connection::Connected(link) => Some(link.version),
            _ => None,
        }
    }

    /// How many guest messages were dropped for `kind`.
    pub fn dropped(&self, kind: Dropped) -> u64 {
        self.dropped[kind.index()]
    }

    /// Host messages waiting for the guest's slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Host messages dropped because the VMM could never deliver them
    /// ([`PostResult::Undeliverable`]).
    pub fn undelivered(&self) -> u64 {
        self.undelivered
    }

    fn count_undelivered(&mut self, vp: u32, sint: u8) {
        self.undelivered += 1;
        tracing::debug!(vp, sint, "vmbus: host message undeliverable, dropped");
    }

    /// GPADLs the guest created that are not fully torn down.
    pub fn gpadl_count(&self) -> usize {
        self.gpadls.len()
    }

    /// Whether the channel `relid` is open.
    pub fn is_open(&self, relid: u32) -> bool {
        self.channels
            .get(&relid)
            .is_some_and(|c| c.state != ChannelState::Closed)
    }

    /// Handles one guest message posted on `connection_id`. `Err` says why
    /// it was dropped (it is also counted); a message on the wrong
    /// connection id should make the guest's HvPostMessage fail.
    pub fn post_message(
        &mut self,
        connection_id: u32,
        bytes: &[u8],
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        let result = self.dispatch(connection_id, bytes, host);
        if let Err(kind) = result {
            self.dropped[kind.index()] += 1;
            tracing::debug!(%kind, connection_id, len = bytes.len(), "vmbus: guest message dropped");
        }
        result
    }

    /// The guest freed its message slot (EOM): send what waits.
    pub fn slot_freed(&mut self, host: &mut dyn VmbusHost) {
        while let Some(message) = self.queue.front() {
            let (vp, sint) = (message.vp, message.sint);
            match host.post_message(vp, sint, message.bytes()) {
                PostResult::SlotFull => return,
                PostResult::Posted => {}
                PostResult::Undeliverable => self.count_undelivered(vp, sint),
            }
            self.queue.pop_front();
        }
        self.pump_offers(host);
    }

    /// A teardown handed out by [`VmbusHost::wait_teardown`] finished: the
    /// GPADL is gone and the guest is told if it asked.
    pub fn teardown_complete(&mut self, released: Released, host: &mut dyn VmbusHost) {
        let gpadl = released.gpadl;
        if let Some(GuestGpadl {
            state: GpadlState::TearingDown { .. },
            ..
        }) = self.gpadls.get(&gpadl)
        {
            self.teardown_done(gpadl, host);
        }
    }

    fn dispatch(
        &mut self,
        connection_id: u32,
        bytes: &[u8],
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Dropped::TooLong);
        }
        let (header, _) = parse::<MessageHeader>(bytes)?;
        let kind = MessageType(header.message_type.get());
        // Checked before the queue: a contact that is taken empties the
        // queue, so a guest that stopped draining and started again is
        // not locked out by what its predecessor left.
        if kind == MessageType::INITIATE_CONTACT {
            return self.initiate_contact(connection_id, bytes, host);
        }
        // Every guest message has at most one reply; refusing new ones once
        // the queue is full is what keeps it bounded.
        if self.queue.len() >= self.config.queue_limit {
            return Err(Dropped::QueueFull);
        }
        let link = match self.connection {
            Connection::Connected(link) => link,
            Connection::Disconnected => return Err(Dropped::NotConnected),
            Connection::Unloading(_) => return Err(Dropped::Unloading),
        };
        if connection_id != MESSAGE_CONNECTION_ID {
            return Err(Dropped::WrongConnection);
        }
        self.dispatch_connected(kind, bytes, link, host)
    }

    fn dispatch_connected(
        &mut self,
        kind: MessageType,
        bytes: &[u8],
        link: Link,
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        match kind {
            MessageType::REQUEST_OFFERS => self.request_offers(link, host),
            MessageType::GPADL_HEADER => self.gpadl_header(bytes, link, host),
            MessageType::GPADL_BODY => self.gpadl_body(bytes, link, host),
            MessageType::GPADL_TEARDOWN => self.gpadl_teardown(bytes, host),
            MessageType::OPEN_CHANNEL => self.open_channel(bytes, link, host),
            MessageType::CLOSE_CHANNEL => self.close_channel(bytes, host),
            MessageType::MODIFY_CHANNEL => self.modify_channel(bytes, link, host),
            MessageType::RELID_RELEASED => self.relid_released(bytes, host),
            MessageType::UNLOAD => {
                self.unload(link, host);
                Ok(())
            }
            _ => Err(Dropped::UnknownType),
        }
    }

    /// Whether anything of the current connection is still alive (a
    /// renegotiation would orphan it).
    fn busy(&self) -> bool {
        !self.gpadls.is_empty()
            || matches!(self.connection, Connection::Unloading(_))
            || self
                .channels
                .values()
                .any(|c| c.state != ChannelState::Closed || c.rescinded)
    }

    fn initiate_contact(
        &mut self,
        connection_id: u32,
        bytes: &[u8],
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        let (message, _) = parse::<InitiateContact>(bytes)?;
        let version = Version(message.version_requested.get());
        let expected = if version >= Version::V5_0 {
            MESSAGE_CONNECTION_ID_4
        } else {
            MESSAGE_CONNECTION_ID
        };
        if connection_id != expected {
            return Err(Dropped::WrongConnection);
        }
        // From 5.0 the field is the message SINT (u8) and seven bytes of
        // padding, which Linux sends as zero; before 5.0 it is the
        // interrupt page, which this host does not use.
        let (sint, padding_clear) = if version >= Version::V5_0 {
            let field = message.interrupt_page_or_sint.get();
            (field as u8, field >> 8 == 0)
        } else {
            (VMBUS_SINT, true)
        };
        if sint >= 16 {
            return Err(Dropped::BadSint);
        }
        let vp = message.target_vcpu.get();
        // No vCPU to answer on: the contact changes nothing.
        if vp >= self.config.vp_count {
            return Err(Dropped::BadVp);
        }
        let busy = self.busy();
        // A refused contact keeps the queue, so it is bounded like any
        // other reply; otherwise the queue is emptied below.
        if busy && self.queue.len() >= self.config.queue_limit {
            return Err(Dropped::QueueFull);
        }
        let accepted = !busy && padding_clear && Version::SUPPORTED.contains(&version);
        if accepted {
            self.connect(Link {
                version,
                target_vp: vp,
                sint,
                offers_requested: false,
            });
        } else if !busy {
            // A guest trying the next lower version is not connected yet.
            self.disconnect();
        }
        let reply = VersionResponse {
            header: MessageHeader::new(MessageType::VERSION_RESPONSE),
            version_supported: u8::from(accepted),
            connection_state: 0,
            padding: U16::ZERO,
            message_connection_id: U32::new(MESSAGE_CONNECTION_ID),
        };
        self.send(vp, sint, &reply, host);
        Ok(())
    }

    fn connect(&mut self, link: Link) {
        self.disconnect();
        self.connection = Connection::Connected(link);
    }

    /// Forgets the connection: offers are sent afresh on the next one, and
    /// nothing queued for the old one is delivered.
    fn disconnect(&mut self) {
        self.connection = Connection::Disconnected;
        self.offer_cursor = None;
        self.queue.clear();
        self.channels.retain(|_, c| !c.rescinded && c.index == 0);
        for channel in self.channels.values_mut() {
            channel.offered = false;
        }
    }

    fn request_offers(&mut self, link: Link, host: &mut dyn VmbusHost) -> Result<(), Dropped> {
        if link.offers_requested {
            return Err(Dropped::OffersAlreadyRequested);
        }
        self.connection = Connection::Connected(Link {
            offers_requested: true,
            ..link
        });
        self.offer_cursor = Some(1);
        if self.queue.is_empty() {
            self.pump_offers(host);
        }
        Ok(())
    }

    /// Sends offers from the cursor while the guest's slot takes them,
    /// then ALLOFFERS_DELIVERED.
    fn pump_offers(&mut self, host: &mut dyn VmbusHost) {
        let Connection::Connected(link) = self.connection else {
            self.offer_cursor = None;
            return;
        };
        while let Some(cursor) = self.offer_cursor {
            let next = self
                .channels
                .range(cursor..)
                .find(|(_, c)| !c.offered && !c.rescinded)
                .map(|(&relid, _)| relid);
            match next {
                Some(relid) => {
                    let Some(message) = self.offer_message(relid) else {
                        self.offer_cursor = Some(relid + 1);
                        continue;
                    };
                    match host.post_message(link.target_vp, link.sint, message.as_bytes()) {
                        PostResult::SlotFull => return,
                        PostResult::Posted => self.mark_offered(relid),
                        // Not offered: the guest never saw it.
                        PostResult::Undeliverable => {
                            self.count_undelivered(link.target_vp, link.sint);
                        }
                    }
                    self.offer_cursor = Some(relid + 1);
                }
                None => {
                    let done = MessageHeader::new(MessageType::ALL_OFFERS_DELIVERED);
                    match host.post_message(link.target_vp, link.sint, done.as_bytes()) {
                        PostResult::SlotFull => return,
                        PostResult::Posted => {}
                        PostResult::Undeliverable => {
                            self.count_undelivered(link.target_vp, link.sint);
                        }
                    }
                    self.offer_cursor = None;
                }
            }
        }
    }

    fn offer_now(&mut self, relid: u32, link: Link, host: &mut dyn VmbusHost) {
        if let Some(message) = self.offer_message(relid) {
            self.mark_offered(relid);
            self.send(link.target_vp, link.sint, &message, host);
        }
    }

    fn mark_offered(&mut self, relid: u32) {
        if let Some(channel) = self.channels.get_mut(&relid) {
            channel.offered = true;
        }
    }

    fn offer_message(&self, relid: u32) -> Option<OfferChannel> {
        let channel = self.channels.get(&relid)?;
        let (_, offer) = self.devices.get(channel.device.0)?.as_ref()?;
        Some(OfferChannel {
            header: MessageHeader::new(MessageType::OFFER_CHANNEL),
            offer: channel_offer(offer, channel.index),
            child_relid: U32::new(relid),
            monitor_id: 0,
            // No monitor pages: the guest always signals with HvSignalEvent.
            monitor_allocated: 0,
            dedicated_interrupt: U16::ZERO,
            connection_id: U32::new(CHANNEL_CONNECTION_BASE + relid),
        })
    }

    /// Queues `message` behind what waits, or posts it now if nothing does.
    fn send(
        &mut self,
        vp: u32,
        sint: u8,
        message: &(impl IntoBytes + Immutable),
        host: &mut dyn VmbusHost,
    ) {
        if self.queue.is_empty() && self.offer_cursor.is_none() {
            match host.post_message(vp, sint, message.as_bytes()) {
                PostResult::Posted => return,
                PostResult::Undeliverable => {
                    self.count_undelivered(vp, sint);
                    return;
                }
                PostResult::SlotFull => {}
            }
        }
        self.queue.push_back(HostMessage::new(vp, sint, message));
    }

    fn offered_channel(&self, relid: u32) -> Option<&Channel> {
        self.channels
            .get(&relid)
            .filter(|c| c.offered && !c.rescinded)
    }

    fn gpadl_header(
        &mut self,
        bytes: &[u8],
        link: Link,
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        let (message, pfns) = parse::<GpadlHeader>(bytes)?;
        let relid = message.child_relid.get();
        let gpadl = message.gpadl.get();
        match self.begin_gpadl(&message, pfns) {
            Ok(true) => self.finish_gpadl(gpadl, link, host),
            Ok(false) => {}
            Err(reason) => {
                tracing::debug!(relid, gpadl, %reason, "vmbus: GPADL refused");
                self.send_created(relid, gpadl, STATUS_UNSUCCESSFUL, link, host);
            }
        }
        Ok(())
    }

    /// Checks a GPADL_HEADER and starts assembling; `true` if the header
    /// already held every range byte.
    fn begin_gpadl(&mut self, message: &GpadlHeader, rest: &[u8]) -> Result<bool, GpadlRefusal> {
        let gpadl = message.gpadl.get();
        let relid = message.child_relid.get();
        if self.offered_channel(relid).is_none() {
            return Err(GpadlRefusal::UnknownChannel);
        }
        if self.gpadls.contains_key(&gpadl) {
            return Err(GpadlRefusal::Duplicate);
        }
        if self.gpadls.len() >= self.config.max_gpadls
            || self.assembling >= self.config.max_assembling
        {
            return Err(GpadlRefusal::TooMany);
        }
        let buflen = usize::from(message.range_buflen.get());
        let count = message.range_count.get();
        // The registry holds a GPADL as one run of whole pages, so only a
        // GPADL that is exactly that can be registered without granting
        // the device bytes the guest did not describe (see `register`).
        if count != 1 {
            return Err(GpadlRefusal::NotOneRange(count));
        }
        // Each range is 8 bytes of lengths and at least one page number.
        let headers = 8 * usize::from(count);
        if buflen < 2 * headers || buflen % 8 != 0 {
            return Err(GpadlRefusal::BadRangeLength { buflen, count });
        }
        let pages = (buflen - headers) / 8;
        if pages > self.config.max_gpadl_pages as usize {
            return Err(GpadlRefusal::TooLarge(self.config.max_gpadl_pages));
        }
        if rest.len() % 8 != 0 {
            return Err(GpadlRefusal::PartialPfn);
        }
        if rest.len() > buflen {
            return Err(GpadlRefusal::TooManyPfns);
        }
        let mut bytes = Vec::with_capacity(buflen);
        bytes.extend_from_slice(rest);
        self.assembling += 1;
        self.gpadls.insert(
            gpadl,
            GuestGpadl {
                relid,
                state: GpadlState::Assembling {
                    range_count: count,
                    expected: buflen,
                    bytes,
                },
            },
        );
        Ok(rest.len() == buflen)
    }

    fn gpadl_body(
        &mut self,
        bytes: &[u8],
        link: Link,
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        let (message, pfns) = parse::<GpadlBody>(bytes)?;
        let gpadl = message.gpadl.get();
        let relid = self.gpadls.get(&gpadl).ok_or(Dropped::UnknownGpadl)?.relid;
        if self.offered_channel(relid).is_none() {
            // Its channel went away while it was being built.
            self.abandon_gpadl(gpadl);
            return Err(Dropped::UnknownGpadl);
        }
        let entry = self.gpadls.get_mut(&gpadl).ok_or(Dropped::UnknownGpadl)?;
        let GpadlState::Assembling {
            expected, bytes, ..
        } = &mut entry.state
        else {
            return Err(Dropped::GpadlComplete);
        };
        if pfns.len() % 8 != 0 || bytes.len() + pfns.len() > *expected {
            tracing::debug!(gpadl, "vmbus: GPADL body overruns its header");
            self.abandon_gpadl(gpadl);
            self.send_created(relid, gpadl, STATUS_UNSUCCESSFUL, link, host);
            return Ok(());
        }
        bytes.extend_from_slice(pfns);
        if bytes.len() == *expected {
            self.finish_gpadl(gpadl, link, host);
        }
        Ok(())
    }

    fn abandon_gpadl(&mut self, gpadl: u32) {
        if let Some(GuestGpadl {
            state: GpadlState::Assembling { .. },
            ..
        }) = self.gpadls.remove(&gpadl)
        {
            self.assembling -= 1;
        }
    }

    /// Parses the assembled ranges, registers the pages and answers.
    fn finish_gpadl(&mut self, gpadl: u32, link: Link, host: &mut dyn VmbusHost) {
        let Some(entry) = self.gpadls.get_mut(&gpadl) else {
            return;
        };
        let relid = entry.relid;
        let GpadlState::Assembling {
            range_count, bytes, ..
        } = &mut entry.state
        else {
            return;
        };
        let (count, bytes) = (*range_count, std::mem::take(bytes));
        match self.register(gpadl, count, &bytes) {
            Ok(pages) => {
                self.assembling -= 1;
                self.total_pages += pages;
                if let Some(entry) = self.gpadls.get_mut(&gpadl) {
                    entry.state = GpadlState::Created { pages };
                }
                self.send_created(relid, gpadl, STATUS_SUCCESS, link, host);
            }
            Err(reason) => {
                tracing::debug!(relid, gpadl, %reason, "vmbus: GPADL refused");
                self.abandon_gpadl(gpadl);
                self.send_created(relid, gpadl, STATUS_UNSUCCESSFUL, link, host);
            }
        }
    }

    fn register(&self, gpadl: u32, count: u16, bytes: &[u8]) -> Result<u64, GpadlRefusal> {
        let (ranges, used) = GpaRange::parse_list(bytes, u32::from(count))?;
        if used != bytes.len() {
            return Err(GpadlRefusal::LengthMismatch {
                used,
                buflen: bytes.len(),
            });
        }
        // Linux sends a ring GPADL as one range at offset 0 whose
        // byte_count is a whole number of pages; a partial page would be
        // widened to the whole page here, so it is refused.
        let [range] = &ranges[..] else {
            return Err(GpadlRefusal::NotOneRange(count));
        };
        let (byte_offset, byte_count) = (range.byte_offset(), range.byte_count());
        if byte_offset != 0 || byte_count as usize % PAGE_SIZE != 0 {
            return Err(GpadlRefusal::NotWholePages {
                byte_offset,
                byte_count,
            });
        }
        let pages = range.gpns().to_vec();
        let count = pages.len() as u64;
        if self.total_pages + count > self.config.max_total_gpadl_pages {
            return Err(GpadlRefusal::TooMany);
        }
        self.registry.register(&self.memory, gpadl, pages)?;
        Ok(count)
    }

    fn send_created(
        &mut self,
        relid: u32,
        gpadl: u32,
        status: u32,
        link: Link,
        host: &mut dyn VmbusHost,
    ) {
        let reply = GpadlCreated {
            header: MessageHeader::new(MessageType::GPADL_CREATED),
            child_relid: U32::new(relid),
            gpadl: U32::new(gpadl),
            status: U32::new(status),
        };
        self.send(link.target_vp, link.sint, &reply, host);
    }

    fn gpadl_teardown(&mut self, bytes: &[u8], host: &mut dyn VmbusHost) -> Result<(), Dropped> {
        let (message, _) = parse::<GpadlTeardown>(bytes)?;
        let gpadl = message.gpadl.get();
        let entry = self.gpadls.get(&gpadl).ok_or(Dropped::UnknownGpadl)?;
        if entry.relid != message.child_relid.get() {
            return Err(Dropped::UnknownGpadl);
        }
        if !matches!(entry.state, GpadlState::Created { .. }) {
            return Err(Dropped::GpadlNotCreated);
        }
        self.start_teardown(gpadl, true, host);
        Ok(())
    }

    /// Removes a created GPADL now if no device holds it, otherwise hands
    /// the wait to the VMM. `notify`: answer with GPADL_TORNDOWN.
    fn start_teardown(&mut self, gpadl: u32, notify: bool, host: &mut dyn VmbusHost) {
        let Some(entry) = self.gpadls.get_mut(&gpadl) else {
            return;
        };
        let pages = match entry.state {
            GpadlState::Created { pages } | GpadlState::TearingDown { pages, .. } => pages,
            GpadlState::Assembling { .. } => {
                self.abandon_gpadl(gpadl);
                return;
            }
        };
        let already_waiting = matches!(entry.state, GpadlState::TearingDown { .. });
        entry.state = GpadlState::TearingDown { pages, notify };
        if already_waiting {
            return;
        }
        match self.registry.try_teardown(gpadl) {
            Ok(_) | Err(GpaError::UnknownGpadl(_)) => self.teardown_done(gpadl, host),
            Err(_) => {
                let registry = self.registry.clone();
                host.wait_teardown(TeardownWait {
                    gpadl,
                    wait: Box::pin(async move {
                        let _ = registry.teardown(gpadl).await;
                    }),
                });
            }
        }
    }

    fn teardown_done(&mut self, gpadl: u32, host: &mut dyn VmbusHost) {
        let Some(GuestGpadl {
            state: GpadlState::TearingDown { pages, notify },
            ..
        }) = self.gpadls.remove(&gpadl)
        else {
            return;
        };
        self.total_pages -= pages;
        // The ring of a channel the guest never closed, let go of only
        // because the device was suspended: the channel cannot run on pages
        // that are gone, so it is closed as if the guest had asked (and a
        // resume or a restore finds nothing to restart on them).
        let orphaned: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, c)| matches!(c.state, ChannelState::Open { ring_gpadl, .. } if ring_gpadl == gpadl))
            .map(|(&relid, _)| relid)
            .collect();
        for relid in orphaned {
            self.close(relid, host);
        }
        match self.connection {
            Connection::Connected(link) if notify => {
                let reply = GpadlTorndown {
                    header: MessageHeader::new(MessageType::GPADL_TORNDOWN),
                    gpadl: U32::new(gpadl),
                };
                self.send(link.target_vp, link.sint, &reply, host);
            }
            Connection::Unloading(link) => self.finish_unload(link, host),
            _ => {}
        }
    }

    fn open_channel(
        &mut self,
        bytes: &[u8],
        link: Link,
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        let (message, _) = parse::<OpenChannel>(bytes)?;
        let relid = message.child_relid.get();
        if self.offered_channel(relid).is_none() {
            return Err(Dropped::UnknownRelid);
        }
        let status = match self.open(&message, host) {
            Ok(()) => STATUS_SUCCESS,
            Err(reason) => {
                tracing::debug!(relid, %reason, "vmbus: open refused");
                STATUS_UNSUCCESSFUL
            }
        };
        let reply = OpenResult {
            header: MessageHeader::new(MessageType::OPEN_CHANNEL_RESULT),
            child_relid: U32::new(relid),
            open_id: message.open_id,
            status: U32::new(status),
        };
        self.send(link.target_vp, link.sint, &reply, host);
        Ok(())
    }

    /// Opens the device's channel over the ring GPADL.
    fn open(&mut self, message: &OpenChannel, host: &mut dyn VmbusHost) -> Result<(), OpenRefusal> {
        let relid = message.child_relid.get();
        let ring_gpadl = message.ring_gpadl.get();
        let channel = self.channels.get(&relid).ok_or(OpenRefusal::Unknown)?;
        if channel.state != ChannelState::Closed {
            return Err(OpenRefusal::AlreadyOpen);
        }
        let ring_ok = self
            .gpadls
            .get(&ring_gpadl)
            .is_some_and(|g| g.relid == relid && matches!(g.state, GpadlState::Created { .. }));
        let ring_taken = self.channels.values().any(
            |c| matches!(c.state, ChannelState::Open { ring_gpadl: r, .. } if r == ring_gpadl),
        );
        if !ring_ok || ring_taken {
            return Err(OpenRefusal::BadRing);
        }
        let (target_vp, downstream) = (
            message.target_vp.get(),
            message.downstream_page_offset.get(),
        );
        if target_vp >= self.config.vp_count {
            return Err(OpenRefusal::BadVp(target_vp));
        }
        self.start_device(relid, ring_gpadl, target_vp, downstream, host)?;
        if let Some(channel) = self.channels.get_mut(&relid) {
            channel.state = ChannelState::Open {
                ring_gpadl,
                target_vp,
                downstream,
            };
        }
        Ok(())
    }

    /// Opens the device behind `relid` over its ring and hands its task to
    /// the VMM.
    fn start_device(
        &mut self,
        relid: u32,
        ring_gpadl: u32,
        target_vp: u32,
        downstream: u32,
        host: &mut dyn VmbusHost,
    ) -> Result<(), OpenRefusal> {
        let channel = self.channels.get(&relid).ok_or(OpenRefusal::Unknown)?;
        let (device, offer) = self
            .devices
            .get(channel.device.0)
            .and_then(Option::as_ref)
            .ok_or(OpenRefusal::Unknown)?;
        let hook = Arc::new(SubChannelHook {
            device: channel.device,
            max: offer.max_sub_channels,
            requests: self.sub_channels.clone(),
        });
        let device = device.clone();
        let index = channel.index;
        // A channel resumed after a suspend keeps the doorbells the VMM
        // still routes; only a new open (or a restored one) asks for them.
        let doorbells = match &channel.doorbells {
            Some(doorbells) => doorbells.clone(),
            None => host.open_doorbells(&self.signal(relid, target_vp)),
        };
        if let Some(channel) = self.channels.get_mut(&relid) {
            channel.doorbells = Some(doorbells.clone());
        }
        let opened = OpenRequest::from_gpadl(
            self.memory.clone(),
            self.registry.clone(),
            ring_gpadl,
            downstream,
            doorbells.guest_to_host,
            doorbells.host_to_guest,
        )
        .and_then(|mut request| {
            request.sub_channels = hook;
            device.open(index, request)
        });
        match opened {
            Ok(task) => {
                host.start_channel(relid, task);
                Ok(())
            }
            Err(error) => {
                if let Some(channel) = self.channels.get_mut(&relid) {
                    channel.doorbells = None;
                }
                host.close_doorbells(relid);
                Err(OpenRefusal::Device(error))
            }
        }
    }

    fn signal(&self, relid: u32, target_vp: u32) -> ChannelSignal {
        let sint = match self.connection {
            Connection::Connected(link) | Connection::Unloading(link) => link.sint,
            Connection::Disconnected => VMBUS_SINT,
        };
        ChannelSignal {
            relid,
            connection_id: CHANNEL_CONNECTION_BASE + relid,
            target_vp,
            sint,
        }
    }

    fn close_channel(&mut self, bytes: &[u8], host: &mut dyn VmbusHost) -> Result<(), Dropped> {
        let (message, _) = parse::<RelidMessage>(bytes)?;
        let relid = message.child_relid.get();
        let channel = self
            .channels
            .get(&relid)
            .filter(|c| c.offered)
            .ok_or(Dropped::UnknownRelid)?;
        if channel.state == ChannelState::Closed {
            // A rescinded channel was closed by the host already.
            return if channel.rescinded {
                Ok(())
            } else {
                Err(Dropped::NotOpen)
            };
        }
        self.close(relid, host);
        Ok(())
    }

    /// Asks the device to stop serving `relid`; its ring GPADL stays held
    /// until the task has ended.
    fn close(&mut self, relid: u32, host: &mut dyn VmbusHost) {
        let Some(channel) = self.channels.get_mut(&relid) else {
            return;
        };
        if channel.state == ChannelState::Closed {
            return;
        }
        channel.state = ChannelState::Closed;
        channel.doorbells = None;
        channel.suspended = false;
        let index = channel.index;
        if let Some(Some((device, _))) = self.devices.get(channel.device.0) {
            if let Err(error) = device.close(index) {
                tracing::debug!(relid, %error, "vmbus: device close");
            }
        }
        host.close_doorbells(relid);
    }

    fn modify_channel(
        &mut self,
        bytes: &[u8],
        link: Link,
        host: &mut dyn VmbusHost,
    ) -> Result<(), Dropped> {
        let (message, _) = parse::<ModifyChannel>(bytes)?;
        let relid = message.child_relid.get();
        let new_vp = message.target_vp.get();
        let vp_ok = new_vp < self.config.vp_count;
        let channel = self
            .channels
            .get_mut(&relid)
            .filter(|c| c.offered && !c.rescinded)
            .ok_or(Dropped::UnknownRelid)?;
        let outcome = match &mut channel.state {
            ChannelState::Open { target_vp, .. } if vp_ok => {
                *target_vp = new_vp;
                Ok(())
            }
            ChannelState::Open { .. } => Err(Dropped::BadVp),
            ChannelState::Closed => Err(Dropped::NotOpen),
        };
        if outcome.is_ok() {
            host.retarget(&self.signal(relid, new_vp));
        }
        // Only 5.3 guests wait for an answer; older ones get none.
        if link.version < Version::V5_3 {
            return outcome;
        }
        let status = if outcome.is_ok() {
            STATUS_SUCCESS
        } else {
            STATUS_UNSUCCESSFUL
        };
        let reply = ModifyChannelResponse {
            header: MessageHeader::new(MessageType::MODIFY_CHANNEL_RESPONSE),
            child_relid: U32::new(relid),
            status: U32::new(status),
        };
        self.send(link.target_vp, link.sint, &reply, host);
        Ok(())
    }

    fn relid_released(&mut self, bytes: &[u8], host: &mut dyn VmbusHost) -> Result<(), Dropped> {
        let (message, _) = parse::<RelidMessage>(bytes)?;
        let relid = message.child_relid.get();
        if !self.channels.get(&relid).is_some_and(|c| c.rescinded) {
            return Err(Dropped::NotRescinded);
        }
        self.channels.remove(&relid);
        // The guest forgets the channel's GPADLs with it.
        for gpadl in self.gpadls_of(|g| g.relid == relid) {
            self.start_teardown(gpadl, false, host);
        }
        Ok(())
    }

    fn gpadls_of(&self, keep: impl Fn(&GuestGpadl) -> bool) -> Vec<u32> {
        self.gpadls
            .iter()
            .filter(|(_, g)| keep(g))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Closes every channel and drops every GPADL; UNLOAD_RESPONSE goes out
    /// once the devices let go of all pages.
    fn unload(&mut self, link: Link, host: &mut dyn VmbusHost) {
        self.connection = Connection::Unloading(link);
        self.offer_cursor = None;
        let open: Vec<u32> = self.channels.keys().copied().collect();
        for relid in open {
            self.close(relid, host);
        }
        for gpadl in self.gpadls_of(|_| true) {
            self.start_teardown(gpadl, false, host);
        }
        self.finish_unload(link, host);
    }

    fn finish_unload(&mut self, link: Link, host: &mut dyn VmbusHost) {
        // The last teardown may already have answered.
        if !self.gpadls.is_empty() || !matches!(self.connection, Connection::Unloading(_)) {
            return;
        }
        self.disconnect();
        let reply = MessageHeader::new(MessageType::UNLOAD_RESPONSE);
        self.send(link.target_vp, link.sint, &reply, host);
    }
}

/// Why an OPENCHANNEL failed (reported as a non-zero status).
#[derive(Debug, thiserror::Error)]
enum OpenRefusal {
    #[error("unknown channel")]
    Unknown,
    #[error("already open")]
    AlreadyOpen,
    #[error("the ring GPADL is unknown, not this channel's, or in use")]
    BadRing,
    #[error("target vCPU {0} is not one of the VM's")]
    BadVp(u32),
    #[error(transparent)]
    Device(#[from] BusError),
}

/// The wire offer of channel `index` of a device offering `offer`.
fn channel_offer(offer: &Offer, index: u16) -> ChannelOffer {
    use crate::protocol::{CHANNEL_FLAG_NAMED_PIPE, PIPE_MODE_BYTE, PIPE_MODE_MESSAGE};
    let mut user_defined = [0; 120];
    let pipe = match offer.pipe_mode {
        PipeMode::None => None,
        PipeMode::Message => Some(PIPE_MODE_MESSAGE),
        PipeMode::Byte => Some(PIPE_MODE_BYTE),
    };
    if let Some(mode) = pipe {
        user_defined[..4].copy_from_slice(&mode.to_le_bytes());
    }
    ChannelOffer {
        interface_id: offer.interface_id,
        instance_id: offer.instance_id,
        reserved1: U64::ZERO,
        reserved2: U64::ZERO,
        flags: U16::new(if pipe.is_some() {
            CHANNEL_FLAG_NAMED_PIPE
        } else {
            0
        }),
        mmio_megabytes: U16::ZERO,
        user_defined,
        sub_channel_index: U16::new(index),
        reserved3: U16::ZERO,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A wake-up hook the VMM sets.
type Notify = Arc<dyn Fn() + Send + Sync>;

/// Sub-channel requests of devices, waiting for the server.
#[derive(Default)]
struct SubChannelRequests {
    pending: Mutex<Vec<(DeviceId, u16)>>,
    notify: Mutex<Option<Notify>>,
}

/// What an opened device asks for sub-channels through.
struct SubChannelHook {
    device: DeviceId,
    max: u16,
    requests: Arc<SubChannelRequests>,
}

impl SubChannelControl for SubChannelHook {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        if count == 0 || count > self.max {
            return Err(BusError::SubChannelsUnsupported { requested: count });
        }
        {
            // One entry per device, so a guest repeating its request
            // cannot grow the list.
            let mut pending = lock(&self.requests.pending);
            match pending.iter_mut().find(|(d, _)| *d == self.device) {
                Some((_, asked)) => *asked = (*asked).max(count),
                None => pending.push((self.device, count)),
            }
        }
        // Called outside the list's lock: the hook may call back in.
        let notify = lock(&self.requests.notify).clone();
        if let Some(notify) = notify {
            notify();
        }
        Ok(())
    }
}

/// Saved state: [`suspend`](Server::suspend), wait for the device tasks,
/// [`save`](Server::save); later [`restore`](Server::restore) and
/// [`resume`](Server::resume). The guest's view (connection, offers, open
/// channels, GPADLs, replies not yet delivered) survives unchanged.
impl Server {
    /// Stops every device task and keeps the guest's view: open channels
    /// stay open and their doorbells stay routed. The VMM waits until the
    /// tasks it ran have ended, then calls [`save`](Self::save) or
    /// [`resume`](Self::resume).
    pub fn suspend(&mut self) {
        for channel in self.channels.values_mut() {
            if channel.state == ChannelState::Closed || channel.suspended {
                continue;
            }
            channel.suspended = true;
            if let Some(Some((device, _))) = self.devices.get(channel.device.0) {
                if let Err(error) = device.close(channel.index) {
                    tracing::debug!(%error, "vmbus: suspend");
                }
            }
        }
    }

    /// Starts again the device task of every channel
    /// [`suspend`](Self::suspend) stopped or [`restore`](Self::restore)
    /// brought back, over the doorbells it had (a restored channel gets
    /// new ones); a channel opened since runs on untouched. A channel its
    /// device refuses is closed; the first refusal is returned.
    pub fn resume(&mut self, host: &mut dyn VmbusHost) -> Result<(), SavedStateError> {
        let open: Vec<(u32, ChannelState, usize)> = self
            .channels
            .iter_mut()
            .filter(|(_, c)| c.state != ChannelState::Closed && c.suspended)
            .map(|(&relid, c)| {
                c.suspended = false;
                (relid, c.state, c.device.0)
            })
            .collect();
        let mut first = None;
        // A device starts a reopened primary afresh unless a restore gave
        // it a state, so each one resumed is handed its own state first:
        // its guest goes on where it was (sub-channels, pending requests).
        let mut resumed: Vec<usize> = open.iter().map(|&(_, _, device)| device).collect();
        resumed.sort_unstable();
        resumed.dedup();
        for index in resumed {
            if let Some(Some((device, _))) = self.devices.get(index) {
                if let Err(source) = device.save().and_then(|bytes| device.restore(&bytes)) {
                    tracing::warn!(index, %source, "vmbus: device state not kept across resume");
                    first.get_or_insert(SavedStateError::Device { index, source });
                }
            }
        }
        for (relid, state, device) in open {
            let ChannelState::Open {
                ring_gpadl,
                target_vp,
                downstream,
            } = state
            else {
                continue;
            };
            if let Err(refusal) = self.start_device(relid, ring_gpadl, target_vp, downstream, host)
            {
                tracing::warn!(relid, %refusal, "vmbus: channel not resumed");
                if let Some(channel) = self.channels.get_mut(&relid) {
                    channel.state = ChannelState::Closed;
                }
                let source = match refusal {
                    OpenRefusal::Device(error) => error,
                    _ => BusError::NotOpen(relid as u16),
                };
                first.get_or_insert(SavedStateError::Device {
                    index: device,
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The whole bus's state, the devices' own included. Refused while an
    /// UNLOAD or a GPADL teardown is still waiting for a device.
    pub fn save(&self) -> Result<Vec<u8>, SavedStateError> {
        if matches!(self.connection, Connection::Unloading(_)) {
            return Err(SavedStateError::Busy("an UNLOAD is being completed"));
        }
        let mut saved = SavedBus {
            link: match self.connection {
                Connection::Connected(link) => Some(SavedLink {
                    version: link.version.0,
                    target_vp: link.target_vp,
                    sint: link.sint,
                    offers_requested: link.offers_requested,
                }),
                _ => None,
            },
            offer_cursor: self.offer_cursor,
            ..SavedBus::default()
        };
        for (&relid, c) in &self.channels {
            saved.channels.push(SavedChannel {
                relid,
                device: c.device.0 as u32,
                index: c.index,
                offered: c.offered,
                rescinded: c.rescinded,
                open: match c.state {
                    ChannelState::Open {
                        ring_gpadl,
                        target_vp,
                        downstream,
                    } => Some((ring_gpadl, target_vp, downstream)),
                    ChannelState::Closed => None,
                },
            });
        }
        for (&id, g) in &self.gpadls {
            saved.gpadls.push(self.save_gpadl(id, g)?);
        }
        for m in &self.queue {
            saved.queue.push(SavedMessage {
                vp: m.vp,
                sint: m.sint,
                bytes: m.bytes().to_vec(),
            });
        }
        for (index, device) in self.devices.iter().enumerate() {
            let state = match device {
                Some((device, _)) => Some(
                    device
                        .save()
                        .map_err(|source| SavedStateError::Device { index, source })?,
                ),
                None => None,
            };
            saved.devices.push(state);
        }
        Ok(saved.encode())
    }

    fn save_gpadl(&self, id: u32, g: &GuestGpadl) -> Result<SavedGpadl, SavedStateError> {
        let state = match &g.state {
            GpadlState::Created { .. } => SavedGpadlState::Created(
                self.registry
                    .get(id)
                    .map_err(|source| SavedStateError::Gpadl { gpadl: id, source })?
                    .to_vec(),
            ),
            GpadlState::Assembling {
                range_count,
                expected,
                bytes,
            } => SavedGpadlState::Assembling {
                range_count: *range_count,
                expected: *expected as u32,
                bytes: bytes.clone(),
            },
            GpadlState::TearingDown { .. } => {
                return Err(SavedStateError::Busy("a GPADL teardown waits for a device"));
            }
        };
        Ok(SavedGpadl {
            id,
            relid: g.relid,
            state,
        })
    }

    /// A server rebuilt from [`save`](Self::save) bytes over the same guest
    /// memory, with `devices` built as before (same order); each device gets
    /// its own saved bytes. The GPADLs are registered in `registry` again.
    /// The bytes are checked like guest input. Call
    /// [`resume`](Self::resume) to restart the open channels.
    pub fn restore(
        memory: GuestMemory,
        registry: GpadlRegistry,
        config: ServerConfig,
        devices: Vec<Arc<dyn VmbusDevice>>,
        saved: &[u8],
    ) -> Result<Self, SavedStateError> {
        config.validate()?;
        let saved = SavedBus::decode(saved)?;
        if saved.devices.len() != devices.len() {
            return Err(SavedStateError::DeviceCount {
                saved: saved.devices.len(),
                given: devices.len(),
            });
        }
        let mut server = Self::new(memory, registry, config)?;
        let result = server.load(saved, devices);
        if result.is_err() {
            // Nothing half-restored stays registered.
            for &id in server.gpadls.keys() {
                let _ = server.registry.try_teardown(id);
            }
        }
        result.map(|()| server)
    }

    fn load(
        &mut self,
        saved: SavedBus,
        devices: Vec<Arc<dyn VmbusDevice>>,
    ) -> Result<(), SavedStateError> {
        for (index, (device, state)) in devices.into_iter().zip(saved.devices).enumerate() {
            let Some(state) = state else {
                self.devices.push(None);
                continue;
            };
            device
                .restore(&state)
                .map_err(|source| SavedStateError::Device { index, source })?;
            let offer = device.offer();
            self.devices.push(Some((device, offer)));
        }
        self.load_link(saved.link, saved.offer_cursor)?;
        for gpadl in saved.gpadls {
            self.load_gpadl(gpadl)?;
        }
        for channel in saved.channels {
            self.load_channel(channel)?;
        }
        // A GPADL is made for an offered channel and goes with it; one
        // still being built is discarded when the channel is rescinded.
        for (&id, g) in &self.gpadls {
            let building = matches!(g.state, GpadlState::Assembling { .. });
            if self
                .channels
                .get(&g.relid)
                .is_none_or(|c| !c.offered || (building && c.rescinded))
            {
                return Err(SavedStateError::BadField {
                    field: "GPADL channel",
                    value: id.into(),
                });
            }
        }
        self.load_queue(saved.queue)
    }

    fn load_link(
        &mut self,
        link: Option<SavedLink>,
        cursor: Option<u32>,
    ) -> Result<(), SavedStateError> {
        let bad = |field, value: u64| SavedStateError::BadField { field, value };
        if let Some(link) = link {
            if !Version::SUPPORTED.contains(&Version(link.version)) {
                return Err(bad("version", link.version.into()));
            }
            if link.sint >= 16 {
                return Err(bad("sint", link.sint.into()));
            }
            if link.target_vp >= self.config.vp_count {
                return Err(bad("link vCPU", link.target_vp.into()));
            }
            self.connection = Connection::Connected(Link {
                version: Version(link.version),
                target_vp: link.target_vp,
                sint: link.sint,
                offers_requested: link.offers_requested,
            });
        }
        if let Some(cursor) = cursor {
            // The cursor runs only between REQUEST_OFFERS and
            // ALLOFFERS_DELIVERED of a connection.
            let requested = link.is_some_and(|l| l.offers_requested);
            if !requested || cursor == 0 || cursor > self.config.max_channels + 1 {
                return Err(bad("offer cursor", cursor.into()));
            }
        }
        self.offer_cursor = cursor;
        Ok(())
    }

    fn load_gpadl(&mut self, g: SavedGpadl) -> Result<(), SavedStateError> {
        let bad = |field, value: u64| SavedStateError::BadField { field, value };
        if self.gpadls.len() >= self.config.max_gpadls || self.gpadls.contains_key(&g.id) {
            return Err(bad("GPADL id", g.id.into()));
        }
        // GPADLs are made over a connection and all gone when it ends.
        if !matches!(self.connection, Connection::Connected(_)) {
            return Err(bad("GPADL without a connection", g.id.into()));
        }
        let state = match g.state {
            SavedGpadlState::Created(pages) => {
                let count = pages.len() as u64;
                if count > u64::from(self.config.max_gpadl_pages)
                    || self.total_pages + count > self.config.max_total_gpadl_pages
                {
                    return Err(bad("GPADL pages", count));
                }
                self.registry
                    .register(&self.memory, g.id, pages)
                    .map_err(|source| SavedStateError::Gpadl {
                        gpadl: g.id,
                        source,
                    })?;
                self.total_pages += count;
                GpadlState::Created { pages: count }
            }
            SavedGpadlState::Assembling {
                range_count,
                expected,
                bytes,
            } => {
                // The same bounds a GPADL_HEADER and its bodies are held to.
                let pages = expected.saturating_sub(8 * u32::from(range_count)) / 8;
                if range_count != 1
                    || expected > u32::from(u16::MAX)
                    || expected < 16
                    || expected % 8 != 0
                    || bytes.len() % 8 != 0
                    || bytes.len() >= expected as usize
                    || pages > self.config.max_gpadl_pages
                    || self.assembling >= self.config.max_assembling
                {
                    return Err(bad("GPADL assembly", expected.into()));
                }
                self.assembling += 1;
                GpadlState::Assembling {
                    range_count,
                    expected: expected as usize,
                    bytes,
                }
            }
        };
        self.gpadls.insert(
            g.id,
            GuestGpadl {
                relid: g.relid,
                state,
            },
        );
        Ok(())
    }

    fn load_channel(&mut self, c: SavedChannel) -> Result<(), SavedStateError> {
        let bad = |field, value: u64| SavedStateError::BadField { field, value };
        if c.relid == 0
            || c.relid > self.config.max_channels
            || self.channels.contains_key(&c.relid)
        {
            return Err(bad("relid", c.relid.into()));
        }
        let present = self
            .devices
            .get(c.device as usize)
            .is_some_and(Option::is_some);
        if c.device as usize >= self.devices.len() || (!present && !c.rescinded) {
            return Err(bad("channel device", c.device.into()));
        }
        let max_index = match self.devices.get(c.device as usize) {
            Some(Some((_, offer))) => offer.max_sub_channels,
            _ => u16::MAX,
        };
        if c.index > max_index {
            return Err(bad("sub-channel index", c.index.into()));
        }
        // Without a connection nothing is offered: offers, rescinds and
        // sub-channels are forgotten with it.
        let connected = matches!(self.connection, Connection::Connected(_));
        if !connected && (c.offered || c.rescinded || c.index != 0) {
            return Err(bad("channel state without a connection", c.relid.into()));
        }
        if c.rescinded && !c.offered {
            return Err(bad("rescinded channel never offered", c.relid.into()));
        }
        let state = match c.open {
            None => ChannelState::Closed,
            Some((ring_gpadl, target_vp, downstream)) => {
                // Only an offered, live channel of a connection is open
                // (a rescind closes it).
                if !c.offered || c.rescinded || !present {
                    return Err(bad("open channel", c.relid.into()));
                }
                if target_vp >= self.config.vp_count {
                    return Err(bad("channel vCPU", target_vp.into()));
                }
                let ring_ok = self.gpadls.get(&ring_gpadl).is_some_and(|g| {
                    g.relid == c.relid && matches!(g.state, GpadlState::Created { .. })
                });
                let ring_taken = self.channels.values().any(|other| {
                    matches!(other.state, ChannelState::Open { ring_gpadl: r, .. } if r == ring_gpadl)
                });
                if !ring_ok || ring_taken {
                    return Err(bad("ring GPADL", ring_gpadl.into()));
                }
                ChannelState::Open {
                    ring_gpadl,
                    target_vp,
                    downstream,
                }
            }
        };
        self.channels.insert(
            c.relid,
            Channel {
                device: DeviceId(c.device as usize),
                index: c.index,
                offered: c.offered,
                rescinded: c.rescinded,
                state,
                // Its task starts on resume, with doorbells routed afresh
                // by the VMM restored into.
                doorbells: None,
                suspended: state != ChannelState::Closed,
            },
        );
        Ok(())
    }

    fn load_queue(&mut self, queue: Vec<SavedMessage>) -> Result<(), SavedStateError> {
        // The bound the queue keeps while running; without a connection it
        // holds at most the answer to the last contact or UNLOAD.
        let limit = match self.connection {
            Connection::Connected(_) => self.config.queue_bound(),
            _ => 1,
        };
        if queue.len() > limit {
            return Err(SavedStateError::BadField {
                field: "queue length",
                value: queue.len() as u64,
            });
        }
        for m in queue {
            if m.bytes.len() < size_of::<MessageHeader>() || m.bytes.len() > MAX_MESSAGE_LEN {
                return Err(SavedStateError::BadField {
                    field: "queued message length",
                    value: m.bytes.len() as u64,
                });
            }
            if m.sint >= 16 {
                return Err(SavedStateError::BadField {
                    field: "queued message SINT",
                    value: m.sint.into(),
                });
            }
            if m.vp >= self.config.vp_count {
                return Err(SavedStateError::BadField {
                    field: "queued message vCPU",
                    value: m.vp.into(),
                });
            }
            let mut message = HostMessage {
                vp: m.vp,
                sint: m.sint,
                len: m.bytes.len() as u8,
                bytes: [0; MAX_MESSAGE_LEN],
            };
            message.bytes[..m.bytes.len()].copy_from_slice(&m.bytes);
            self.queue.push_back(message);
        }
        Ok(())
    }
}
