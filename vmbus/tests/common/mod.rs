//! What the tests of the control plane share: a VMM stand-in
//! ([`TestHost`]) that records what the server posts and runs device tasks
//! on threads, a device that only holds its ring until closed ([`Parked`]),
//! and builders of guest messages laid out the way a Linux guest sends them.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures_lite::future::{block_on, poll_once};
use vmbdev_device::bus::{
    BusError, ChannelError, ChannelTask, Guid, Offer, OpenRequest, PipeMode, SubChannelControl,
    VmbusDevice,
};
use vmbdev_ring::{Doorbell, EventDoorbell, GpadlRegistry, GuestMemory, PAGE_SIZE, StopSignal};
use vmbdev_vmbus::protocol::{
    GpadlBody, GpadlHeader, GpadlTeardown, InitiateContact, MessageHeader, MessageType,
    ModifyChannel, OfferChannel, OpenChannel, RelidMessage, Version,
};
use vmbdev_vmbus::{
    ChannelDoorbells, ChannelSignal, Dropped, PostResult, Server, ServerConfig, TeardownWait,
    VmbusHost,
};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The VMM's side, recorded.
#[derive(Default)]
pub struct TestHost {
    /// While set, the guest's slot is full and every post is refused.
    pub slot_full: bool,
    /// When set, posts taken before the slot counts as full (a guest that
    /// stops draining after this many messages).
    pub room: Option<usize>,
    /// vCPUs whose SIMP is disabled: posts to them are undeliverable.
    pub unreachable_vps: Vec<u32>,
    /// Messages the guest has received, oldest first, with the vCPU.
    pub inbox: VecDeque<(u32, Vec<u8>)>,
    /// Doorbells per relid: (guest→host, host→guest).
    pub doorbells: HashMap<u32, (Arc<EventDoorbell>, Arc<EventDoorbell>)>,
    /// Device tasks per relid.
    pub tasks: HashMap<u32, JoinHandle<Result<(), ChannelError>>>,
    /// Teardowns still waiting for a device.
    pub waits: Vec<TeardownWait>,
    /// Every retarget asked for.
    pub retargets: Vec<ChannelSignal>,
    /// Relids whose doorbells were opened, in order.
    pub opened: Vec<u32>,
    /// Relids whose doorbells were closed, in order.
    pub closed: Vec<u32>,
}

impl VmbusHost for TestHost {
    fn post_message(&mut self, vp: u32, _sint: u8, message: &[u8]) -> PostResult {
        if self.unreachable_vps.contains(&vp) {
            return PostResult::Undeliverable;
        }
        if self.slot_full || self.room == Some(0) {
            return PostResult::SlotFull;
        }
        if let Some(room) = &mut self.room {
            *room -= 1;
        }
        self.inbox.push_back((vp, message.to_vec()));
        PostResult::Posted
    }

    fn open_doorbells(&mut self, signal: &ChannelSignal) -> ChannelDoorbells {
        let pair = (
            Arc::new(EventDoorbell::new()),
            Arc::new(EventDoorbell::new()),
        );
        self.doorbells.insert(signal.relid, pair.clone());
        self.opened.push(signal.relid);
        ChannelDoorbells {
            guest_to_host: pair.0,
            host_to_guest: pair.1,
        }
    }

    fn retarget(&mut self, signal: &ChannelSignal) {
        self.retargets.push(*signal);
    }

    fn close_doorbells(&mut self, relid: u32) {
        self.closed.push(relid);
    }

    fn start_channel(&mut self, relid: u32, task: ChannelTask) {
        let thread = std::thread::spawn(move || block_on(task));
        self.tasks.insert(relid, thread);
    }

    fn wait_teardown(&mut self, wait: TeardownWait) {
        self.waits.push(wait);
    }
}

/// The server, the host and guest memory together.
pub struct Rig {
    pub server: Server,
    pub host: TestHost,
    pub memory: GuestMemory,
    pub registry: GpadlRegistry,
}

