//! Property test of the storvsp init handshake: random sequences of vstor
//! packets (every init operation in and out of order, any protocol
//! version, sub-channel requests, SRBs and resets before and after init,
//! unknown operations, short packets, save/restore between packets, and
//! packets on a sub-channel) against a small model of the init states
//! written from the wire facts. Each step's completion is compared byte
//! for byte with the model's: status, echoed body and size.

use std::sync::Arc;

use proptest::prelude::*;
use vmbdev_block::MemoryDisk;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{
    Controller, InitState, LunAddress, Outcome, Request, StorvspChannel, StorvspConfig,
};
use vmbdev_ring::GuestMemory;

// Operation codes (wire table).
const OP_COMPLETE_IO: u32 = 1;
const OP_EXECUTE_SRB: u32 = 3;
const OP_BEGIN: u32 = 7;
const OP_END: u32 = 8;
const OP_QUERY_VERSION: u32 = 9;
const OP_QUERY_PROPERTIES: u32 = 10;
const OP_CREATE_SUB_CHANNELS: u32 = 13;

// NTSTATUS values.
const SUCCESS: u32 = 0;
const INVALID_PARAMETER: u32 = 0xC000_000D;
const INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
const REVISION_MISMATCH: u32 = 0xC000_0059;
const INVALID_DEVICE_STATE: u32 = 0xC000_0184;

/// Versions the host speaks (wire table).
const KNOWN_VERSIONS: [u16; 5] = [0x0200, 0x0402, 0x0501, 0x0600, 0x0602];
const WIN8: u16 = 0x0501;
/// Largest completion the host sends (a WIN8 packet).
const MAX_REPLY: usize = 0x40;

/// One packet the guest sends, or a host action between packets.
#[derive(Debug, Clone)]
enum Step {
    /// An operation with its fields; `size` is the whole packet length.
    Packet(Packet),
    /// A packet shorter than the 12-byte header.
    Short(Vec<u8>),
    /// Save the channel, restore the state into a fresh channel, go on
    /// with that one.
    SaveRestore,
    /// A packet on a sub-channel of the primary (one exists only once the
    /// primary finished init).
    OnSubChannel(Packet),
}

#[derive(Debug, Clone)]
struct Packet {
    kind: Kind,
    size: usize,
    /// Bytes filling the body after the fields the kind sets.
    filler: Vec<u8>,
    transaction_id: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Begin,
    QueryVersion {
        version: u16,
        revision: u16,
    },
    QueryProperties,
    End,
    CreateSubChannels {
        count: u16,
    },
    /// TEST UNIT READY to the disk at 0/0/0, no data.
    Srb,
    /// RESET_LUN, RESET_ADAPTER or RESET_BUS.
    Reset(u32),
    /// An operation the host does not serve.
    Unknown(u32),
}

impl Packet {
    /// The packet bytes, fields at their wire offsets.
    fn bytes(&self) -> Vec<u8> {
        let mut p = vec![0u8; self.size];
        let (op, fields): (u32, Vec<u8>) = match &self.kind {
            Kind::Begin => (OP_BEGIN, vec![]),
            Kind::QueryVersion { version, revision } => {
                let mut f = version.to_le_bytes().to_vec();
                f.extend(revision.to_le_bytes());
                (OP_QUERY_VERSION, f)
            }
            Kind::QueryProperties => (OP_QUERY_PROPERTIES, vec![]),
            Kind::End => (OP_END, vec![]),
            Kind::CreateSubChannels { count } => {
                (OP_CREATE_SUB_CHANNELS, count.to_le_bytes().to_vec())
            }
            Kind::Srb => {
                // SRB: length @12, target @18, lun @19, cdb_length @20,
                // sense_info_length @21, data_in @22 (2 = none),
                // data_transfer_length @24, CDB @28 (all zero = TUR).
                let mut f = vec![0u8; 0x34];
                f[0..2].copy_from_slice(&0x34u16.to_le_bytes());
                f[8] = 6;
                f[9] = 0x12;
                f[10] = 2;
                (OP_EXECUTE_SRB, f)
            }
            Kind::Reset(op) | Kind::Unknown(op) => (*op, vec![]),
        };
        p[0..4].copy_from_slice(&op.to_le_bytes());
        p[4..8].copy_from_slice(&1u32.to_le_bytes());
        let body = &mut p[12..];
        for (i, b) in body.iter_mut().enumerate() {
            *b = fields
                .get(i)
                .copied()
                .unwrap_or_else(|| self.filler.get(i).copied().unwrap_or(0xA5));
        }
        p
    }
}

