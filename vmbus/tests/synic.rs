//! The software SynIC under the real server: host messages land in the
//! guest's SIMP slot at the offsets Linux's `struct hv_message` reads, a
//! full slot gets the message-pending flag and the next message only after
//! the guest's EOM, in order; event flags are set, raise the SINT and are
//! cleared; hostile page addresses are refused.

mod common;

use std::sync::Arc;

use common::*;
use vmbdev_ring::{EventDoorbell, GuestMemory, PAGE_SIZE};
use vmbdev_vmbus::protocol::{MessageType, STATUS_SUCCESS, Version};
use vmbdev_vmbus::synic::{PAYLOAD_MAX, SLOT_SIZE};
use vmbdev_vmbus::{PostResult, Server, ServerConfig, Synic, SynicError, SynicHost};

const SIMP: u64 = 4 * PAGE_SIZE as u64;
const SIEFP: u64 = 5 * PAGE_SIZE as u64;
/// The SINT Linux asks VMBus messages on.
const SINT: u8 = 2;

struct Bus {
    server: Server,
    host: SynicHost<TestHost>,
    memory: GuestMemory,
    interrupt: Arc<EventDoorbell>,
}

impl Bus {
    fn new() -> Self {
        let rig = Rig::new(64, ServerConfig::default());
        let mut synic = Synic::new(rig.memory.clone(), 2);
        synic.set_simp(0, Some(SIMP)).unwrap();
        synic.set_siefp(0, Some(SIEFP)).unwrap();
        let interrupt = Arc::new(EventDoorbell::new());
        synic.connect_interrupt(0, SINT, interrupt.clone()).unwrap();
        let mut bus = Self {
            server: rig.server,
            host: SynicHost::new(synic, TestHost::default()),
            memory: rig.memory,
            interrupt,
        };
        bus.server
            .add_device(Arc::new(Parked::default()), &mut bus.host)
            .unwrap();
        bus
    }

    fn post(&mut self, connection: u32, bytes: &[u8]) {
        self.server
            .post_message(connection, bytes, &mut self.host)
            .unwrap();
    }

    /// The raw slot of SINT 2 as guest memory holds it.
    fn raw_slot(&self) -> [u8; SLOT_SIZE as usize] {
        let mut slot = [0; SLOT_SIZE as usize];
        self.memory
            .read(SIMP + u64::from(SINT) * SLOT_SIZE, &mut slot)
            .unwrap();
        slot
    }

    /// Reads the slot as a guest does: the payload, `None` if empty.
    fn peek(&self) -> Option<Vec<u8>> {
        let mut buf = [0; PAYLOAD_MAX];
        let len = self.host.synic.read_slot(0, SINT, &mut buf)?;
        Some(buf[..len].to_vec())
    }

    /// Takes the message out of the slot, writing EOM if it was pending.
    fn take(&mut self) -> Vec<u8> {
        let message = self.peek().expect("a message in the slot");
        if self.host.synic.clear_slot(0, SINT) {
            self.host.eom(&mut self.server);
        }
        message
    }

    fn connect(&mut self) {
        self.post(4, &initiate_contact(Version::V5_3, 0));
        let reply = self.take();
        assert_eq!(message_type(&reply), MessageType::VERSION_RESPONSE);
        assert_eq!(reply[8], 1, "5.3 supported");
        self.post(1, &header(MessageType::REQUEST_OFFERS));
        assert_eq!(message_type(&self.take()), MessageType::OFFER_CHANNEL);
        assert_eq!(
            message_type(&self.take()),
            MessageType::ALL_OFFERS_DELIVERED
        );
        assert_eq!(self.peek(), None);
    }
}

#[test]
fn message_lands_at_linux_offsets_and_raises_the_sint() {
    let mut bus = Bus::new();
    bus.post(4, &initiate_contact(Version::V5_3, 0));
    let slot = bus.raw_slot();
    // struct hv_message: message_type u32, payload_size u8, message_flags
    // u8, reserved u16, port u64, then the payload.
    assert_eq!(u32_at(&slot, 0), 1, "HVMSG channel message type");
    // VERSION_RESPONSE: header 8, version_supported u8, connection_state
    // u8, padding u16, msg_conn_id u32.
    assert_eq!(slot[4], 16, "payload size");
    assert_eq!(slot[5] & 1, 0, "not pending");
    assert_eq!(u32_at(&slot, 16), MessageType::VERSION_RESPONSE.0);
    assert_eq!(slot[16 + 8], 1, "version supported");
    assert_eq!(bus.interrupt.signal_count(), 1);
}

#[test]
fn full_slot_sets_pending_and_eom_delivers_in_order() {
    let mut bus = Bus::new();
    bus.connect();
    let pages: Vec<u64> = (8..12).collect();
    for gpadl in 1..=3 {
        for message in gpadl_messages(1, gpadl, &pages) {
            bus.post(1, &message);
        }
    }
    // The first reply is in the slot; the other two wait, and the slot
    // says so.
    assert_eq!(bus.raw_slot()[5] & 1, 1, "message pending");
    assert_eq!(bus.server.queued(), 2);
    for gpadl in 1..=3 {
        let before = bus.interrupt.signal_count();
        let reply = bus.take();
        assert_eq!(created_status(&reply, 1, gpadl), STATUS_SUCCESS);
        if gpadl < 3 {
            assert_eq!(bus.interrupt.signal_count(), before + 1, "redelivered");
        }
    }
    assert_eq!(bus.peek(), None);
    assert_eq!(bus.server.queued(), 0);
}

