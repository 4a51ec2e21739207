//! A storvsp session over real rings: a primary channel (loopback) and
//! sub-channels opened on rings in the same guest memory, driven by
//! arbitrary init packets, SRBs of every opcode with arbitrary fields and
//! arbitrary GPA-direct ranges, raw payloads, raw ring bytes, control-page
//! tampering and channel resets. The target plays the glue: reserve
//! completion space, read a packet, `StorvspChannel::handle`, run the job,
//! send the completion on the same channel.
//!
//! Invariants: no panic; every completion is at most 80 bytes, exactly the
//! request's size (capped at 0x40), a COMPLETE_IO with flags 0, echoing the
//! transaction id; an SRB completion never reports more bytes or sense
//! than asked; sub-channels come only from an initialized primary and take
//! SRBs at once. Data: READ(10)/(16) of a present disk that succeeds puts
//! the disk's bytes in the guest buffer; a command that is not a read
//! leaves the buffer untouched. With a clean ring, the guest receives
//! exactly the completions sent, in order.

use crate::decode_and_run;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::channel::{Channel, Field, RangeSpec, WireRange};
use crate::{le32, mem_device};
use arbitrary::Arbitrary;
use vmbdev_block::MemoryDisk;
use vmbdev_device::scsi_disk::ScsiDisk;
use vmbdev_device::storvsp::{
    Completion, Controller, LunAddress, Outcome, Request, StorvspChannel, StorvspConfig,
};
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, GpaRange, GuestMemory, OutgoingPacket, PAGE_SIZE,
    PacketKind, Side, in_band_ring_len,
};

/// Disks: (address, sector size, bytes).
const DISKS: [((u8, u8, u8), u32, usize); 2] =
    [((0, 0, 0), 512, 64 * 1024), ((0, 1, 0), 4096, 128 * 1024)];

fn disk_bytes(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|b| (b / 512 + b * 13 + i) as u8).collect()
}

/// The disks' bytes, built once (per-byte loops are slow under coverage
/// instrumentation).
fn disk_images() -> &'static [Arc<MemoryDisk>] {
    static DISK_IMAGES: std::sync::OnceLock<Vec<Arc<MemoryDisk>>> = std::sync::OnceLock::new();
    DISK_IMAGES.get_or_init(|| {
        DISKS
            .iter()
            .enumerate()
            .map(|(i, (_, sector, len))| Arc::new(mem_device(disk_bytes(i, *len), *sector)))
            .collect()
    })
}

/// Opcodes worth picking often.
const OPCODES: [u8; 28] = [
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x41, 0x42,
    0x55, 0x5A, 0x88, 0x8A, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA8, 0xAA, 0x4D,
];

#[derive(Debug, Arbitrary)]
enum Size {
    Win8,
    PreWin8,
    Any(u8),
}