/// What the host must answer one step with.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// This completion payload.
    Complete(Vec<u8>),
    /// Offer `count` sub-channels and send this completion payload.
    CreateSubChannels { bytes: Vec<u8>, count: u16 },
    /// An SRB job whose completion reports success.
    SrbSuccess,
    /// No completion: not a vstor request.
    Violation,
}

/// The model: init progress of the primary channel.
#[derive(Debug, Clone)]
struct Model {
    config: StorvspConfig,
    state: InitState,
    version: Option<u16>,
    sub_channels_created: bool,
}

/// A completion payload: COMPLETE_IO, host flags 0, `status`, then
/// `body`, zero-padded or cut to the request's size (at most 0x40).
fn completion(request: &[u8], status: u32, body: &[u8]) -> Vec<u8> {
    let len = request.len().min(MAX_REPLY);
    let mut c = vec![0u8; len];
    c[0..4].copy_from_slice(&OP_COMPLETE_IO.to_le_bytes());
    c[8..12].copy_from_slice(&status.to_le_bytes());
    for (i, b) in body.iter().enumerate() {
        if let Some(slot) = c.get_mut(12 + i) {
            *slot = *b;
        }
    }
    c
}

/// A completion echoing the request body.
fn echo(request: &[u8], status: u32) -> Vec<u8> {
    completion(request, status, &request[12..request.len().min(MAX_REPLY)])
}

impl Model {
    fn new(config: StorvspConfig) -> Self {
        Self {
            config,
            state: InitState::AwaitBegin,
            version: None,
            sub_channels_created: false,
        }
    }

    fn multi_channel(&self) -> bool {
        self.config.multi_channel
            && self.config.max_sub_channels > 0
            && self.version.is_some_and(|v| v >= WIN8)
    }

    fn properties(&self) -> Vec<u8> {
        let mut body = vec![0u8; 24];
        let (max_sub, flags) = if self.multi_channel() {
            (self.config.max_sub_channels, 1u32)
        } else {
            (0, 0)
        };
        body[4..6].copy_from_slice(&max_sub.to_le_bytes());
        body[8..12].copy_from_slice(&flags.to_le_bytes());
        body[12..16].copy_from_slice(&self.config.max_transfer_bytes.to_le_bytes());
        body
    }

    /// The answer to `packet` on the primary channel, and the new state.
    fn primary(&mut self, packet: &Packet, bytes: &[u8]) -> Expect {
        use InitState::*;
        Expect::Complete(match (&packet.kind, self.state) {
            (Kind::Begin, AwaitBegin) => {
                self.state = AwaitVersion;
                completion(bytes, SUCCESS, &[])
            }
            (Kind::QueryVersion { .. }, AwaitVersion | AwaitProperties) => {
                // The version is what the body holds, zero where the packet
                // ends; the reply echoes the 4-byte version body.
                let mut body = [0u8; 4];
                for (i, b) in body.iter_mut().enumerate() {
                    *b = bytes.get(12 + i).copied().unwrap_or(0);
                }
                let asked = u16::from_le_bytes([body[0], body[1]]);
                if KNOWN_VERSIONS.contains(&asked) {
                    self.version = Some(asked);
                    self.state = AwaitProperties;
                    completion(bytes, SUCCESS, &body)
                } else {
                    completion(bytes, REVISION_MISMATCH, &body)
                }
            }
            (Kind::QueryProperties, AwaitProperties) => {
                self.state = AwaitEnd;
                completion(bytes, SUCCESS, &self.properties())
            }
            (Kind::End, AwaitEnd) => {
                self.state = Ready;
                completion(bytes, SUCCESS, &[])
            }
            (Kind::CreateSubChannels { .. }, Ready) => {
                let count = u16::from_le_bytes([
                    bytes.get(12).copied().unwrap_or(0),
                    bytes.get(13).copied().unwrap_or(0),
                ]);
                let ok = bytes.len() >= 14
                    && self.multi_channel()
                    && !self.sub_channels_created
                    && count > 0
                    && count <= self.config.max_sub_channels;
                if !ok {
                    echo(bytes, INVALID_PARAMETER)
                } else {
                    self.sub_channels_created = true;
                    return Expect::CreateSubChannels {
                        bytes: echo(bytes, SUCCESS),
                        count,
                    };
                }
            }
            (Kind::Srb, Ready) => return Expect::SrbSuccess,
            (Kind::Reset(_), Ready) => echo(bytes, SUCCESS),
            (Kind::Unknown(_), _) => echo(bytes, INVALID_DEVICE_REQUEST),
            // Every other vstor request is out of order here.
            _ => echo(bytes, INVALID_DEVICE_STATE),
        })
    }