#[test]
fn clearing_without_eom_leaves_the_queue_waiting() {
    let mut bus = Bus::new();
    bus.connect();
    for gpadl in 1..=2 {
        for message in gpadl_messages(1, gpadl, &[8]) {
            bus.post(1, &message);
        }
    }
    // A guest that empties the slot but never writes EOM gets nothing more.
    assert!(bus.host.synic.clear_slot(0, SINT));
    assert_eq!(bus.peek(), None);
    assert_eq!(bus.server.queued(), 1);
    bus.host.eom(&mut bus.server);
    assert_eq!(created_status(&bus.take(), 1, 2), STATUS_SUCCESS);
}

#[test]
fn guest_that_never_clears_keeps_the_queue_bounded() {
    let mut bus = Bus::new();
    bus.connect();
    let limit = ServerConfig::default().queue_limit;
    for gpadl in 1..=(limit as u32 + 8) {
        for message in gpadl_messages(1, gpadl, &[8]) {
            let _ = bus.server.post_message(1, &message, &mut bus.host);
        }
    }
    assert!(bus.server.queued() <= limit);
}

#[test]
fn event_flags_set_raise_and_clear() {
    let bus = Bus::new();
    let synic = &bus.host.synic;
    for flag in [0, 1, 63, 64, 2047] {
        let before = bus.interrupt.signal_count();
        assert!(synic.signal_event(0, SINT, flag));
        assert_eq!(bus.interrupt.signal_count(), before + 1);
        // SINT 2's flags start 2 * 256 bytes into the page; flag n is bit
        // n % 8 of byte n / 8.
        let mut byte = [0];
        let at = SIEFP + 2 * 256 + u64::from(flag / 8);
        bus.memory.read(at, &mut byte).unwrap();
        assert_eq!(byte[0], 1 << (flag % 8), "flag {flag}");
        assert!(synic.take_flag(0, SINT, flag));
        assert!(!synic.take_flag(0, SINT, flag), "cleared");
        bus.memory.read(at, &mut byte).unwrap();
        assert_eq!(byte[0], 0);
    }
    assert!(!synic.signal_event(0, SINT, 2048), "past the SINT's flags");
    assert!(!synic.signal_event(0, 16, 1), "no SINT 16");
    assert!(!synic.signal_event(1, SINT, 1), "vCPU 1 has no SIEFP");
}

#[test]
fn hostile_page_addresses_are_refused() {
    let memory = GuestMemory::new(16 * PAGE_SIZE as u64).unwrap();
    let mut synic = Synic::new(memory, 1);
    assert_eq!(
        synic.set_simp(0, Some(SIMP + 8)),
        Err(SynicError::Unaligned(SIMP + 8))
    );
    assert!(matches!(
        synic.set_simp(0, Some(16 * PAGE_SIZE as u64)),
        Err(SynicError::Memory { .. })
    ));
    assert!(matches!(
        synic.set_siefp(0, Some(!(PAGE_SIZE as u64 - 1))),
        Err(SynicError::Memory { .. })
    ));
    assert_eq!(synic.set_simp(1, Some(SIMP)), Err(SynicError::NoVp(1)));
    let bell = Arc::new(EventDoorbell::new());
    assert_eq!(
        synic.connect_interrupt(0, 16, bell),
        Err(SynicError::NoSint(16))
    );
    // Nothing was enabled: posts and signals go nowhere.
    assert_eq!(
        synic.post_message(0, SINT, &[1; 16]),
        PostResult::Undeliverable
    );
    assert!(!synic.signal_event(0, SINT, 1));
    synic.set_simp(0, Some(SIMP)).unwrap();
    assert_eq!(
        synic.post_message(0, SINT, &[1; PAYLOAD_MAX + 1]),
        PostResult::Undeliverable,
        "too long"
    );
    assert_eq!(
        synic.post_message(1, SINT, &[1; 16]),
        PostResult::Undeliverable,
        "no such vCPU"
    );
    assert_eq!(
        synic.post_message(0, 16, &[1; 16]),
        PostResult::Undeliverable,
        "no such SINT"
    );
    assert_eq!(
        synic.post_message(0, SINT, &[1; PAYLOAD_MAX]),
        PostResult::Posted
    );
    assert_eq!(
        synic.post_message(0, SINT, &[1; 16]),
        PostResult::SlotFull,
        "the slot is taken"
    );
    synic.set_simp(0, None).unwrap();
    assert_eq!(
        synic.post_message(0, SINT, &[1; 16]),
        PostResult::Undeliverable,
        "disabled again"
    );
}

#[test]
fn hostile_payload_size_is_cut_to_the_slot() {
    let memory = GuestMemory::new(16 * PAGE_SIZE as u64).unwrap();
    let mut synic = Synic::new(memory.clone(), 1);
    synic.set_simp(0, Some(SIMP)).unwrap();
    let slot = SIMP + u64::from(SINT) * SLOT_SIZE;
    memory.write(slot, &[1, 0, 0, 0, 0xff]).unwrap();
    let mut buf = [0; PAYLOAD_MAX];
    assert_eq!(synic.read_slot(0, SINT, &mut buf), Some(PAYLOAD_MAX));
}
