//! Property tests of the control plane: random guest message sequences
//! against a small model of the protocol's states (what each message must
//! be answered with), and random bytes that must never panic, hang or grow
//! the host's queue.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vmbdev_vmbus::ServerConfig;
use vmbdev_vmbus::protocol::{MessageType, Version};

/// Guest memory of the model runs, in pages.
const MEMORY_PAGES: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    Contact {
        version: u32,
        right_connection: bool,
    },
    RequestOffers,
    Gpadl {
        relid: u32,
        id: u32,
        first: u64,
        pages: u64,
        outside: bool,
    },
    Teardown {
        relid: u32,
        id: u32,
    },
    Open {
        relid: u32,
        id: u32,
        offset: u32,
    },
    Close {
        relid: u32,
    },
    Modify {
        relid: u32,
    },
    Unload,
}

fn op() -> impl Strategy<Value = Op> {
    let versions = prop::sample::select(vec![
        0x0001_0001,
        0x0002_0004,
        0x0004_0001,
        0x0005_0000,
        0x0005_0002,
        0x0005_0003,
        0x0006_0000,
    ]);
    let relid = prop::sample::select(vec![0u32, 1, 1, 2, 2, 3]);
    let id = 1u32..5;
    // Weighted so that sequences reach open channels before a contact or
    // an unload starts them over.
    prop_oneof![
        1 => (versions, prop::bool::weighted(0.9)).prop_map(|(version, right_connection)| {
            Op::Contact { version, right_connection }
        }),
        1 => Just(Op::RequestOffers),
        6 => (relid.clone(), id.clone(), 8u64..40, 2u64..9, prop::bool::weighted(0.1)).prop_map(
            |(relid, id, first, pages, outside)| Op::Gpadl { relid, id, first, pages, outside }
        ),
        3 => (relid.clone(), id.clone()).prop_map(|(relid, id)| Op::Teardown { relid, id }),
        6 => (relid.clone(), id, prop::sample::select(vec![0u32, 1, 2, 2, 2, 3, 9]))
            .prop_map(|(relid, id, offset)| Op::Open { relid, id, offset }),
        3 => relid.clone().prop_map(|relid| Op::Close { relid }),
        1 => relid.prop_map(|relid| Op::Modify { relid }),
        1 => Just(Op::Unload),
    ]
}

/// What the guest can tell of the host's state.
#[derive(Debug, Default)]
struct Model {
    version: Option<u32>,
    offered: bool,
    /// GPADL id → (relid, pages, being torn down).
    gpadls: BTreeMap<u32, (u32, u64, bool)>,
    /// Open relid → ring GPADL.
    open: BTreeMap<u32, u32>,
}

/// An expected host message: its type and the fields that identify it.
type Reply = (MessageType, Vec<u32>);

const CHANNELS: [u32; 2] = [1, 2];

impl Model {
    fn busy(&self) -> bool {
        !self.gpadls.is_empty() || !self.open.is_empty()
    }

    fn offered(&self, relid: u32) -> bool {
        self.version.is_some() && self.offered && CHANNELS.contains(&relid)
    }

    /// Applies `op` and returns the replies it must produce (after the
    /// devices have let go of whatever it closed).
    fn step(&mut self, op: &Op) -> Vec<Reply> {
        if self.version.is_none() && !matches!(op, Op::Contact { .. }) {
            return vec![];
        }
        match *op {
            Op::Contact {
                version,
                right_connection,
            } => self.contact(version, right_connection),
            Op::RequestOffers => {
                if self.offered {
                    return vec![];
                }
                self.offered = true;
                let mut replies: Vec<Reply> = CHANNELS
                    .iter()
                    .map(|&r| (MessageType::OFFER_CHANNEL, vec![r]))
                    .collect();
                replies.push((MessageType::ALL_OFFERS_DELIVERED, vec![]));
                replies
            }
            Op::Gpadl {
                relid,
                id,
                pages,
                outside,
                ..
            } => {
                let ok = self.offered(relid) && !self.gpadls.contains_key(&id) && !outside;
                if ok {
                    self.gpadls.insert(id, (relid, pages, false));
                }
                vec![(MessageType::GPADL_CREATED, vec![relid, id, u32::from(!ok)])]
            }
            Op::Teardown { relid, id } => self.teardown(relid, id),
            Op::Open { relid, id, offset } => self.open(relid, id, offset),
            Op::Close { relid } => self.close(relid),
            Op::Modify { relid } => {
                let acked = self.version >= Some(Version::V5_3.0);
                if !self.offered(relid) || !acked {
                    return vec![];
                }
                let status = u32::from(!self.open.contains_key(&relid));
                vec![(MessageType::MODIFY_CHANNEL_RESPONSE, vec![relid, status])]
            }
            Op::Unload => {
                *self = Self::default();
                vec![(MessageType::UNLOAD_RESPONSE, vec![])]
            }
        }
    }

