//! The client state machine: what a Linux-like guest sends, in which order,
//! and how it takes the host's answers out of its SIMP slot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;

use vmbdev_protocol::vmbfs::Guid;
use vmbdev_protocol::vmbus::{
    CHANNEL_FLAG_NAMED_PIPE, GPADL_BODY_MAX_PFNS, GPADL_HEADER_MAX_PFNS, GpadlBody, GpadlCreated,
    GpadlHeader, GpadlTeardown, GpadlTorndown, InitiateContact, MAX_MESSAGE_LEN,
    MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, MessageHeader, MessageType, OfferChannel,
    OpenChannel, OpenResult, RelidMessage, SLOT_FLAG_PENDING, SLOT_PAYLOAD_OFFSET, SLOT_SIZE,
    SLOT_TYPE_CHANNEL_MESSAGE, SLOT_TYPE_NONE, STATUS_SUCCESS, VMBUS_SINT, Version,
    VersionResponse,
};
use vmbdev_ring::{GuestMemory, MemoryError, PAGE_SIZE};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::trace::{Direction, TraceEntry, describe, message_type, type_name, version_text};

/// The versions Linux 6.1 asks for, in the order it asks.
pub const LINUX_VERSIONS: [Version; 8] = [
    Version::V5_3,
    Version::V5_2,
    Version::V5_1,
    Version::V5_0,
    Version::WIN10_4_1,
    Version::WIN10,
    Version::WIN8_1,
    Version::WIN8,
];

/// The first GPADL handle Linux hands out; later ones count up from it.
pub const FIRST_GPADL_HANDLE: u32 = 0xE1E10;

/// Most host messages the client keeps that arrived while it waited for
/// another one; past that the oldest is dropped (a host that floods the
/// guest with unrequested replies costs bounded memory).
const MAX_BACKLOG: usize = 64;

/// Most pages one GPADL can describe: `range_buflen` is a u16 holding the
/// 8-byte range header and 8 bytes per page.
const MAX_GPADL_PAGES: usize = (u16::MAX as usize - 8) / 8;

/// Why a transport could not do what the client asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// How the client reaches the host: the hypercall that posts a message and
/// the interrupt that says one arrived, plus the pages the host writes.
pub trait VmbusTransport {
    /// HvPostMessage: posts `message` on `connection_id`. An `Err` is the
    /// hypercall failing (for example an invalid connection id).
    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), TransportError>;

    /// Guest memory holding the SIMP page.
    fn memory(&self) -> &GuestMemory;

    /// Guest-physical address of the SIMP page of the vCPU the client
    /// takes messages on.
    fn simp_page(&self) -> u64;

    /// The guest wrote EOM: the host may deliver the next message.
    fn eom(&mut self);

    /// Blocks until the VMBus SINT is raised again (or anything else
    /// happened that may have filled the slot). An `Err` means no message
    /// will ever come, so the client stops waiting.
    fn wait_interrupt(&mut self) -> Result<(), TransportError>;
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmbusError {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The SIMP slot could not be read or cleared.
    #[error("SIMP slot at {gpa:#x}: {source}")]
    Slot {
        /// Address of the slot.
        gpa: u64,
        /// What the memory said.
        source: MemoryError,
    },
    /// The host answered every version Linux asks for with
    /// `version_supported = 0` (or refused the post).
    #[error("the host refused every version asked for ({})", versions(.tried))]
    VersionsRefused {
        /// The versions asked, in order.
        tried: Vec<Version>,
    },
    /// An operation needs a connection first.
    #[error("not connected: INITIATE_CONTACT has not succeeded")]
    NotConnected,
    /// A host message is shorter than its type needs.
    #[error("{} of {len} bytes is shorter than the {need} its type needs", type_name(*.message_type))]
    ShortMessage {
        /// Its type.
        message_type: MessageType,
        /// Its length.
        len: usize,
        /// What the type needs.
        need: usize,
    },
    /// No offer has this relid.
    #[error("no offer has relid {0}")]
    UnknownRelid(u32),
    /// The host rescinded the offer.
    #[error("relid {0} was rescinded")]
    Rescinded(u32),
    /// The channel is already open.
    #[error("relid {0} is already open")]
    AlreadyOpen(u32),
    /// The channel is not open.
    #[error("relid {0} is not open")]
    NotOpen(u32),
    /// The GPADL handle is not one this client created.
    #[error("no GPADL {0:#x}")]
    UnknownGpadl(u32),
    /// A GPADL needs at least one page and at most what `range_buflen`
    /// can describe.
    #[error("a GPADL of {pages} pages (1..={MAX_GPADL_PAGES} allowed)")]
    GpadlSize {
        /// Pages asked for.
        pages: usize,
    },
    /// GPADL_CREATED carried a failure status.
    #[error("GPADL {gpadl:#x} for relid {relid} refused: status {status:#x}")]
    GpadlRefused {
        /// The channel.
        relid: u32,
        /// The GPADL.
        gpadl: u32,
        /// The host's status.
        status: u32,
    },
    /// OPENCHANNEL_RESULT carried a failure status.
    #[error("OPENCHANNEL of relid {relid} refused: status {status:#x}")]
    OpenRefused {
        /// The channel.
        relid: u32,
        /// The host's status.
        status: u32,
    },
    /// No offer of the instance with this sub-channel index arrived.
    #[error("no offer of instance {instance} sub-channel {index}")]
    NoSuchOffer {
        /// The device instance.
        instance: Guid,
        /// The sub-channel index.
        index: u16,
    },
}