impl Rig {
    /// A server over `pages` pages of fresh guest memory.
    pub fn new(pages: u64, config: ServerConfig) -> Self {
        let memory = GuestMemory::new(pages * PAGE_SIZE as u64).unwrap();
        let registry = GpadlRegistry::new();
        Self {
            server: Server::new(memory.clone(), registry.clone(), config).unwrap(),
            host: TestHost::default(),
            memory,
            registry,
        }
    }

    /// Registers a device; returns its relid.
    pub fn add(&mut self, device: Arc<dyn VmbusDevice>) -> u32 {
        self.server.add_device(device, &mut self.host).unwrap().1
    }

    /// Posts `bytes` on connection `connection_id`.
    pub fn post_on(&mut self, connection_id: u32, bytes: &[u8]) -> Result<(), Dropped> {
        self.server
            .post_message(connection_id, bytes, &mut self.host)
    }

    /// Posts `bytes` on the message connection the host handed out.
    pub fn post(&mut self, bytes: &[u8]) -> Result<(), Dropped> {
        self.post_on(1, bytes)
    }

    /// The next message the guest received, if any.
    pub fn next(&mut self) -> Option<Vec<u8>> {
        self.host.inbox.pop_front().map(|(_, m)| m)
    }

    /// The next message, which must be of type `kind`.
    pub fn expect(&mut self, kind: MessageType) -> Vec<u8> {
        let message = self.next().expect("a host message");
        assert_eq!(message_type(&message), kind, "message {message:?}");
        message
    }

    /// Asserts the guest received nothing more.
    pub fn expect_none(&mut self) {
        assert_eq!(self.next(), None);
    }

    /// Negotiates `version` as Linux does (connection 4 from 5.0 on);
    /// returns `version_supported`.
    pub fn contact(&mut self, version: Version) -> u8 {
        let connection = if version >= Version::V5_0 { 4 } else { 1 };
        self.post_on(connection, &initiate_contact(version, 0))
            .unwrap();
        let reply = self.expect(MessageType::VERSION_RESPONSE);
        reply[8]
    }

    /// INITIATE_CONTACT 5.3 then REQUESTOFFERS; returns the offers.
    pub fn connect(&mut self) -> Vec<OfferChannel> {
        assert_eq!(self.contact(Version::V5_3), 1);
        self.post(&header(MessageType::REQUEST_OFFERS)).unwrap();
        let mut offers = Vec::new();
        loop {
            let message = self.next().expect("offers, then ALLOFFERS_DELIVERED");
            if message_type(&message) == MessageType::ALL_OFFERS_DELIVERED {
                return offers;
            }
            offers.push(OfferChannel::read_from_bytes(&message).unwrap());
        }
    }

    /// REQUESTOFFERS on a connection already made; returns how many offers
    /// came before ALLOFFERS_DELIVERED.
    pub fn connect_offers(&mut self) -> usize {
        self.post(&header(MessageType::REQUEST_OFFERS)).unwrap();
        let mut offers = 0;
        while message_type(&self.next().expect("offers")) != MessageType::ALL_OFFERS_DELIVERED {
            offers += 1;
        }
        offers
    }

    /// Creates a GPADL over `pages` split as Linux splits it; returns the
    /// GPADL_CREATED status.
    pub fn create_gpadl(&mut self, relid: u32, gpadl: u32, pages: &[u64]) -> u32 {
        for message in gpadl_messages(relid, gpadl, pages) {
            self.post(&message).unwrap();
        }
        created_status(&self.expect(MessageType::GPADL_CREATED), relid, gpadl)
    }

    /// OPENCHANNEL; returns the OPENCHANNEL_RESULT status.
    pub fn open(&mut self, relid: u32, gpadl: u32, downstream: u32) -> u32 {
        self.post(&open_channel(relid, 7, gpadl, downstream, 0))
            .unwrap();
        let reply = self.expect(MessageType::OPEN_CHANNEL_RESULT);
        assert_eq!(u32_at(&reply, 8), relid);
        assert_eq!(u32_at(&reply, 12), 7, "open id echoed");
        u32_at(&reply, 16)
    }