    fn contact(&mut self, version: u32, right_connection: bool) -> Vec<Reply> {
        if !right_connection {
            return vec![];
        }
        let supported = Version::SUPPORTED.contains(&Version(version));
        let busy = self.busy();
        if !busy {
            *self = Self::default();
            if supported {
                self.version = Some(version);
            }
        }
        vec![(
            MessageType::VERSION_RESPONSE,
            vec![u32::from(supported && !busy)],
        )]
    }

    fn teardown(&mut self, relid: u32, id: u32) -> Vec<Reply> {
        let offered = self.offered(relid);
        let is_ring = self.open.values().any(|&ring| ring == id);
        let Some(gpadl) = self.gpadls.get_mut(&id) else {
            return vec![];
        };
        if gpadl.0 != relid || gpadl.2 || !offered {
            return vec![];
        }
        if is_ring {
            gpadl.2 = true;
            return vec![];
        }
        self.gpadls.remove(&id);
        vec![(MessageType::GPADL_TORNDOWN, vec![id])]
    }

    fn open(&mut self, relid: u32, id: u32, offset: u32) -> Vec<Reply> {
        if !self.offered(relid) {
            return vec![];
        }
        let ring = self.gpadls.get(&id).copied();
        let ok = !self.open.contains_key(&relid)
            && ring.is_some_and(|(owner, pages, tearing)| {
                owner == relid && !tearing && offset >= 2 && u64::from(offset) + 2 <= pages
            })
            && !self.open.values().any(|&r| r == id);
        if ok {
            self.open.insert(relid, id);
        }
        vec![(
            MessageType::OPEN_CHANNEL_RESULT,
            vec![relid, u32::from(!ok)],
        )]
    }

    fn close(&mut self, relid: u32) -> Vec<Reply> {
        let Some(ring) = self.open.remove(&relid) else {
            return vec![];
        };
        // A teardown that waited for this ring completes now.
        match self.gpadls.get(&ring) {
            Some(&(_, _, true)) => {
                self.gpadls.remove(&ring);
                vec![(MessageType::GPADL_TORNDOWN, vec![ring])]
            }
            _ => vec![],
        }
    }
}

fn message_of(op: &Op) -> (u32, Vec<Vec<u8>>) {
    match *op {
        Op::Contact {
            version,
            right_connection,
        } => {
            let right = if version >= Version::V5_0.0 { 4 } else { 1 };
            let connection = if right_connection { right } else { 5 - right };
            (connection, vec![initiate_contact(Version(version), 0)])
        }
        Op::RequestOffers => (1, vec![header(MessageType::REQUEST_OFFERS)]),
        Op::Gpadl {
            relid,
            id,
            first,
            pages,
            outside,
        } => {
            let mut pfns: Vec<u64> = (first..first + pages).collect();
            if outside {
                pfns[0] = MEMORY_PAGES + first;
            }
            (1, gpadl_messages(relid, id, &pfns))
        }
        Op::Teardown { relid, id } => (1, vec![teardown(relid, id)]),
        Op::Open { relid, id, offset } => (1, vec![open_channel(relid, 3, id, offset, 0)]),
        Op::Close { relid } => (1, vec![relid_message(MessageType::CLOSE_CHANNEL, relid)]),
        Op::Modify { relid } => (1, vec![modify(relid, 1)]),
        Op::Unload => (1, vec![header(MessageType::UNLOAD)]),
    }
}

