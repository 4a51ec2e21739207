//! The VMBus control plane against arbitrary sequences of guest messages
//! (raw bytes of any type and length on any connection id, and well-formed
//! messages with arbitrary fields), a guest that stops draining its message
//! slot, hot add and remove, sub-channel requests, and save/restore in the
//! middle. Checks: no panic or hang; every host message is a host→guest
//! type of 8 to 240 bytes; the host's queue stays within its documented
//! bound; a restore of what was just saved succeeds.

use crate::{Outcome, decode_and_run};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use futures_lite::future::{block_on, poll_once};
use vmbdev_device::bus::{
    BusError, ChannelTask, Guid, Offer, OpenRequest, PipeMode, SubChannelControl, VmbusDevice,
};
use vmbdev_ring::{EventDoorbell, GpadlRegistry, GuestMemory, PAGE_SIZE};
use vmbdev_vmbus::protocol::MessageType;
use vmbdev_vmbus::{
    ChannelDoorbells, ChannelSignal, DeviceId, PostResult, Server, ServerConfig, TeardownWait,
    VmbusHost,
};

const PAGES: u64 = 64;
const QUEUE_LIMIT: usize = 8;
/// vCPUs whose SIMP takes messages; posts to others are undeliverable.
const VPS: u32 = 2;

/// A device whose task holds the ring until it is dropped.
#[derive(Default)]
struct Held {
    control: Mutex<Option<Arc<dyn SubChannelControl>>>,
}

impl VmbusDevice for Held {
    fn offer(&self) -> Offer {
        Offer {
            interface_id: Guid::from_u128(1),
            instance_id: Guid::from_u128(2),
            pipe_mode: PipeMode::Message,
            incoming_ring_pages: 1,
            outgoing_ring_pages: 1,
            max_sub_channels: 3,
            name: "held".into(),
        }
    }

    fn open(&self, _index: u16, request: OpenRequest) -> Result<ChannelTask, BusError> {
        *self.control.lock().unwrap() = Some(request.sub_channels.clone());
        Ok(Box::pin(async move {
            let _request = request;
            futures_lite::future::pending::<()>().await;
            Ok(())
        }))
    }

    fn close(&self, _index: u16) -> Result<(), BusError> {
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, BusError> {
        Ok(vec![7])
    }

    fn restore(&self, _saved: &[u8]) -> Result<(), BusError> {
        Ok(())
    }
}

/// The VMM: a closed channel's task ends at once (it is dropped).
#[derive(Default)]
struct Host {
    slot_full: bool,
    tasks: HashMap<u32, ChannelTask>,
    waits: Vec<TeardownWait>,
}

impl VmbusHost for Host {
    fn post_message(&mut self, vp: u32, _sint: u8, message: &[u8]) -> PostResult {
        assert!(
            (8..=240).contains(&message.len()),
            "{} bytes",
            message.len()
        );
        let kind = MessageType(u32::from_le_bytes(message[..4].try_into().unwrap()));
        assert!(HOST_TYPES.contains(&kind), "{kind:?}");
        if vp >= VPS {
            PostResult::Undeliverable
        } else if self.slot_full {
            PostResult::SlotFull
        } else {
            PostResult::Posted
        }
    }

    fn open_doorbells(&mut self, _signal: &ChannelSignal) -> ChannelDoorbells {
        ChannelDoorbells {
            guest_to_host: Arc::new(EventDoorbell::new()),
            host_to_guest: Arc::new(EventDoorbell::new()),
        }
    }

    fn retarget(&mut self, _signal: &ChannelSignal) {}

    fn close_doorbells(&mut self, relid: u32) {
        self.tasks.remove(&relid);
    }

    fn start_channel(&mut self, relid: u32, task: ChannelTask) {
        assert!(
            self.tasks.insert(relid, task).is_none(),
            "relid {relid} started twice"
        );
    }