impl Size {
    fn len(&self) -> usize {
        match self {
            Size::Win8 => 0x40,
            Size::PreWin8 => 0x30,
            Size::Any(n) => usize::from(*n % 0x60),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Srb {
    opcode: u8,
    pick_opcode: bool,
    cdb: [u8; 16],
    cdb_length: u8,
    target: (u8, u8, u8),
    data_in: u8,
    transfer_length: u32,
    small_transfer: bool,
    sense_info_length: u8,
    buffer: Vec<RangeSpec>,
    /// Use the buffer's length as the transfer length.
    exact_length: bool,
}

#[derive(Debug, Arbitrary)]
enum Action {
    Begin(Size),
    Version(Option<u16>, Size),
    Properties(Size),
    End(Size),
    CreateSubChannels(u16, Size),
    Reset(u8, Size),
    Srb {
        channel: u8,
        srb: Srb,
        size: Size,
        transaction_id: u64,
    },
    Raw {
        channel: u8,
        payload: Vec<u8>,
        ranges: Vec<RangeSpec>,
        completion: bool,
        transaction_id: u64,
    },
    RawPacket(u8, Vec<u8>, u16),
    Tamper(Field, u32),
    Reopen,
    Drain,
    Pump,
}

#[derive(Debug, Arbitrary)]
struct Input {
    max_transfer: u32,
    max_sub_channels: u8,
    multi_channel: bool,
    scatter: bool,
    actions: Vec<Action>,
}

/// A request the guest sent that the host has not yet completed, with
/// what the data checks need.
#[derive(Debug, Clone)]
struct Pending {
    /// Buffer ranges the guest allocated (all from its allocator).
    buffer: Option<GpaRange>,
}

/// One channel's rings and state machine.
struct Lane {
    host: Endpoint,
    guest: Endpoint,
    state: StorvspChannel,
    dead: bool,
    tampered: bool,
    sent: VecDeque<Completion>,
    /// Transaction ids the guest sent, in order (clean rings only).
    pending: VecDeque<(u64, Pending)>,
}

struct Session {
    primary_rig: Channel,
    lanes: Vec<Lane>,
    memory: GuestMemory,
    disks: &'static [Arc<MemoryDisk>],
}

/// A marker the guest fills its data buffers with.
const MARKER: u8 = 0xA5;

fn check_completion(c: &Completion, tid: u64, payload_len: usize) {
    assert!(c.bytes.len() <= 80, "completion of {} bytes", c.bytes.len());
    assert_eq!(c.bytes.len(), payload_len.min(0x40), "completion size");
    assert_eq!(c.transaction_id, tid, "transaction id");
    if c.bytes.len() >= 8 {
        assert_eq!(le32(&c.bytes, 0), 1, "operation COMPLETE_IO");
        assert_eq!(le32(&c.bytes, 4), 0, "flags");
    }
}

impl Session {
    fn lane_index(&self, channel: u8) -> usize {
        usize::from(channel) % self.lanes.len()
    }

    fn send(
        &mut self,
        lane: usize,
        payload: &[u8],
        ranges: &[WireRange],
        tid: u64,
        pending: Pending,
    ) {
        let all_valid: Option<Vec<GpaRange>> = ranges.iter().map(|w| w.range.clone()).collect();
        let sent = match (ranges.is_empty(), all_valid) {
            (true, _) => {
                let packet = OutgoingPacket::request(tid, payload);
                matches!(self.lanes[lane].guest.try_write(&packet), Ok(true))
            }
            (false, Some(valid)) => {
                let packet = OutgoingPacket::gpa_direct(tid, &valid, payload);
                matches!(self.lanes[lane].guest.try_write(&packet), Ok(true))
            }
            (false, None) => {
                // Invalid ranges cannot be built by the ring writer: write
                // the packet by hand.
                let mut ext = Vec::new();
                for w in ranges {
                    ext.extend_from_slice(&w.bytes);
                }
                let header = 24 + ext.len();
                let total = (header + payload.len()).next_multiple_of(8);
                let mut bytes = vec![0u8; total + 8];
                bytes[0..2].copy_from_slice(&9u16.to_le_bytes());
                bytes[2..4].copy_from_slice(&((header / 8) as u16).to_le_bytes());
                bytes[4..6].copy_from_slice(&((total / 8) as u16).to_le_bytes());
                bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
                bytes[8..16].copy_from_slice(&tid.to_le_bytes());
                bytes[20..24].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
                bytes[24..header].copy_from_slice(&ext[..header - 24]);
                bytes[header..header + payload.len()].copy_from_slice(payload);
                self.raw(lane, &bytes, (total / 8 + 1) as u16);
                return;
            }
        };
        if sent && !self.lanes[lane].tampered {
            self.lanes[lane].pending.push_back((tid, pending));
        }
    }

    fn raw(&mut self, lane: usize, bytes: &[u8], advance8: u16) {
        let lane = &mut self.lanes[lane];
        lane.tampered = true;
        let half = lane.host.reader.half().clone();
        let Ok(write) = half.load_write_index() else {
            return;
        };
        let len = bytes.len().min(half.size() as usize);
        if half.write_at(write, &bytes[..len]).is_ok() {
            let next = half.advance(write, u32::from(advance8) * 8);
            half.control()
                .set_write_index(next, std::sync::atomic::Ordering::Release);
        }
    }

    fn open_sub_channel(&mut self, state: StorvspChannel) {
        // Rings in the same guest memory: 1 + 4 pages each way.
        let Ok(pages) = self.primary_rig.lb.pages.alloc(10) else {
            return;
        };
        for &p in &pages {
            let _ = self.memory.fill(p * PAGE_SIZE as u64, PAGE_SIZE as u64, 0);
        }
        let host_bell: Arc<dyn Doorbell> = Arc::new(EventDoorbell::new());
        let guest_bell: Arc<dyn Doorbell> = Arc::new(EventDoorbell::new());
        let host = Endpoint::open(
            Side::Host,
            &self.memory,
            &pages,
            5,
            host_bell.clone(),
            guest_bell.clone(),
        )
        .expect("sub-channel host endpoint");
        let guest = Endpoint::open(Side::Guest, &self.memory, &pages, 5, guest_bell, host_bell)
            .expect("sub-channel guest endpoint");
        self.lanes.push(Lane {
            host,
            guest,
            state,
            dead: false,
            tampered: false,
            sent: VecDeque::new(),
            pending: VecDeque::new(),
        });
    }

    fn pump(&mut self) {
        for lane in 0..self.lanes.len() {
            self.pump_lane(lane);
        }
    }

    fn pump_lane(&mut self, index: usize) {
        for _ in 0..64 {
            let lane = &mut self.lanes[index];
            if lane.dead {
                return;
            }
            match lane.host.writer.free() {
                Ok(free) if free as usize > in_band_ring_len(80) => {}
                Ok(_) => return,
                Err(_) => {
                    lane.dead = true;
                    return;
                }
            }
            let packet = match lane.host.try_read() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(_) => {
                    lane.dead = true;
                    return;
                }
            };
            let ranges = match &packet.kind {
                PacketKind::GpaDirect(r) => r.clone(),
                _ => Vec::new(),
            };
            let tid = packet.transaction_id;
            let pending = if lane.tampered {
                None
            } else {
                let (sent_tid, pending) =
                    lane.pending.pop_front().expect("a packet the guest sent");
                assert_eq!(sent_tid, tid, "packet order");
                Some(pending)
            };
            let memory = lane.state.memory().clone();
            let outcome = lane.state.handle(Request {
                payload: &packet.payload,
                ranges: &ranges,
                transaction_id: tid,
            });
            let completion = match outcome {
                Outcome::Complete(c) => c,
                Outcome::CreateSubChannels { completion, count } => {
                    assert!(count > 0, "zero sub-channels offered");
                    let subs: Vec<StorvspChannel> = (0..count.min(3))
                        .map(|_| lane.state.sub_channel().expect("sub-channel after init"))
                        .collect();
                    for sub in subs {
                        self.open_sub_channel(sub);
                    }
                    completion
                }
                Outcome::Execute(job) => {
                    assert_eq!(job.transaction_id(), tid);
                    let request_srb = packet.payload.get(12..).unwrap_or_default().to_vec();
                    let c = job.run(&memory);
                    if let Some(pending) = &pending {
                        self.check_srb(&request_srb, &c, pending);
                    }
                    c
                }
                Outcome::Violation(_) => {
                    assert!(packet.payload.len() < 12, "violation for a full header");
                    continue;
                }
            };
            check_completion(&completion, tid, packet.payload.len());
            let lane = &mut self.lanes[index];
            match lane
                .host
                .try_write(&OutgoingPacket::completion(tid, &completion.bytes))
            {
                Ok(true) => lane.sent.push_back(completion),
                Ok(false) | Err(_) => {
                    assert!(lane.tampered, "reserved completion space vanished");
                    lane.dead = true;
                    return;
                }
            }
        }
    }

    fn check_srb(&self, request: &[u8], c: &Completion, pending: &Pending) {
        let asked_len = le32(request, 12);
        let asked_sense = request.get(9).copied().unwrap_or(0);
        let srb = c.bytes.get(12..).unwrap_or_default();
        if srb.len() < 0x24 {
            return;
        }
        let got_len = le32(srb, 12);
        assert!(got_len <= asked_len, "moved {got_len} bytes of {asked_len}");
        assert!(srb[9] <= asked_sense, "sense {} of {asked_sense}", srb[9]);
        let Some(buffer) = &pending.buffer else {
            return;
        };
        if self.primary_rig.tampered {
            return;
        }
        let data_in = request.get(10).copied().unwrap_or(0);
        let mut now = vec![0u8; buffer.byte_count() as usize];
        if buffer.read_at(&self.memory, 0, &mut now).is_err() {
            return;
        }
        if data_in != 1 {
            assert!(
                now == vec![MARKER; now.len()],
                "non-read SRB wrote guest memory"
            );
            return;
        }
        let cdb = &request[16..32];
        let addr = (request[5], request[6], request[7]);
        let status = srb[2] & 0x3F;
        let Some(disk) = DISKS.iter().position(|d| d.0 == addr) else {
            return;
        };
        let (lba, blocks) = match cdb[0] {
            0x28 => (
                u64::from(u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]])),
                u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
            ),
            0x88 => (
                u64::from_be_bytes(cdb[2..10].try_into().expect("8 bytes")),
                u64::from(u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]])),
            ),
            _ => return,
        };
        if status != 1 || request[8] < if cdb[0] == 0x28 { 10 } else { 16 } {
            return;
        }
        let sector = u64::from(DISKS[disk].1);
        let want_len = blocks * sector;
        assert_eq!(u64::from(got_len), want_len, "READ moved bytes");
        let start = (lba * sector) as usize;
        let expected = &self.disks[disk].bytes()[start..start + want_len as usize];
        assert_eq!(
            &now[..want_len as usize],
            expected,
            "READ data in guest memory"
        );
    }

    fn drain(&mut self) {
        for lane in &mut self.lanes {
            for _ in 0..64 {
                let packet = match lane.guest.try_read() {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => break,
                };
                if lane.tampered {
                    continue;
                }
                let expected = lane
                    .sent
                    .pop_front()
                    .expect("guest received an unsent completion");
                assert_eq!(packet.kind, PacketKind::Completion);
                assert_eq!(packet.transaction_id, expected.transaction_id);
                let n = expected.bytes.len();
                assert_eq!(
                    &packet.payload[..n],
                    &expected.bytes[..],
                    "completion changed in transit"
                );
            }
        }
    }

    fn control(&mut self, operation: u32, body: &[u8], size: &Size, tid: u64) {
        let mut payload = vec![0u8; size.len()];
        let mut full = operation.to_le_bytes().to_vec();
        full.extend_from_slice(&1u32.to_le_bytes());
        full.extend_from_slice(&0u32.to_le_bytes());
        full.extend_from_slice(body);
        full.resize(0x40, 0);
        let n = payload.len().min(full.len());
        payload[..n].copy_from_slice(&full[..n]);
        self.send(0, &payload, &[], tid, Pending { buffer: None });
    }

    fn srb(&mut self, channel: u8, srb: &Srb, size: &Size, tid: u64) {
        let lane = self.lane_index(channel);
        let raw_before = self.primary_rig.tampered;
        self.primary_rig.tampered = false;
        let wire: Vec<WireRange> = srb
            .buffer
            .iter()
            .take(3)
            .map(|r| self.primary_rig.wire_range(r))
            .collect();
        let raw_used = self.primary_rig.tampered;
        // Once raw ranges were used, any guest page may have been written
        // by a command: the data checks are off for the rest of the run.
        self.primary_rig.tampered = raw_before || raw_used;
        let buffer = if wire.len() == 1 && !raw_used {
            wire[0].range.clone()
        } else {
            None
        };
        if let Some(b) = &buffer {
            let _ = b.write_at(&self.memory, 0, &vec![MARKER; b.byte_count() as usize]);
        }
        if raw_used {
            // A raw range may alias the rings.
            self.lanes[lane].tampered = true;
        }
        let transfer = if srb.exact_length {
            buffer.as_ref().map_or(0, |b| b.byte_count())
        } else if srb.small_transfer {
            srb.transfer_length % 0x20000
        } else {
            srb.transfer_length
        };
        let mut cdb = srb.cdb;
        cdb[0] = if srb.pick_opcode {
            OPCODES[usize::from(srb.opcode) % OPCODES.len()]
        } else {
            srb.opcode
        };
        let mut body = [0u8; 0x34];
        body[0..2].copy_from_slice(&0x34u16.to_le_bytes());
        body[5] = srb.target.0 % 2;
        body[6] = srb.target.1 % 3;
        body[7] = srb.target.2 % 2;
        body[8] = if srb.cdb_length < 0xF0 {
            [6, 10, 12, 16][usize::from(srb.cdb_length) % 4]
        } else {
            srb.cdb_length
        };
        body[9] = srb.sense_info_length;
        body[10] = if srb.data_in < 0xF0 {
            srb.data_in % 3
        } else {
            srb.data_in
        };
        body[12..16].copy_from_slice(&transfer.to_le_bytes());
        body[16..32].copy_from_slice(&cdb);
        let mut payload = 3u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&body);
        payload.truncate(size.len().clamp(12, 0x40));
        let pending = Pending { buffer };
        self.send(lane, &payload, &wire, tid, pending);
    }
}