    /// Waits for the device task of `relid` to end.
    pub fn join(&mut self, relid: u32) -> Result<(), ChannelError> {
        let task = self.host.tasks.remove(&relid).expect("a device task");
        task.join().unwrap()
    }

    /// Hands every finished teardown wait back to the server; returns how
    /// many are still waiting.
    pub fn settle_teardowns(&mut self) -> usize {
        let waits = std::mem::take(&mut self.host.waits);
        for mut wait in waits {
            match block_on(poll_once(&mut wait)) {
                Some(released) => self.server.teardown_complete(released, &mut self.host),
                None => self.host.waits.push(wait),
            }
        }
        self.host.waits.len()
    }

    /// Blocks until every teardown wait completed.
    pub fn finish_teardowns(&mut self) {
        while let Some(wait) = self.host.waits.pop() {
            let released = block_on(wait);
            self.server.teardown_complete(released, &mut self.host);
        }
    }
}

/// A device that serves nothing: its task holds the ring until closed.
#[derive(Default)]
pub struct Parked {
    pub stops: Mutex<HashMap<u16, Arc<StopSignal>>>,
    pub opens: Mutex<u32>,
    /// Sub-channels it offers beside the primary.
    pub max_sub_channels: u16,
    /// The sub-channel control of its last open.
    pub sub_channels: Mutex<Option<Arc<dyn SubChannelControl>>>,
}

impl VmbusDevice for Parked {
    fn offer(&self) -> Offer {
        Offer {
            interface_id: Guid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888),
            instance_id: Guid::from_u128(0x9999_aaaa_bbbb_cccc_dddd_eeee_ffff_0000),
            pipe_mode: PipeMode::None,
            incoming_ring_pages: 1,
            outgoing_ring_pages: 1,
            max_sub_channels: self.max_sub_channels,
            name: "parked".into(),
        }
    }

    fn open(&self, index: u16, request: OpenRequest) -> Result<ChannelTask, BusError> {
        let stop = Arc::new(StopSignal::new());
        let mut stops = self.stops.lock().unwrap();
        if stops.get(&index).is_some_and(|s| !s.is_stopped()) {
            return Err(BusError::AlreadyOpen(index));
        }
        stops.insert(index, stop.clone());
        *self.opens.lock().unwrap() += 1;
        *self.sub_channels.lock().unwrap() = Some(request.sub_channels.clone());
        Ok(Box::pin(async move {
            stop.wait().await;
            drop(request);
            Ok(())
        }))
    }

    fn close(&self, index: u16) -> Result<(), BusError> {
        let stops = self.stops.lock().unwrap();
        let stop = stops.get(&index).ok_or(BusError::NotOpen(index))?;
        stop.stop();
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, BusError> {
        Ok(Vec::new())
    }

    fn restore(&self, _saved: &[u8]) -> Result<(), BusError> {
        Ok(())
    }
}

pub fn message_type(message: &[u8]) -> MessageType {
    MessageType(u32_at(message, 0))
}

pub fn u32_at(message: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(message[at..at + 4].try_into().unwrap())
}

/// The status of a GPADL_CREATED for `relid`/`gpadl`.
pub fn created_status(message: &[u8], relid: u32, gpadl: u32) -> u32 {
    assert_eq!(message_type(message), MessageType::GPADL_CREATED);
    assert_eq!((u32_at(message, 8), u32_at(message, 12)), (relid, gpadl));
    u32_at(message, 16)
}

pub fn header(kind: MessageType) -> Vec<u8> {
    MessageHeader::new(kind).as_bytes().to_vec()
}

pub fn initiate_contact(version: Version, vp: u32) -> Vec<u8> {
    InitiateContact {
        header: MessageHeader::new(MessageType::INITIATE_CONTACT),
        version_requested: U32::new(version.0),
        target_vcpu: U32::new(vp),
        // From 5.0 the low byte is the message SINT (2).
        interrupt_page_or_sint: U64::new(2),
        monitor_page1: U64::ZERO,
        monitor_page2: U64::ZERO,
    }
    .as_bytes()
    .to_vec()
}