fn versions(tried: &[Version]) -> String {
    let list: Vec<String> = tried.iter().map(|v| version_text(v.0)).collect();
    list.join(", ")
}

/// What the client is told about the guest it runs in.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// vCPU the host posts control messages to (Linux: the VMBus connect
    /// CPU, VP 0).
    pub target_vcpu: u32,
    /// Before 5.0: the interrupt page's address given in INITIATE_CONTACT.
    pub interrupt_page: u64,
    /// The versions asked for, in order (Linux's by default).
    pub versions: Vec<Version>,
    /// Record every message sent and received ([`VmbusClient::trace`]).
    pub trace: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            target_vcpu: 0,
            interrupt_page: 0,
            versions: LINUX_VERSIONS.to_vec(),
            trace: false,
        }
    }
}

/// A channel the host offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedChannel {
    /// Its relid.
    pub relid: u32,
    /// Interface (class) GUID.
    pub interface_id: Guid,
    /// Instance GUID (shared by a device's sub-channels).
    pub instance_id: Guid,
    /// 0 for a primary channel.
    pub sub_channel_index: u16,
    /// What HvSignalEvent takes for the channel.
    pub connection_id: u32,
    /// The pipe mode, for a named-pipe channel.
    pub pipe_mode: Option<u32>,
    /// The host withdrew the offer.
    pub rescinded: bool,
}

impl OfferedChannel {
    fn from_wire(message: &OfferChannel) -> Self {
        let offer = &message.offer;
        let pipe_mode = (offer.flags.get() & CHANNEL_FLAG_NAMED_PIPE != 0).then(|| {
            let mut mode = [0; 4];
            mode.copy_from_slice(&offer.user_defined[..4]);
            u32::from_le_bytes(mode)
        });
        Self {
            relid: message.child_relid.get(),
            interface_id: offer.interface_id,
            instance_id: offer.instance_id,
            sub_channel_index: offer.sub_channel_index.get(),
            connection_id: message.connection_id.get(),
            pipe_mode,
            rescinded: false,
        }
    }
}

/// A Linux-like VMBus client over transport `T`.
pub struct VmbusClient<T> {
    transport: T,
    config: ClientConfig,
    version: Option<Version>,
    message_connection_id: u32,
    offers: BTreeMap<u32, OfferedChannel>,
    offers_delivered: bool,
    next_gpadl: u32,
    /// GPADL handle → relid.
    gpadls: HashMap<u32, u32>,
    /// Open relids.
    open: BTreeMap<u32, ()>,
    backlog: VecDeque<Vec<u8>>,
    trace: Vec<TraceEntry>,
}

impl<T> std::fmt::Debug for VmbusClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusClient")
            .field("version", &self.version)
            .field("offers", &self.offers.len())
            .field("gpadls", &self.gpadls.len())
            .finish_non_exhaustive()
    }
}

/// Reads the fixed part `M` of a host message.
fn parse<M: FromBytes + KnownLayout + Immutable>(message: &[u8]) -> Result<M, VmbusError> {
    M::read_from_prefix(message)
        .map(|(m, _)| m)
        .map_err(|_| VmbusError::ShortMessage {
            message_type: message_type(message).unwrap_or(MessageType(0)),
            len: message.len(),
            need: size_of::<M>(),
        })
}

