//! The guest VMBus client of `vmbdev-guest` against the real server through
//! the software SynIC: version negotiation with Linux's order and
//! connection ids, offers of the workspace's devices, GPADLs split into a
//! header and bodies, open/close/teardown, sub-channel offers that come
//! later, rescind, unload, and a host that refuses every version.

mod common;

use std::sync::Arc;

use common::*;
use futures_lite::future::block_on;
use vmbdev_device::bus::VmbusDevice;
use vmbdev_device::storvsp::{Controller, StorvspConfig, StorvspDevice};
use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_guest::vmbus::{
    ClientConfig, LINUX_VERSIONS, TransportError, VmbusClient, VmbusError, VmbusTransport,
};
use vmbdev_ring::{GuestMemory, PAGE_SIZE};
use vmbdev_vmbus::protocol::{MessageType, PIPE_MODE_MESSAGE, Version};
use vmbdev_vmbus::{Dropped, Server, ServerConfig, Synic, SynicHost};

const SIMP: u64 = 2 * PAGE_SIZE as u64;

/// The real server behind a software SynIC, as the client's transport;
/// every post is recorded.
struct Loop {
    server: Server,
    host: SynicHost<TestHost>,
    memory: GuestMemory,
    registry: vmbdev_ring::GpadlRegistry,
    posts: Vec<(u32, Vec<u8>)>,
}

impl Loop {
    fn new() -> Self {
        let rig = Rig::new(2048, ServerConfig::default());
        let mut synic = Synic::new(rig.memory.clone(), 1);
        synic.set_simp(0, Some(SIMP)).unwrap();
        Self {
            server: rig.server,
            host: SynicHost::new(synic, TestHost::default()),
            memory: rig.memory,
            registry: rig.registry,
            posts: Vec::new(),
        }
    }

    fn posted_types(&self) -> Vec<MessageType> {
        self.posts.iter().map(|(_, m)| message_type(m)).collect()
    }
}

impl VmbusTransport for Loop {
    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), TransportError> {
        self.posts.push((connection_id, message.to_vec()));
        match self
            .server
            .post_message(connection_id, message, &mut self.host)
        {
            // HvPostMessage fails only on a bad connection id; anything
            // else the host drops is silence to the guest.
            Err(Dropped::WrongConnection) => Err(TransportError("invalid connection id".into())),
            _ => Ok(()),
        }
    }

    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn simp_page(&self) -> u64 {
        SIMP
    }

    fn eom(&mut self) {
        self.host.eom(&mut self.server);
    }

    fn wait_interrupt(&mut self) -> Result<(), TransportError> {
        // In process only a finished teardown or a device's sub-channel
        // request can make the host speak unasked.
        let waits = std::mem::take(&mut self.host.inner.waits);
        let offered = self.server.offer_sub_channels(&mut self.host);
        if waits.is_empty() && offered == 0 {
            return Err(TransportError("the host has nothing more to send".into()));
        }
        for wait in waits {
            let released = block_on(wait);
            self.server.teardown_complete(released, &mut self.host);
        }
        Ok(())
    }
}

fn client(transport: Loop) -> VmbusClient<Loop> {
    VmbusClient::new(transport, ClientConfig::default())
}

fn vmbfs_device() -> Arc<VmbfsDevice> {
    let mut tree = MemoryTree::builder();
    tree.add_file("a.txt", b"a".to_vec()).unwrap();
    Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree: Arc::new(tree.build()),
        rdma_enabled: false,
    }))
}

fn u16_at(message: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([message[at], message[at + 1]])
}