/// Page numbers a GPADL_HEADER carries after its one range header, and a
/// GPADL_BODY carries: what fits in 240 bytes.
pub const HEADER_PFNS: usize = (240 - 20 - 8) / 8;
pub const BODY_PFNS: usize = (240 - 16) / 8;

/// The messages of a one-range GPADL over whole `pages`, split as Linux
/// splits it.
pub fn gpadl_messages(relid: u32, gpadl: u32, pages: &[u64]) -> Vec<Vec<u8>> {
    let byte_count = (pages.len() * PAGE_SIZE) as u32;
    let buflen = 8 + 8 * pages.len() as u16;
    gpadl_messages_raw(relid, gpadl, buflen, 1, byte_count, 0, pages)
}

/// The messages of a GPADL with every field given.
pub fn gpadl_messages_raw(
    relid: u32,
    gpadl: u32,
    range_buflen: u16,
    range_count: u16,
    byte_count: u32,
    byte_offset: u32,
    pfns: &[u64],
) -> Vec<Vec<u8>> {
    let first = pfns.len().min(HEADER_PFNS);
    let mut message = GpadlHeader {
        header: MessageHeader::new(MessageType::GPADL_HEADER),
        child_relid: U32::new(relid),
        gpadl: U32::new(gpadl),
        range_buflen: U16::new(range_buflen),
        range_count: U16::new(range_count),
    }
    .as_bytes()
    .to_vec();
    message.extend_from_slice(&byte_count.to_le_bytes());
    message.extend_from_slice(&byte_offset.to_le_bytes());
    push_pfns(&mut message, &pfns[..first]);
    let mut messages = vec![message];
    for (i, chunk) in pfns[first..].chunks(BODY_PFNS).enumerate() {
        messages.push(gpadl_body(i as u32 + 1, gpadl, chunk));
    }
    messages
}

pub fn gpadl_body(number: u32, gpadl: u32, pfns: &[u64]) -> Vec<u8> {
    let mut message = GpadlBody {
        header: MessageHeader::new(MessageType::GPADL_BODY),
        message_number: U32::new(number),
        gpadl: U32::new(gpadl),
    }
    .as_bytes()
    .to_vec();
    push_pfns(&mut message, pfns);
    message
}

fn push_pfns(message: &mut Vec<u8>, pfns: &[u64]) {
    for pfn in pfns {
        message.extend_from_slice(&pfn.to_le_bytes());
    }
}

pub fn open_channel(relid: u32, open_id: u32, gpadl: u32, downstream: u32, vp: u32) -> Vec<u8> {
    OpenChannel {
        header: MessageHeader::new(MessageType::OPEN_CHANNEL),
        child_relid: U32::new(relid),
        open_id: U32::new(open_id),
        ring_gpadl: U32::new(gpadl),
        target_vp: U32::new(vp),
        downstream_page_offset: U32::new(downstream),
        user_data: [0; 120],
    }
    .as_bytes()
    .to_vec()
}

pub fn relid_message(kind: MessageType, relid: u32) -> Vec<u8> {
    RelidMessage {
        header: MessageHeader::new(kind),
        child_relid: U32::new(relid),
    }
    .as_bytes()
    .to_vec()
}

pub fn teardown(relid: u32, gpadl: u32) -> Vec<u8> {
    GpadlTeardown {
        header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
        child_relid: U32::new(relid),
        gpadl: U32::new(gpadl),
    }
    .as_bytes()
    .to_vec()
}

pub fn modify(relid: u32, vp: u32) -> Vec<u8> {
    ModifyChannel {
        header: MessageHeader::new(MessageType::MODIFY_CHANNEL),
        child_relid: U32::new(relid),
        target_vp: U32::new(vp),
    }
    .as_bytes()
    .to_vec()
}

/// A doorbell as the trait object a ring endpoint takes.
pub fn bell(bell: &Arc<EventDoorbell>) -> Arc<dyn Doorbell> {
    bell.clone()
}