/// The identifying fields of a host message, as the model names them.
fn reply_of(message: &[u8]) -> Reply {
    let kind = message_type(message);
    let fields = match kind {
        MessageType::VERSION_RESPONSE => vec![u32::from(message[8])],
        MessageType::OFFER_CHANNEL => vec![u32_at(message, 8 + 176)],
        MessageType::GPADL_CREATED => vec![
            u32_at(message, 8),
            u32_at(message, 12),
            u32::from(u32_at(message, 16) != 0),
        ],
        MessageType::GPADL_TORNDOWN => vec![u32_at(message, 8)],
        MessageType::OPEN_CHANNEL_RESULT => {
            vec![u32_at(message, 8), u32::from(u32_at(message, 16) != 0)]
        }
        MessageType::MODIFY_CHANNEL_RESPONSE => {
            vec![u32_at(message, 8), u32::from(u32_at(message, 12) != 0)]
        }
        _ => vec![],
    };
    (kind, fields)
}

/// Lets every closed channel's device task end and hands finished
/// teardowns back, so the outcome of a step does not depend on timing.
fn settle(rig: &mut Rig, open: &BTreeSet<u32>) {
    let ended: Vec<u32> = rig
        .host
        .tasks
        .keys()
        .copied()
        .filter(|r| !open.contains(r))
        .collect();
    for relid in ended {
        rig.join(relid).unwrap();
    }
    rig.settle_teardowns();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_follow_the_model(
        version in prop::sample::select(Version::SUPPORTED.to_vec()),
        tail in prop::collection::vec(op(), 1..60),
    ) {
        // Most of the protocol lies behind a connection with offers.
        let mut ops = vec![
            Op::Contact { version: version.0, right_connection: true },
            Op::RequestOffers,
        ];
        ops.extend(tail);
        // Two vCPUs: MODIFYCHANNEL moves channels to vCPU 1.
        let config = ServerConfig { vp_count: 2, ..ServerConfig::default() };
        let mut rig = Rig::new(MEMORY_PAGES, config);
        for _ in CHANNELS {
            rig.add(Arc::new(Parked::default()));
        }
        let mut model = Model::default();
        for op in &ops {
            let expected = model.step(op);
            let (connection, messages) = message_of(op);
            for message in &messages {
                let _ = rig.post_on(connection, message);
            }
            let open: BTreeSet<u32> = model.open.keys().copied().collect();
            settle(&mut rig, &open);
            let got: Vec<Reply> = std::iter::from_fn(|| rig.next()).map(|m| reply_of(&m)).collect();
            prop_assert_eq!(got, expected, "after {:?}", op);
            for relid in CHANNELS {
                prop_assert_eq!(rig.server.is_open(relid), model.open.contains_key(&relid));
            }
            prop_assert_eq!(rig.server.gpadl_count(), model.gpadls.len());
            prop_assert_eq!(rig.server.version().map(|v| v.0), model.version);
        }
    }

    #[test]
    fn random_bytes_never_panic_or_grow_the_queue(
        messages in prop::collection::vec(
            (0u32..6, 0u32..26, prop::collection::vec(any::<u8>(), 0..260)),
            1..60,
        ),
    ) {
        let config = ServerConfig { queue_limit: 8, ..ServerConfig::default() };
        let mut rig = Rig::new(MEMORY_PAGES, config);
        rig.add(Arc::new(Parked::default()));
        // Connected first, so the bytes reach every handler.
        rig.connect();
        rig.host.slot_full = true;
        for (connection, kind, mut bytes) in messages {
            bytes.splice(0..bytes.len().min(4), kind.to_le_bytes());
            let _ = rig.post_on(connection, &bytes);
            prop_assert!(rig.server.queued() <= 8 + rig.server.gpadl_count() + 2);
        }
        rig.host.slot_full = false;
        rig.server.slot_freed(&mut rig.host);
        prop_assert_eq!(rig.server.queued(), 0);
        rig.post(&header(MessageType::UNLOAD)).ok();
        let open: BTreeSet<u32> = BTreeSet::new();
        settle(&mut rig, &open);
        rig.finish_teardowns();
    }
}