    fn wait_teardown(&mut self, wait: TeardownWait) {
        self.waits.push(wait);
    }
}

const HOST_TYPES: [MessageType; 9] = [
    MessageType::OFFER_CHANNEL,
    MessageType::RESCIND_CHANNEL_OFFER,
    MessageType::ALL_OFFERS_DELIVERED,
    MessageType::OPEN_CHANNEL_RESULT,
    MessageType::GPADL_CREATED,
    MessageType::GPADL_TORNDOWN,
    MessageType::VERSION_RESPONSE,
    MessageType::UNLOAD_RESPONSE,
    MessageType::MODIFY_CHANNEL_RESPONSE,
];

#[derive(Debug, Arbitrary)]
enum Action {
    /// Raw bytes: type, then the rest.
    Raw {
        connection: u8,
        kind: u8,
        body: Vec<u8>,
    },
    Contact {
        version: u8,
        vp: u8,
    },
    RequestOffers,
    Gpadl {
        relid: u8,
        id: u8,
        first: u8,
        pages: u8,
        split: bool,
    },
    Open {
        relid: u8,
        id: u8,
        offset: u8,
    },
    Relid {
        kind: u8,
        relid: u8,
    },
    Teardown {
        relid: u8,
        id: u8,
    },
    Unload,
    SlotFull(bool),
    AddDevice,
    RemoveDevice(u8),
    SubChannels(u8),
    SaveRestore,
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn message(action: &Action) -> Option<(u32, Vec<u8>)> {
    const VERSIONS: [u32; 9] = [
        0x10001, 0x20004, 0x30000, 0x40000, 0x40001, 0x50000, 0x50001, 0x50002, 0x50003,
    ];
    Some(match *action {
        Action::Raw {
            connection,
            kind,
            ref body,
        } => {
            let mut bytes = u32s(&[kind.into(), 0]);
            bytes.extend_from_slice(body);
            (u32::from(connection % 6), bytes)
        }
        Action::Contact { version, vp } => {
            let version = VERSIONS[usize::from(version) % VERSIONS.len()];
            let connection = if version >= 0x50000 { 4 } else { 1 };
            let mut bytes = u32s(&[14, 0, version, vp.into(), 2, 0]);
            bytes.resize(40, 0);
            (connection, bytes)
        }
        Action::RequestOffers => (1, u32s(&[3, 0])),
        Action::Gpadl {
            relid,
            id,
            first,
            pages,
            split,
        } => {
            let pages = u32::from(pages % 40) + 1;
            let buflen = 8 + 8 * pages;
            let mut bytes = u32s(&[8, 0, relid.into(), id.into()]);
            bytes.extend_from_slice(&(buflen as u16).to_le_bytes());
            bytes.extend_from_slice(&1u16.to_le_bytes());
            bytes.extend_from_slice(&u32s(&[pages * PAGE_SIZE as u32, 0]));
            let sent = if split {
                pages.min(26)
            } else {
                pages.min(26) / 2
            };
            for page in 0..sent {
                let pfn = (u64::from(first) + u64::from(page)) % (PAGES + 2);
                bytes.extend_from_slice(&pfn.to_le_bytes());
            }
            (1, bytes)
        }
        Action::Open { relid, id, offset } => {
            let mut bytes = u32s(&[5, 0, relid.into(), 1, id.into(), 0, offset.into()]);
            bytes.resize(148, 0);
            (1, bytes)
        }
        Action::Relid { kind, relid } => {
            let kind = [7, 13, 22][usize::from(kind) % 3];
            (1, u32s(&[kind, 0, relid.into(), 0]))
        }
        Action::Teardown { relid, id } => (1, u32s(&[11, 0, relid.into(), id.into()])),
        Action::Unload => (1, u32s(&[16, 0])),
        _ => return None,
    })
}

struct Bus {
    memory: GuestMemory,
    server: Server,
    host: Host,
    devices: Vec<Arc<Held>>,
    ids: Vec<DeviceId>,
}

impl Bus {
    fn settle(&mut self) {
        let waits = std::mem::take(&mut self.host.waits);
        for mut wait in waits {
            match block_on(poll_once(&mut wait)) {
                Some(released) => self.server.teardown_complete(released, &mut self.host),
                None => self.host.waits.push(wait),
            }
        }
    }

    fn save_restore(&mut self) {
        self.server.suspend();
        self.host.tasks.clear();
        self.settle();
        let Ok(saved) = self.server.save() else {
            return;
        };
        let devices = self
            .devices
            .iter()
            .map(|d| d.clone() as Arc<dyn VmbusDevice>)
            .collect();
        let registry = GpadlRegistry::new();
        let config = config();
        let restored = Server::restore(self.memory.clone(), registry, config, devices, &saved);
        self.server = restored.expect("what was just saved restores");
        self.host = Host::default();
        let _ = self.server.resume(&mut self.host);
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        queue_limit: QUEUE_LIMIT,
        max_gpadl_pages: 32,
        max_gpadls: 16,
        max_assembling: 4,
        max_channels: 16,
        // More than take messages: the rest are undeliverable.
        vp_count: 2 * VPS,
        ..ServerConfig::default()
    }
}

fn check(actions: Vec<Action>) {
    let memory = GuestMemory::new(PAGES * PAGE_SIZE as u64).unwrap();
    let mut bus = Bus {
        server: Server::new(memory.clone(), GpadlRegistry::new(), config()).unwrap(),
        memory,
        host: Host::default(),
        devices: Vec::new(),
        ids: Vec::new(),
    };
    for action in actions.iter().take(256) {
        if let Some((connection, bytes)) = message(action) {
            let _ = bus.server.post_message(connection, &bytes, &mut bus.host);
        }
        match *action {
            Action::SlotFull(full) => {
                bus.host.slot_full = full;
                bus.server.slot_freed(&mut bus.host);
            }
            Action::AddDevice => {
                let device = Arc::new(Held::default());
                if let Ok((id, _)) = bus.server.add_device(device.clone(), &mut bus.host) {
                    bus.devices.push(device);
                    bus.ids.push(id);
                }
            }
            Action::RemoveDevice(i) if !bus.ids.is_empty() => {
                let id = bus.ids[usize::from(i) % bus.ids.len()];
                bus.server.remove_device(id, &mut bus.host);
            }
            Action::SubChannels(count) => {
                for device in &bus.devices {
                    if let Some(control) = device.control.lock().unwrap().clone() {
                        let _ = control.enable_sub_channels(count.into());
                    }
                }
                bus.server.offer_sub_channels(&mut bus.host);
            }
            Action::SaveRestore => bus.save_restore(),
            _ => {}
        }
        bus.settle();
        // Replies, one TORNDOWN per GPADL, an offer and a RESCIND per
        // channel, UNLOAD.
        let bound = QUEUE_LIMIT + 16 + 2 * 16 + 1;
        assert!(
            bus.server.queued() <= bound,
            "queue {}",
            bus.server.queued()
        );
    }
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it; a failed check panics.
pub fn run(data: &[u8]) -> Outcome {
    decode_and_run::<Vec<Action>>(data, check)
}