fn check(input: Input) {
    let rig = Channel::new(input.scatter, 160);
    let memory = rig.lb.memory.clone();
    let controller = Arc::new(Controller::new());
    let disks = disk_images();
    for (((path, target, lun), _, _), device) in DISKS.iter().zip(disks) {
        let device: Arc<dyn vmbdev_block::BlockDevice> = device.clone();
        controller.insert(
            LunAddress {
                path: *path,
                target: *target,
                lun: *lun,
            },
            Arc::new(ScsiDisk::new(device)),
        );
    }
    let config = StorvspConfig {
        max_transfer_bytes: input.max_transfer % (8 << 20) + 1,
        max_sub_channels: u16::from(input.max_sub_channels % 8),
        multi_channel: input.multi_channel,
    };
    let state = StorvspChannel::new(config, controller.clone(), memory.clone()).expect("config");
    let (host, guest) = {
        // The loopback's endpoints become lane 0; the rig keeps memory and
        // the page allocator.
        let bell_h: Arc<dyn Doorbell> = rig.lb.host_doorbell.clone();
        let bell_g: Arc<dyn Doorbell> = rig.lb.guest_doorbell.clone();
        let open = |side, a: &Arc<dyn Doorbell>, b: &Arc<dyn Doorbell>| {
            Endpoint::open_gpadl(
                side,
                &memory,
                &rig.lb.registry,
                rig.lb.gpadl_handle,
                rig.lb.downstream_offset,
                a.clone(),
                b.clone(),
            )
            .expect("endpoint")
        };
        (
            open(Side::Host, &bell_h, &bell_g),
            open(Side::Guest, &bell_g, &bell_h),
        )
    };
    let mut s = Session {
        primary_rig: rig,
        lanes: vec![Lane {
            host,
            guest,
            state,
            dead: false,
            tampered: false,
            sent: VecDeque::new(),
            pending: VecDeque::new(),
        }],
        memory,
        disks,
    };
    let mut tid = 0x100u64;
    for action in input.actions.iter().take(96) {
        tid += 1;
        match action {
            Action::Begin(size) => s.control(7, &[], size, tid),
            Action::Version(v, size) => {
                let v = v.unwrap_or(0x0602);
                s.control(9, &[v as u8, (v >> 8) as u8, 0, 0], size, tid)
            }
            Action::Properties(size) => s.control(10, &[], size, tid),
            Action::End(size) => s.control(8, &[], size, tid),
            Action::CreateSubChannels(n, size) => s.control(13, &n.to_le_bytes(), size, tid),
            Action::Reset(op, size) => s.control(u32::from(*op % 16), &[], size, tid),
            Action::Srb {
                channel,
                srb,
                size,
                transaction_id,
            } => {
                let _ = transaction_id;
                s.srb(*channel, srb, size, tid)
            }
            Action::Raw {
                channel,
                payload,
                ranges,
                completion,
                transaction_id,
            } => {
                let lane = s.lane_index(*channel);
                let wire: Vec<WireRange> = ranges
                    .iter()
                    .take(3)
                    .map(|r| s.primary_rig.wire_range(r))
                    .collect();
                s.lanes[lane].tampered = true;
                // Raw payloads may be data-in SRBs on guest pages.
                s.primary_rig.tampered = true;
                let payload: Vec<u8> = payload.iter().take(200).copied().collect();
                let _ = completion;
                s.send(
                    lane,
                    &payload,
                    &wire,
                    *transaction_id,
                    Pending { buffer: None },
                );
            }
            Action::RawPacket(channel, bytes, advance8) => {
                let lane = s.lane_index(*channel);
                s.primary_rig.tampered = true;
                s.raw(lane, bytes, *advance8);
            }
            Action::Tamper(field, value) => {
                let aliased = s.primary_rig.tampered;
                s.primary_rig.tamper(*field, *value);
                s.primary_rig.tampered = aliased;
                // The rig's endpoints share lane 0's control pages.
                s.lanes[0].tampered = true;
            }
            Action::Reopen => {
                // A channel reset: fresh rings, a fresh state machine, no
                // sub-channels.
                let aliased = s.primary_rig.tampered;
                s.primary_rig.reopen();
                s.primary_rig.tampered = aliased;
                let bell_h: Arc<dyn Doorbell> = s.primary_rig.lb.host_doorbell.clone();
                let bell_g: Arc<dyn Doorbell> = s.primary_rig.lb.guest_doorbell.clone();
                let rig = &s.primary_rig;
                let open = |side, a: &Arc<dyn Doorbell>, b: &Arc<dyn Doorbell>| {
                    Endpoint::open_gpadl(
                        side,
                        &s.memory,
                        &rig.lb.registry,
                        rig.lb.gpadl_handle,
                        rig.lb.downstream_offset,
                        a.clone(),
                        b.clone(),
                    )
                    .expect("endpoint")
                };
                let host = open(Side::Host, &bell_h, &bell_g);
                let guest = open(Side::Guest, &bell_g, &bell_h);
                let state = StorvspChannel::new(config, controller.clone(), s.memory.clone())
                    .expect("config");
                s.lanes = vec![Lane {
                    host,
                    guest,
                    state,
                    dead: false,
                    tampered: false,
                    sent: VecDeque::new(),
                    pending: VecDeque::new(),
                }];
            }
            Action::Drain => s.drain(),
            Action::Pump => s.pump(),
        }
    }
    s.pump();
    s.drain();
    s.pump();
    s.drain();
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it; a failed check panics.
pub fn run(data: &[u8]) -> crate::Outcome {
    decode_and_run::<Input>(data, check)
}