    /// The answer to `packet` on a sub-channel: data and resets are
    /// served, every init operation is out of order.
    fn sub_channel(packet: &Packet, bytes: &[u8]) -> Expect {
        match packet.kind {
            Kind::Srb => Expect::SrbSuccess,
            Kind::Reset(_) => Expect::Complete(echo(bytes, SUCCESS)),
            Kind::Unknown(_) => Expect::Complete(echo(bytes, INVALID_DEVICE_REQUEST)),
            _ => Expect::Complete(echo(bytes, INVALID_DEVICE_STATE)),
        }
    }
}

/// What the host did with one packet, in the model's terms.
fn observe(channel: &mut StorvspChannel, bytes: &[u8], transaction_id: u64) -> Expect {
    let memory = channel.memory().clone();
    let outcome = channel.handle(Request {
        payload: bytes,
        ranges: &[],
        transaction_id,
    });
    let check = |c: &vmbdev_device::storvsp::Completion| {
        assert_eq!(c.transaction_id, transaction_id, "transaction id echoed");
        assert!(c.bytes.len() <= 80, "host packets fit the Linux limit");
    };
    match outcome {
        Outcome::Complete(c) => {
            check(&c);
            Expect::Complete(c.bytes.to_vec())
        }
        Outcome::CreateSubChannels { completion, count } => {
            check(&completion);
            Expect::CreateSubChannels {
                bytes: completion.bytes.to_vec(),
                count,
            }
        }
        Outcome::Execute(job) => {
            let c = job.run(&memory);
            check(&c);
            let b = &c.bytes[..];
            assert_eq!(b.len(), bytes.len().min(MAX_REPLY), "SRB completion size");
            let status = u32::from_le_bytes(b[8..12].try_into().unwrap());
            // srb_status @14 (SUCCESS 1), scsi_status @15 (GOOD 0).
            assert_eq!((status, b[14] & 0x3F, b[15]), (SUCCESS, 1, 0), "TUR result");
            Expect::SrbSuccess
        }
        Outcome::Violation(_) => Expect::Violation,
    }
}

fn controller() -> Arc<Controller> {
    let controller = Arc::new(Controller::new());
    let disk = MemoryDisk::new(vec![0x5A; 64 * 512]);
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(Arc::new(disk))),
    );
    controller
}