#[test]
fn connect_asks_5_3_on_connection_4_then_offers_come_on_the_host_connection() {
    let mut bus = Loop::new();
    let vmbfs = vmbfs_device();
    let storvsp = Arc::new(
        StorvspDevice::new(StorvspConfig::default(), Arc::new(Controller::new())).unwrap(),
    );
    bus.server.add_device(vmbfs.clone(), &mut bus.host).unwrap();
    bus.server
        .add_device(storvsp.clone(), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    assert_eq!(client.connect().unwrap(), Version::V5_3);
    assert_eq!(client.message_connection_id(), 1);
    let offers = client.request_offers().unwrap();
    assert_eq!(offers.len(), 2);
    assert_eq!(offers[0].relid, 1);
    assert_eq!(offers[0].interface_id, vmbfs.offer().interface_id);
    assert_eq!(offers[0].instance_id, vmbfs.offer().instance_id);
    assert_eq!(offers[0].pipe_mode, Some(PIPE_MODE_MESSAGE));
    assert_eq!(offers[1].relid, 2);
    assert_eq!(offers[1].interface_id, storvsp.offer().interface_id);
    assert_eq!(offers[1].pipe_mode, None);
    assert_eq!(offers[1].sub_channel_index, 0);

    let bus = client.transport();
    let connections: Vec<u32> = bus.posts.iter().map(|(c, _)| *c).collect();
    assert_eq!(connections, [4, 1]);
    assert_eq!(
        bus.posted_types(),
        [MessageType::INITIATE_CONTACT, MessageType::REQUEST_OFFERS]
    );
    // INITIATE_CONTACT: version 5.3, target vCPU 0, message SINT 2.
    let contact = &bus.posts[0].1;
    assert_eq!(u32_at(contact, 8), 0x0005_0003);
    assert_eq!(u32_at(contact, 12), 0);
    assert_eq!(contact[16], 2);
    assert_eq!(bus.server.version(), Some(Version::V5_3));
}

/// A host that answers INITIATE_CONTACT itself, accepting only `accept`
/// (none if `None`), and records what was asked on which connection.
struct PickyHost {
    synic: Synic,
    memory: GuestMemory,
    accept: Option<u32>,
    asked: Vec<(u32, u32)>,
}

impl PickyHost {
    fn new(accept: Option<u32>) -> Self {
        let memory = GuestMemory::new(8 * PAGE_SIZE as u64).unwrap();
        let mut synic = Synic::new(memory.clone(), 1);
        synic.set_simp(0, Some(SIMP)).unwrap();
        Self {
            synic,
            memory,
            accept,
            asked: Vec::new(),
        }
    }
}

impl VmbusTransport for PickyHost {
    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), TransportError> {
        assert_eq!(message_type(message), MessageType::INITIATE_CONTACT);
        let version = u32_at(message, 8);
        self.asked.push((connection_id, version));
        let supported = u8::from(self.accept == Some(version));
        // VERSION_RESPONSE: header, supported, state, padding, conn id 9.
        let mut reply = 15u32.to_le_bytes().to_vec();
        reply.extend_from_slice(&[0; 4]);
        reply.extend_from_slice(&[supported, 0, 0, 0]);
        reply.extend_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            self.synic.post_message(0, 2, &reply),
            vmbdev_vmbus::PostResult::Posted
        );
        Ok(())
    }

    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn simp_page(&self) -> u64 {
        SIMP
    }

    fn eom(&mut self) {}

    fn wait_interrupt(&mut self) -> Result<(), TransportError> {
        Err(TransportError("no reply".into()))
    }
}