impl<T: VmbusTransport> VmbusClient<T> {
    /// A client over `transport`, not connected yet.
    pub fn new(transport: T, config: ClientConfig) -> Self {
        Self {
            transport,
            config,
            version: None,
            message_connection_id: MESSAGE_CONNECTION_ID,
            offers: BTreeMap::new(),
            offers_delivered: false,
            next_gpadl: FIRST_GPADL_HANDLE,
            gpadls: HashMap::new(),
            open: BTreeMap::new(),
            backlog: VecDeque::new(),
            trace: Vec::new(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The agreed version, while connected.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The connection id messages are posted on now.
    pub fn message_connection_id(&self) -> u32 {
        self.message_connection_id
    }

    /// Every offer seen (rescinded ones until released), by relid.
    pub fn offers(&self) -> impl Iterator<Item = &OfferedChannel> {
        self.offers.values()
    }

    /// The offer of `relid`.
    pub fn offer(&self, relid: u32) -> Option<&OfferedChannel> {
        self.offers.get(&relid)
    }

    /// Whether `relid` is open.
    pub fn is_open(&self, relid: u32) -> bool {
        self.open.contains_key(&relid)
    }

    /// GPADLs created and not torn down.
    pub fn gpadl_count(&self) -> usize {
        self.gpadls.len()
    }

    /// Whether `gpadl` was created and not torn down (nor forgotten with a
    /// rescinded channel).
    pub fn has_gpadl(&self, gpadl: u32) -> bool {
        self.gpadls.contains_key(&gpadl)
    }

    /// What was sent and received so far, if tracing is on.
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    /// Takes the trace recorded so far.
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        std::mem::take(&mut self.trace)
    }

    fn post(&mut self, connection_id: u32, message: &[u8]) -> Result<(), VmbusError> {
        if self.config.trace {
            self.trace.push(TraceEntry {
                direction: Direction::ToHost,
                connection_id: Some(connection_id),
                message_type: message_type(message).unwrap_or(MessageType(0)),
                text: describe(message),
            });
        }
        tracing::trace!(connection_id, message = %describe(message), "vmbus client: post");
        Ok(self.transport.post_message(connection_id, message)?)
    }

    fn send(&mut self, message: &[u8]) -> Result<(), VmbusError> {
        self.post(self.message_connection_id, message)
    }

    fn connected(&self) -> Result<(), VmbusError> {
        self.version.map(|_| ()).ok_or(VmbusError::NotConnected)
    }

    /// Takes the message in the VMBus SINT's slot, if there is one: copies
    /// it, empties the slot and writes EOM if the host has more.
    fn take_slot(&mut self) -> Result<Option<Vec<u8>>, VmbusError> {
        let gpa = self.transport.simp_page() + u64::from(VMBUS_SINT) * SLOT_SIZE;
        let memory = self.transport.memory();
        let slot_error = |source| VmbusError::Slot { gpa, source };
        let head = memory
            .load_u64(gpa, Ordering::Acquire)
            .map_err(slot_error)?;
        let kind = head as u32;
        if kind == SLOT_TYPE_NONE {
            return Ok(None);
        }
        let len = usize::from((head >> 32) as u8).min(MAX_MESSAGE_LEN);
        let mut payload = vec![0; len];
        memory
            .read(gpa + SLOT_PAYLOAD_OFFSET, &mut payload)
            .map_err(slot_error)?;
        // Emptying the slot and reading its flags in one step, so a
        // pending flag the host sets meanwhile is not missed.
        let old = memory
            .fetch_and_u64(gpa, !u64::from(u32::MAX), Ordering::SeqCst)
            .map_err(slot_error)?;
        if (old >> 40) as u8 & SLOT_FLAG_PENDING != 0 {
            self.transport.eom();
        }
        if kind != SLOT_TYPE_CHANNEL_MESSAGE {
            tracing::debug!(kind, "vmbus client: not a channel message, skipped");
            return Ok(Some(Vec::new()));
        }
        if self.config.trace {
            self.trace.push(TraceEntry {
                direction: Direction::ToGuest,
                connection_id: None,
                message_type: message_type(&payload).unwrap_or(MessageType(0)),
                text: describe(&payload),
            });
        }
        tracing::trace!(message = %describe(&payload), "vmbus client: received");
        Ok(Some(payload))
    }

    /// The next host message, waiting for the SINT while the slot is empty.
    fn receive(&mut self) -> Result<Vec<u8>, VmbusError> {
        loop {
            match self.take_slot()? {
                Some(message) if message.is_empty() => {}
                Some(message) => return Ok(message),
                None => self.transport.wait_interrupt()?,
            }
        }
    }

    /// Handles what the host sends on its own (offers, rescinds); returns
    /// the message back if it is something else.
    fn absorb(&mut self, message: Vec<u8>) -> Result<Option<Vec<u8>>, VmbusError> {
        match message_type(&message) {
            Some(MessageType::OFFER_CHANNEL) => {
                let offer = OfferedChannel::from_wire(&parse::<OfferChannel>(&message)?);
                self.offers.insert(offer.relid, offer);
                Ok(None)
            }
            Some(MessageType::RESCIND_CHANNEL_OFFER) => {
                let relid = parse::<RelidMessage>(&message)?.child_relid.get();
                self.rescinded(relid)?;
                Ok(None)
            }
            Some(MessageType::ALL_OFFERS_DELIVERED) => {
                self.offers_delivered = true;
                Ok(Some(message))
            }
            _ => Ok(Some(message)),
        }
    }

    /// An offer was withdrawn. Linux releases the relid once nothing uses
    /// the channel: at once if it is closed, else when its user closes it
    /// (sending neither CLOSECHANNEL nor GPADL_TEARDOWN then, since the
    /// host dropped both).
    fn rescinded(&mut self, relid: u32) -> Result<(), VmbusError> {
        let Some(offer) = self.offers.get_mut(&relid) else {
            tracing::debug!(relid, "vmbus client: rescind of an unknown relid");
            return Ok(());
        };
        offer.rescinded = true;
        if !self.open.contains_key(&relid) {
            self.release(relid)?;
        }
        Ok(())
    }

    fn release(&mut self, relid: u32) -> Result<(), VmbusError> {
        self.offers.remove(&relid);
        self.gpadls.retain(|_, r| *r != relid);
        let message = RelidMessage {
            header: MessageHeader::new(MessageType::RELID_RELEASED),
            child_relid: U32::new(relid),
        };
        self.send(message.as_bytes())
    }

    /// Waits for the first host message `pick` accepts (earlier ones that
    /// arrived meanwhile included), handling offers and rescinds on the
    /// way.
    fn wait_for(&mut self, pick: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, VmbusError> {
        if let Some(at) = self.backlog.iter().position(|m| pick(m)) {
            if let Some(message) = self.backlog.remove(at) {
                return Ok(message);
            }
        }
        loop {
            let message = self.receive()?;
            let Some(message) = self.absorb(message)? else {
                continue;
            };
            if pick(&message) {
                return Ok(message);
            }
            if self.backlog.len() == MAX_BACKLOG {
                if let Some(old) = self.backlog.pop_front() {
                    tracing::warn!(message = %describe(&old), "vmbus client: unclaimed host message dropped");
                }
            }
            self.backlog.push_back(message);
        }
    }

    /// INITIATE_CONTACT down the configured versions until the host
    /// accepts one; returns it.
    pub fn connect(&mut self) -> Result<Version, VmbusError> {
        let versions = self.config.versions.clone();
        for &version in &versions {
            // From 5.0 contact goes on connection 4 and the host says which
            // connection to use next; before, everything uses 1.
            let (connection_id, interrupt_page_or_sint) = if version >= Version::V5_0 {
                (MESSAGE_CONNECTION_ID_4, u64::from(VMBUS_SINT))
            } else {
                (MESSAGE_CONNECTION_ID, self.config.interrupt_page)
            };
            let contact = InitiateContact {
                header: MessageHeader::new(MessageType::INITIATE_CONTACT),
                version_requested: U32::new(version.0),
                target_vcpu: U32::new(self.config.target_vcpu),
                interrupt_page_or_sint: U64::new(interrupt_page_or_sint),
                monitor_page1: U64::ZERO,
                monitor_page2: U64::ZERO,
            };
            if let Err(error) = self.post(connection_id, contact.as_bytes()) {
                tracing::debug!(%error, version = %version_text(version.0), "vmbus client: contact post failed");
                continue;
            }
            let reply =
                self.wait_for(|m| message_type(m) == Some(MessageType::VERSION_RESPONSE))?;
            let reply: VersionResponse = parse(&reply)?;
            if reply.version_supported != 0 {
                self.message_connection_id = if version >= Version::V5_0 {
                    reply.message_connection_id.get()
                } else {
                    MESSAGE_CONNECTION_ID
                };
                self.version = Some(version);
                return Ok(version);
            }
        }
        Err(VmbusError::VersionsRefused { tried: versions })
    }

    /// REQUESTOFFERS, then every offer until ALLOFFERS_DELIVERED; returns
    /// the offers seen (by relid).
    pub fn request_offers(&mut self) -> Result<Vec<OfferedChannel>, VmbusError> {
        self.connected()?;
        self.offers_delivered = false;
        self.send(MessageHeader::new(MessageType::REQUEST_OFFERS).as_bytes())?;
        self.wait_for(|m| message_type(m) == Some(MessageType::ALL_OFFERS_DELIVERED))?;
        Ok(self.offers.values().cloned().collect())
    }

    /// The offer of `instance`'s channel `index`, waiting for it if it has
    /// not arrived yet (sub-channels are offered after the device asked).
    pub fn wait_offer(&mut self, instance: Guid, index: u16) -> Result<OfferedChannel, VmbusError> {
        self.connected()?;
        loop {
            let found = self.offers.values().find(|o| {
                o.instance_id == instance && o.sub_channel_index == index && !o.rescinded
            });
            if let Some(offer) = found {
                return Ok(offer.clone());
            }
            // Offers are absorbed on the way; anything else waits in the
            // backlog for whoever asked for it.
            match self.receive() {
                Ok(message) => {
                    if let Some(other) = self.absorb(message)? {
                        if self.backlog.len() < MAX_BACKLOG {
                            self.backlog.push_back(other);
                        }
                    }
                }
                Err(VmbusError::Transport(_)) => {
                    return Err(VmbusError::NoSuchOffer { instance, index });
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn live_offer(&self, relid: u32) -> Result<&OfferedChannel, VmbusError> {
        let offer = self
            .offers
            .get(&relid)
            .ok_or(VmbusError::UnknownRelid(relid))?;
        if offer.rescinded {
            return Err(VmbusError::Rescinded(relid));
        }
        Ok(offer)
    }

    /// Creates a GPADL of one range over whole `pages` for `relid`, split
    /// into GPADL_HEADER and GPADL_BODY messages as Linux splits it, and
    /// waits for GPADL_CREATED; returns the handle.
    pub fn create_gpadl(&mut self, relid: u32, pages: &[u64]) -> Result<u32, VmbusError> {
        self.connected()?;
        self.live_offer(relid)?;
        if pages.is_empty() || pages.len() > MAX_GPADL_PAGES {
            return Err(VmbusError::GpadlSize { pages: pages.len() });
        }
        let gpadl = self.next_gpadl;
        self.next_gpadl = self.next_gpadl.wrapping_add(1);
        let first = pages.len().min(GPADL_HEADER_MAX_PFNS);
        let mut header = GpadlHeader {
            header: MessageHeader::new(MessageType::GPADL_HEADER),
            child_relid: U32::new(relid),
            gpadl: U32::new(gpadl),
            // Checked above: fits in a u16.
            range_buflen: U16::new((8 + 8 * pages.len()) as u16),
            range_count: U16::new(1),
        }
        .as_bytes()
        .to_vec();
        header.extend_from_slice(&((pages.len() * PAGE_SIZE) as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        for pfn in &pages[..first] {
            header.extend_from_slice(&pfn.to_le_bytes());
        }
        self.send(&header)?;
        for chunk in pages[first..].chunks(GPADL_BODY_MAX_PFNS) {
            // Linux leaves the message number 0.
            let mut body = GpadlBody {
                header: MessageHeader::new(MessageType::GPADL_BODY),
                message_number: U32::ZERO,
                gpadl: U32::new(gpadl),
            }
            .as_bytes()
            .to_vec();
            for pfn in chunk {
                body.extend_from_slice(&pfn.to_le_bytes());
            }
            self.send(&body)?;
        }
        let reply = self.wait_for(|m| {
            message_type(m) == Some(MessageType::GPADL_CREATED)
                && GpadlCreated::read_from_prefix(m)
                    .is_ok_and(|(c, _)| c.gpadl.get() == gpadl && c.child_relid.get() == relid)
        })?;
        let status = parse::<GpadlCreated>(&reply)?.status.get();
        if status != STATUS_SUCCESS {
            return Err(VmbusError::GpadlRefused {
                relid,
                gpadl,
                status,
            });
        }
        self.gpadls.insert(gpadl, relid);
        Ok(gpadl)
    }

    /// OPENCHANNEL over ring GPADL `ring_gpadl` (host→guest half from page
    /// `downstream_page_offset`), interrupts to `target_vp`; waits for
    /// OPENCHANNEL_RESULT.
    pub fn open_channel(
        &mut self,
        relid: u32,
        ring_gpadl: u32,
        downstream_page_offset: u32,
        target_vp: u32,
    ) -> Result<(), VmbusError> {
        self.connected()?;
        self.live_offer(relid)?;
        if self.open.contains_key(&relid) {
            return Err(VmbusError::AlreadyOpen(relid));
        }
        if self.gpadls.get(&ring_gpadl) != Some(&relid) {
            return Err(VmbusError::UnknownGpadl(ring_gpadl));
        }
        let open = OpenChannel {
            header: MessageHeader::new(MessageType::OPEN_CHANNEL),
            child_relid: U32::new(relid),
            // Linux uses the relid as the open id.
            open_id: U32::new(relid),
            ring_gpadl: U32::new(ring_gpadl),
            target_vp: U32::new(target_vp),
            downstream_page_offset: U32::new(downstream_page_offset),
            user_data: [0; 120],
        };
        self.send(open.as_bytes())?;
        let reply = self.wait_for(|m| {
            message_type(m) == Some(MessageType::OPEN_CHANNEL_RESULT)
                && OpenResult::read_from_prefix(m).is_ok_and(|(r, _)| r.child_relid.get() == relid)
        })?;
        let status = parse::<OpenResult>(&reply)?.status.get();
        if status != STATUS_SUCCESS {
            return Err(VmbusError::OpenRefused { relid, status });
        }
        self.open.insert(relid, ());
        Ok(())
    }

    /// CLOSECHANNEL (no reply is expected). A rescinded channel is only
    /// released (RELID_RELEASED): the host closed it already.
    pub fn close_channel(&mut self, relid: u32) -> Result<(), VmbusError> {
        self.connected()?;
        if self.open.remove(&relid).is_none() {
            return Err(VmbusError::NotOpen(relid));
        }
        if self.offers.get(&relid).is_some_and(|o| o.rescinded) {
            return self.release(relid);
        }
        let close = RelidMessage {
            header: MessageHeader::new(MessageType::CLOSE_CHANNEL),
            child_relid: U32::new(relid),
        };
        self.send(close.as_bytes())
    }

    /// GPADL_TEARDOWN, waiting for GPADL_TORNDOWN (the host sends it once
    /// no device uses the pages).
    pub fn teardown_gpadl(&mut self, gpadl: u32) -> Result<(), VmbusError> {
        self.connected()?;
        let relid = *self
            .gpadls
            .get(&gpadl)
            .ok_or(VmbusError::UnknownGpadl(gpadl))?;
        let teardown = GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            child_relid: U32::new(relid),
            gpadl: U32::new(gpadl),
        };
        self.send(teardown.as_bytes())?;
        self.wait_for(|m| {
            message_type(m) == Some(MessageType::GPADL_TORNDOWN)
                && GpadlTorndown::read_from_prefix(m).is_ok_and(|(t, _)| t.gpadl.get() == gpadl)
        })?;
        self.gpadls.remove(&gpadl);
        Ok(())
    }

    /// Handles whatever the host sent on its own (offers, rescinds) without
    /// waiting for more.
    pub fn poll(&mut self) -> Result<(), VmbusError> {
        while let Some(message) = self.take_slot()? {
            if message.is_empty() {
                continue;
            }
            if let Some(other) = self.absorb(message)? {
                if self.backlog.len() < MAX_BACKLOG {
                    self.backlog.push_back(other);
                }
            }
        }
        Ok(())
    }

    /// UNLOAD, waiting for UNLOAD_RESPONSE (anything else arriving
    /// meanwhile is discarded, as Linux does); the client is disconnected
    /// after it and forgets every offer, GPADL and open channel.
    pub fn unload(&mut self) -> Result<(), VmbusError> {
        self.connected()?;
        self.send(MessageHeader::new(MessageType::UNLOAD).as_bytes())?;
        self.backlog.clear();
        loop {
            let message = self.receive()?;
            if message_type(&message) == Some(MessageType::UNLOAD_RESPONSE) {
                break;
            }
        }
        self.version = None;
        self.message_connection_id = MESSAGE_CONNECTION_ID;
        self.offers.clear();
        self.offers_delivered = false;
        self.gpadls.clear();
        self.open.clear();
        Ok(())
    }
}