/// Runs `steps` on a fresh channel, checking every answer and the state
/// after every step against the model.
fn run(config: StorvspConfig, steps: &[Step]) -> Result<(), TestCaseError> {
    let memory = GuestMemory::new(16 * 4096).unwrap();
    let controller = controller();
    let mut channel = StorvspChannel::new(config, controller.clone(), memory.clone()).unwrap();
    let mut model = Model::new(config);
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Packet(packet) => {
                let bytes = packet.bytes();
                let expected = model.primary(packet, &bytes);
                let got = observe(&mut channel, &bytes, packet.transaction_id);
                prop_assert_eq!(got, expected, "step {}: {:?}", i, packet);
            }
            Step::Short(bytes) => {
                let got = observe(&mut channel, bytes, 7);
                prop_assert_eq!(got, Expect::Violation, "step {}", i);
            }
            Step::SaveRestore => {
                let saved = channel.save();
                prop_assert_eq!(saved.state, model.state);
                prop_assert_eq!(saved.version, model.version);
                prop_assert!(saved.primary);
                let mut fresh =
                    StorvspChannel::new(config, controller.clone(), memory.clone()).unwrap();
                fresh.restore(saved).unwrap();
                channel = fresh;
            }
            Step::OnSubChannel(packet) => match channel.sub_channel() {
                None => prop_assert_ne!(model.state, InitState::Ready, "step {}", i),
                Some(mut sub) => {
                    prop_assert_eq!(model.state, InitState::Ready, "step {}", i);
                    let bytes = packet.bytes();
                    let got = observe(&mut sub, &bytes, packet.transaction_id);
                    prop_assert_eq!(got, Model::sub_channel(packet, &bytes), "step {}", i);
                    prop_assert_eq!(sub.state(), InitState::Ready);
                    prop_assert_eq!(sub.save().primary, false);
                }
            },
        }
        prop_assert_eq!(channel.state(), model.state, "state after step {}", i);
        prop_assert_eq!(
            channel.version().map(|v| v.0),
            model.version,
            "version after step {}",
            i
        );
        // An ENUMERATE_BUS notification exists exactly once init is done.
        prop_assert_eq!(
            channel.bus_changed().is_some(),
            model.state == InitState::Ready
        );
    }
    Ok(())
}

fn kind() -> impl Strategy<Value = Kind> {
    let version = prop_oneof![
        3 => prop::sample::select(KNOWN_VERSIONS.to_vec()),
        1 => prop::sample::select(vec![0u16, 0x0201, 0x0500, 0x0601, 0x0603, 0x0700, 0xFFFF]),
        1 => any::<u16>(),
    ];
    prop_oneof![
        3 => Just(Kind::Begin),
        4 => (version, any::<u16>())
            .prop_map(|(version, revision)| Kind::QueryVersion { version, revision }),
        3 => Just(Kind::QueryProperties),
        3 => Just(Kind::End),
        3 => prop_oneof![4 => 1u16..5, 1 => Just(0u16), 1 => any::<u16>()]
            .prop_map(|count| Kind::CreateSubChannels { count }),
        3 => Just(Kind::Srb),
        1 => prop::sample::select(vec![4u32, 5, 6]).prop_map(Kind::Reset),
        1 => prop::sample::select(vec![0u32, 1, 2, 11, 12, 14, 15, 99, u32::MAX])
            .prop_map(Kind::Unknown),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        kind(),
        // Header only, a cut body, the pre-WIN8 and WIN8 sizes, one longer.
        prop::sample::select(vec![
            12usize, 13, 14, 16, 0x30, 0x30, 0x34, 0x40, 0x40, 0x50,
        ]),
        prop::collection::vec(any::<u8>(), 0..0x44),
        any::<u64>(),
    )
        .prop_map(|(kind, size, filler, transaction_id)| {
            // An SRB needs its fields; cut SRBs are covered by other tests.
            let size = if matches!(kind, Kind::Srb) {
                size.max(0x30)
            } else {
                size
            };
            Packet {
                kind,
                size,
                filler,
                transaction_id,
            }
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        16 => packet().prop_map(Step::Packet),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Step::Short),
        2 => Just(Step::SaveRestore),
        3 => packet().prop_map(Step::OnSubChannel),
    ]
}

fn config() -> impl Strategy<Value = StorvspConfig> {
    (
        prop::sample::select(vec![4096u32, 256 * 1024, 2 * 1024 * 1024, 8 * 1024 * 1024]),
        0u16..5,
        prop::bool::weighted(0.75),
    )
        .prop_map(
            |(max_transfer_bytes, max_sub_channels, multi_channel)| StorvspConfig {
                max_transfer_bytes,
                max_sub_channels,
                multi_channel,
            },
        )
}