#[test]
fn a_host_that_refuses_every_version_fails_connect_after_linux_order() {
    let mut client = VmbusClient::new(PickyHost::new(None), ClientConfig::default());
    let error = client.connect().unwrap_err();
    match &error {
        VmbusError::VersionsRefused { tried } => assert_eq!(tried, &LINUX_VERSIONS),
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(
        error.to_string(),
        "the host refused every version asked for (5.3, 5.2, 5.1, 5.0, 4.1, 4.0, 3.0, 2.4)"
    );
    assert_eq!(
        client.transport().asked,
        [
            (4, 0x0005_0003),
            (4, 0x0005_0002),
            (4, 0x0005_0001),
            (4, 0x0005_0000),
            (1, 0x0004_0001),
            (1, 0x0004_0000),
            (1, 0x0003_0000),
            (1, 0x0002_0004),
        ]
    );
    assert_eq!(client.version(), None);
    assert!(matches!(
        client.request_offers(),
        Err(VmbusError::NotConnected)
    ));
}

#[test]
fn before_5_0_the_host_connection_id_is_ignored_and_from_5_0_it_is_taken() {
    let mut old = VmbusClient::new(PickyHost::new(Some(0x0004_0000)), ClientConfig::default());
    assert_eq!(old.connect().unwrap(), Version::WIN10);
    assert_eq!(old.message_connection_id(), 1);
    assert_eq!(old.transport().asked.len(), 6);

    let mut new = VmbusClient::new(PickyHost::new(Some(0x0005_0001)), ClientConfig::default());
    assert_eq!(new.connect().unwrap(), Version::V5_1);
    assert_eq!(new.message_connection_id(), 9, "msg_conn_id of the reply");
}

#[test]
fn a_60_page_gpadl_goes_as_a_header_and_two_bodies_and_is_accepted() {
    let mut bus = Loop::new();
    bus.server
        .add_device(Arc::new(Parked::default()), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    client.connect().unwrap();
    client.request_offers().unwrap();
    let pages: Vec<u64> = (100..160).collect();
    let gpadl = client.create_gpadl(1, &pages).unwrap();
    assert_eq!(gpadl, 0xE1E10, "Linux's first handle");
    let bus = client.transport();
    let sent: Vec<&Vec<u8>> = bus.posts[2..].iter().map(|(_, m)| m).collect();
    assert_eq!(sent.len(), 3);
    // Header: fixed part 20, range {byte_count, byte_offset} 8, 26 pfns.
    let header = sent[0];
    assert_eq!(message_type(header), MessageType::GPADL_HEADER);
    assert_eq!(header.len(), 20 + 8 + 26 * 8);
    assert_eq!((u32_at(header, 8), u32_at(header, 12)), (1, 0xE1E10));
    assert_eq!(u16_at(header, 16), 8 + 60 * 8, "range_buflen spans all");
    assert_eq!(u16_at(header, 18), 1, "one range");
    assert_eq!(u32_at(header, 20), 60 * 4096, "byte_count");
    assert_eq!(u32_at(header, 24), 0, "byte_offset");
    assert_eq!(u32_at(header, 28), 100, "first pfn");
    // Bodies: 28 pfns, then the last 6.
    for (body, pfns, first) in [(sent[1], 28, 126u32), (sent[2], 6, 154)] {
        assert_eq!(message_type(body), MessageType::GPADL_BODY);
        assert_eq!(body.len(), 16 + pfns * 8);
        assert_eq!(u32_at(body, 12), 0xE1E10);
        assert_eq!(u32_at(body, 16), first);
    }
    assert_eq!(bus.registry.get(0xE1E10).unwrap().as_ref(), &pages[..]);
    // The next GPADL gets the next handle.
    assert_eq!(client.create_gpadl(1, &[200]).unwrap(), 0xE1E11);
}

#[test]
fn open_close_teardown_and_unload() {
    let mut bus = Loop::new();
    let parked = Arc::new(Parked::default());
    bus.server
        .add_device(parked.clone(), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    client.connect().unwrap();
    client.request_offers().unwrap();
    let ring: Vec<u64> = (10..14).collect();
    let gpadl = client.create_gpadl(1, &ring).unwrap();
    client.open_channel(1, gpadl, 2, 0).unwrap();
    assert!(client.transport().server.is_open(1));
    assert_eq!(*parked.opens.lock().unwrap(), 1);
    let open = &client.transport().posts.last().unwrap().1;
    assert_eq!(message_type(open), MessageType::OPEN_CHANNEL);
    assert_eq!(u32_at(open, 12), 1, "open id is the relid");
    assert_eq!(u32_at(open, 16), gpadl);
    assert_eq!(u32_at(open, 24), 2, "downstream page offset");

    assert!(matches!(
        client.open_channel(1, gpadl, 2, 0),
        Err(VmbusError::AlreadyOpen(1))
    ));
    client.close_channel(1).unwrap();
    assert!(!client.transport().server.is_open(1));
    client.teardown_gpadl(gpadl).unwrap();
    assert_eq!(client.transport().server.gpadl_count(), 0);
    assert!(client.transport().registry.get(gpadl).is_err());

    // Reopen on a new GPADL, then unload with it open.
    let gpadl = client.create_gpadl(1, &ring).unwrap();
    client.open_channel(1, gpadl, 2, 0).unwrap();
    client.unload().unwrap();
    assert_eq!(client.version(), None);
    assert_eq!(client.transport().server.version(), None);
    assert_eq!(client.transport().server.gpadl_count(), 0);
    assert_eq!(
        client.transport().posted_types().last(),
        Some(&MessageType::UNLOAD)
    );
}

#[test]
fn a_refused_open_and_a_refused_gpadl_name_relid_and_status() {
    let mut bus = Loop::new();
    bus.server
        .add_device(Arc::new(Parked::default()), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    client.connect().unwrap();
    client.request_offers().unwrap();
    // Pages past the end of guest memory.
    let error = client.create_gpadl(1, &[1 << 30]).unwrap_err();
    assert!(
        matches!(error, VmbusError::GpadlRefused { relid: 1, gpadl: 0xE1E10, status } if status != 0),
        "{error}"
    );
    let gpadl = client.create_gpadl(1, &[10, 11, 12, 13]).unwrap();
    // A downstream offset of 0 leaves no guest→host half.
    let error = client.open_channel(1, gpadl, 0, 0).unwrap_err();
    assert!(
        matches!(error, VmbusError::OpenRefused { relid: 1, status } if status != 0),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("OPENCHANNEL of relid 1 refused")
    );
    assert!(matches!(
        client.create_gpadl(7, &[10]),
        Err(VmbusError::UnknownRelid(7))
    ));
}

#[test]
fn sub_channel_offers_arriving_later_are_found() {
    let mut bus = Loop::new();
    let parked = Arc::new(Parked {
        max_sub_channels: 2,
        ..Parked::default()
    });
    bus.server
        .add_device(parked.clone(), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    client.connect().unwrap();
    let primary = client.request_offers().unwrap().remove(0);
    let gpadl = client
        .create_gpadl(primary.relid, &[10, 11, 12, 13])
        .unwrap();
    client.open_channel(primary.relid, gpadl, 2, 0).unwrap();
    let control = parked.sub_channels.lock().unwrap().clone().unwrap();
    control.enable_sub_channels(2).unwrap();
    for index in [1, 2] {
        let offer = client.wait_offer(primary.instance_id, index).unwrap();
        assert_eq!(offer.sub_channel_index, index);
        assert_eq!(offer.interface_id, primary.interface_id);
        assert_ne!(offer.relid, primary.relid);
        let first = 20 * u64::from(index);
        let gpadl = client
            .create_gpadl(offer.relid, &[first, first + 1, first + 2, first + 3])
            .unwrap();
        client.open_channel(offer.relid, gpadl, 2, 0).unwrap();
    }
    assert_eq!(*parked.opens.lock().unwrap(), 3);
    assert!(matches!(
        client.wait_offer(primary.instance_id, 3),
        Err(VmbusError::NoSuchOffer { index: 3, .. })
    ));
}

#[test]
fn a_rescind_is_answered_with_relid_released_and_the_relid_reused() {
    let mut bus = Loop::new();
    let (id, relid) = bus
        .server
        .add_device(Arc::new(Parked::default()), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    client.connect().unwrap();
    client.request_offers().unwrap();
    let gpadl = client.create_gpadl(relid, &[10, 11]).unwrap();
    {
        let bus = client.transport_mut();
        bus.server.remove_device(id, &mut bus.host);
    }
    client.poll().unwrap();
    let released = &client.transport().posts.last().unwrap().1;
    assert_eq!(message_type(released), MessageType::RELID_RELEASED);
    assert_eq!(u32_at(released, 8), relid);
    assert!(client.offer(relid).is_none());
    assert_eq!(client.gpadl_count(), 0, "its GPADLs are forgotten");
    assert!(matches!(
        client.teardown_gpadl(gpadl),
        Err(VmbusError::UnknownGpadl(_))
    ));
    // The host reuses the released relid for a new device, offered at once.
    let vmbfs = vmbfs_device();
    {
        let bus = client.transport_mut();
        let (_, again) = bus.server.add_device(vmbfs.clone(), &mut bus.host).unwrap();
        assert_eq!(again, relid);
    }
    client.poll().unwrap();
    assert_eq!(
        client.offer(relid).map(|o| o.instance_id),
        Some(vmbfs.offer().instance_id)
    );
}

#[test]
fn a_rescinded_open_channel_is_released_on_close_without_close_or_teardown() {
    let mut bus = Loop::new();
    let (id, relid) = bus
        .server
        .add_device(Arc::new(Parked::default()), &mut bus.host)
        .unwrap();
    let mut client = client(bus);
    client.connect().unwrap();
    client.request_offers().unwrap();
    let gpadl = client.create_gpadl(relid, &[10, 11, 12, 13]).unwrap();
    client.open_channel(relid, gpadl, 2, 0).unwrap();
    {
        let bus = client.transport_mut();
        bus.server.remove_device(id, &mut bus.host);
    }
    client.poll().unwrap();
    assert!(client.offer(relid).is_some_and(|o| o.rescinded));
    let before = client.transport().posts.len();
    assert_eq!(
        client.transport().posted_types()[before - 1],
        MessageType::OPEN_CHANNEL,
        "nothing sent since the open"
    );
    client.close_channel(relid).unwrap();
    assert_eq!(
        client.transport().posted_types()[before..],
        [MessageType::RELID_RELEASED]
    );
    assert_eq!(
        block_on(async {
            // The server tears the GPADL down itself after the release.
            let bus = client.transport_mut();
            let waits = std::mem::take(&mut bus.host.inner.waits);
            for wait in waits {
                let released = wait.await;
                bus.server.teardown_complete(released, &mut bus.host);
            }
            bus.server.gpadl_count()
        }),
        0
    );
}