/// The init sequence a Linux guest sends, as steps, with `size`-byte
/// packets: BEGIN, versions newest first until one is taken, PROPERTIES,
/// END.
fn linux_init(size: usize, versions: &[u16]) -> Vec<Step> {
    let packet = |kind| {
        Step::Packet(Packet {
            kind,
            size,
            filler: vec![],
            transaction_id: 1,
        })
    };
    let mut steps = vec![packet(Kind::Begin)];
    for &version in versions {
        steps.push(packet(Kind::QueryVersion {
            version,
            revision: 0,
        }));
    }
    steps.push(packet(Kind::QueryProperties));
    steps.push(packet(Kind::End));
    steps
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random packet sequences from a fresh channel.
    #[test]
    fn init_handshake_matches_model(
        config in config(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run(config, &steps)?;
    }

    /// Random packets after a complete init (with a random version
    /// fallback on the way), so that the initialized state, sub-channel
    /// creation and repeats after init get as many steps as the handshake.
    #[test]
    fn after_init_matches_model(
        config in config(),
        size in prop::sample::select(vec![0x30usize, 0x40]),
        fallback in prop::collection::vec(any::<u16>(), 0..3),
        version in prop::sample::select(KNOWN_VERSIONS.to_vec()),
        steps in prop::collection::vec(step(), 1..30),
    ) {
        let mut versions = fallback;
        versions.push(version);
        let mut all = linux_init(size, &versions);
        all.extend(steps);
        run(config, &all)?;
    }
}

/// The model itself: the sequences real guests send reach `Ready`, with
/// the completions the wire facts give (so the property above compares
/// against something that is right where it matters most).
#[test]
fn model_accepts_the_real_guest_sequences() {
    let config = StorvspConfig {
        max_transfer_bytes: 256 * 1024,
        max_sub_channels: 3,
        multi_channel: true,
    };
    // UEFI: 0x30 packets, 0x0600 only. Linux: 0x40, 0x0602 first.
    for (size, versions) in [(0x30, vec![0x0600]), (0x40, vec![0x0602])] {
        let mut model = Model::new(config);
        for step in linux_init(size, &versions) {
            let Step::Packet(packet) = step else {
                unreachable!()
            };
            let bytes = packet.bytes();
            let Expect::Complete(reply) = model.primary(&packet, &bytes) else {
                panic!("init gets a completion")
            };
            assert_eq!(reply.len(), size);
            assert_eq!(&reply[8..12], &SUCCESS.to_le_bytes());
        }
        assert_eq!(model.state, InitState::Ready);
    }
    let steps = linux_init(0x40, &[0x0602]);
    run(config, &steps).unwrap();
}

/// Data and init repeats around END_INITIALIZATION, written out: an SRB
/// one step before END is refused with INVALID_DEVICE_STATE and the
/// channel still completes init; the same SRB after END runs.
#[test]
fn srb_before_end_initialization_is_refused() {
    let config = StorvspConfig::default();
    let srb = Packet {
        kind: Kind::Srb,
        size: 0x40,
        filler: vec![],
        transaction_id: 3,
    };
    let mut steps = linux_init(0x40, &[0x0602]);
    let end = steps.pop().unwrap();
    steps.push(Step::Packet(srb.clone()));
    steps.push(Step::OnSubChannel(srb.clone()));
    steps.push(end.clone());
    steps.push(end);
    steps.push(Step::Packet(srb.clone()));
    steps.push(Step::OnSubChannel(srb));
    run(config, &steps).unwrap();
    let mut model = Model::new(config);
    let mut p = Packet {
        kind: Kind::Srb,
        size: 0x40,
        filler: vec![],
        transaction_id: 0,
    };
    let bytes = p.bytes();
    assert_eq!(
        model.primary(&p, &bytes),
        Expect::Complete(echo(&bytes, INVALID_DEVICE_STATE))
    );
    p.kind = Kind::End;
    assert!(matches!(model.primary(&p, &p.bytes()), Expect::Complete(_)));
    assert_eq!(
        model.state,
        InitState::AwaitBegin,
        "END before BEGIN changes nothing"
    );
}
