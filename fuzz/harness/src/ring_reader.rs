//! The host's packet reader against arbitrary control-page values and ring
//! bytes. Every outcome is compared with an independent model of ring.md's
//! checks (`crate::model`): a packet the reader returns must be one
//! the model accepts, with the same fields and payload; an error must be a
//! packet the model refuses; the published read index must be the model's
//! position (so it stays < size and 8-aligned). Pages around the ring are
//! filled with a marker, so a read outside the ring's own pages shows up as
//! a payload mismatch.

use crate::{Outcome, decode_and_run};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::model::{ModelPacket, next_packet};
use arbitrary::Arbitrary;
use vmbdev_ring::{
    EventDoorbell, GuestMemory, PAGE_SIZE, PacketKind, PacketView, RingHalf, RingReader,
};

/// Marker filling every page that is not part of the ring.
const OUTSIDE: u8 = 0xEE;

#[derive(Debug, Arbitrary)]
enum Index {
    /// An 8-aligned value inside a ring of up to 4 pages (mostly valid).
    Slot(u16),
    /// Anything.
    Raw(u32),
}

impl Index {
    fn value(&self, size: u32) -> u32 {
        match *self {
            Index::Slot(s) => (u32::from(s) * 8) % size,
            Index::Raw(v) => v,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct PacketSpec {
    /// Index into the valid types, or a raw type.
    packet_type: u16,
    data_offset8: u8,
    extra8: u8,
    flags: u16,
    transaction_id: u64,
    /// Written after the descriptor (extension, ranges, payload).
    body: Vec<u8>,
    /// Publish the write index right after the packet's trailer.
    publish: bool,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Read,
    Batch(u8),
    SetWrite(Index),
    SetRead(Index),
    SetPending(u32),
    SetMask(u32),
    /// Raw bytes at a data offset.
    Poke {
        at: u16,
        bytes: Vec<u8>,
    },
    /// A mostly well-formed packet at the reader's position.
    Packet(PacketSpec),
}

#[derive(Debug, Arbitrary)]
struct Input {
    data_pages: u8,
    scatter: bool,
    read: Index,
    write: Index,
    ring: Vec<u8>,
    ops: Vec<Op>,
}

struct Rig {
    memory: GuestMemory,
    /// Data pages in ring order.
    data_pages: Vec<u64>,
    half: RingHalf,
    size: u32,
}

impl Rig {
    fn ring_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size as usize];
        for (i, gpn) in self.data_pages.iter().enumerate() {
            self.memory
                .read(
                    gpn * PAGE_SIZE as u64,
                    &mut out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                )
                .expect("ring page inside memory");
        }
        out
    }

    fn poke(&self, at: u32, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let offset = (at as usize + i) % self.size as usize;
            let gpn = self.data_pages[offset / PAGE_SIZE];
            let gpa = gpn * PAGE_SIZE as u64 + (offset % PAGE_SIZE) as u64;
            self.memory
                .write(gpa, &[*b])
                .expect("ring page inside memory");
        }
    }
}

fn kind_type(kind: &PacketKind) -> u16 {
    match kind {
        PacketKind::InBand => 6,
        PacketKind::TransferPages { .. } => 7,
        PacketKind::GpaDirect(_) => 9,
        PacketKind::Completion => 0xB,
    }
}

fn assert_same(view: &PacketView<'_>, model: &ModelPacket) {
    assert_eq!(kind_type(&view.kind), model.packet_type, "packet type");
    assert_eq!(view.transaction_id, model.transaction_id, "transaction id");
    assert_eq!(view.completion_requested, model.completion_requested);
    assert_eq!(view.payload, &model.payload[..], "payload");
    match &view.kind {
        PacketKind::GpaDirect(ranges) => {
            let got: Vec<(u32, u32, Vec<u64>)> = ranges
                .iter()
                .map(|r| (r.byte_count(), r.byte_offset(), r.gpns().to_vec()))
                .collect();
            assert_eq!(got, model.gpa_ranges, "GPA ranges");
        }
        PacketKind::TransferPages { ranges, .. } => {
            let got: Vec<(u32, u32)> = ranges
                .iter()
                .map(|r| (r.byte_count, r.byte_offset))
                .collect();
            assert_eq!(got, model.transfer_ranges, "transfer ranges");
        }
        PacketKind::InBand | PacketKind::Completion => {}
    }
}

/// Runs one read operation of up to `max` packets on the reader and the
/// model; returns the model's new position.
fn read_and_compare(rig: &Rig, reader: &mut RingReader, position: u32, max: usize) -> u32 {
    let data = rig.ring_bytes();
    let raw_write = rig.half.control().write_index(Ordering::Relaxed);
    let write_valid = raw_write < rig.size && raw_write % 8 == 0;
    // The model's sequence of packets (stopping at the first refusal).
    let mut expected = Vec::new();
    let mut model_error = false;
    let mut at = position;
    if !write_valid {
        // The reader loads the write index before anything else.
        model_error = true;
    } else {
        while expected.len() < max {
            match next_packet(&data, raw_write, at) {
                Ok(Some(p)) => {
                    at = p.next;
                    expected.push(p);
                }
                Ok(None) => break,
                Err(()) => {
                    model_error = true;
                    break;
                }
            }
        }
    }
    let mut seen = 0usize;
    let result = reader.try_read_batch(max, |view| {
        let model = expected
            .get(seen)
            .unwrap_or_else(|| panic!("reader returned packet {seen} the model refuses: {view:?}"));
        assert_same(&view, model);
        seen += 1;
    });
    match result {
        Ok(n) => {
            assert!(!model_error, "reader accepted what the model refuses");
            assert_eq!(n, expected.len(), "packet count");
        }
        Err(e) => {
            // A zero-packet batch never fails in the model.
            assert!(model_error, "reader refused what the model accepts: {e}");
            assert_eq!(seen, expected.len(), "packets before the error");
        }
    }
    if seen > 0 {
        let published = rig.half.control().read_index(Ordering::Relaxed);
        assert_eq!(published, at, "published read index");
        assert!(published < rig.size && published % 8 == 0);
    }
    if seen > 0 { at } else { position }
}

fn packet_bytes(spec: &PacketSpec) -> Vec<u8> {
    const TYPES: [u16; 4] = [6, 7, 9, 0xB];
    let packet_type = if spec.packet_type < 0xF000 {
        TYPES[usize::from(spec.packet_type) % 4]
    } else {
        spec.packet_type
    };
    let data_offset8 = u16::from(spec.data_offset8 % 8) + 2;
    let length8 = data_offset8 + u16::from(spec.extra8 % 64);
    let mut out = Vec::with_capacity(usize::from(length8) * 8 + 8);
    out.extend_from_slice(&packet_type.to_le_bytes());
    out.extend_from_slice(&data_offset8.to_le_bytes());
    out.extend_from_slice(&length8.to_le_bytes());
    let flags = if spec.flags < 0xF000 {
        spec.flags & 1
    } else {
        spec.flags
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&spec.transaction_id.to_le_bytes());
    out.extend_from_slice(&spec.body);
    out.resize(usize::from(length8) * 8, 0);
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

fn check(input: Input) {
    let data_pages = u64::from(input.data_pages % 4) + 1;
    // Page 0: a marker page; then the control page, the data pages and
    // another marker page.
    let total_pages = data_pages + 3;
    let memory = GuestMemory::new(total_pages * PAGE_SIZE as u64).expect("guest memory");
    memory
        .fill(0, total_pages * PAGE_SIZE as u64, OUTSIDE)
        .expect("fill");
    memory
        .fill(PAGE_SIZE as u64, PAGE_SIZE as u64, 0)
        .expect("fill");
    let mut data: Vec<u64> = (2..2 + data_pages).collect();
    if input.scatter {
        data.reverse();
    }
    let mut pages = vec![1u64];
    pages.extend(&data);
    let half = RingHalf::new(&memory, &pages).expect("ring half");
    let size = half.size();
    let rig = Rig {
        memory: memory.clone(),
        data_pages: data,
        half: half.clone(),
        size,
    };
    rig.poke(0, &input.ring[..input.ring.len().min(size as usize)]);
    let control = half.control();
    control.set_read_index(input.read.value(size), Ordering::Relaxed);
    control.set_write_index(input.write.value(size), Ordering::Relaxed);
    let bell = Arc::new(EventDoorbell::new());
    let start = input.read.value(size);
    let mut reader = match RingReader::new(half.clone(), bell.clone(), bell) {
        Ok(r) => {
            assert!(
                start < size && start % 8 == 0,
                "reader accepted read index {start}"
            );
            r
        }
        Err(_) => {
            assert!(
                start >= size || start % 8 != 0,
                "reader refused read index {start}"
            );
            return;
        }
    };
    let mut position = start;
    for op in input.ops.iter().take(64) {
        match op {
            Op::Read => position = read_and_compare(&rig, &mut reader, position, 1),
            Op::Batch(n) => {
                position = read_and_compare(&rig, &mut reader, position, usize::from(*n % 16))
            }
            Op::SetWrite(i) => control.set_write_index(i.value(size), Ordering::Relaxed),
            Op::SetRead(i) => control.set_read_index(i.value(size), Ordering::Relaxed),
            Op::SetPending(v) => control.set_pending_send_size(*v, Ordering::Relaxed),
            Op::SetMask(v) => control.set_interrupt_mask(*v, Ordering::Relaxed),
            Op::Poke { at, bytes } => rig.poke(
                u32::from(*at) % size,
                &bytes[..bytes.len().min(size as usize)],
            ),
            Op::Packet(spec) => {
                let bytes = packet_bytes(spec);
                if bytes.len() < size as usize {
                    rig.poke(position, &bytes);
                    if spec.publish {
                        let end = (position as usize + bytes.len()) % size as usize;
                        control.set_write_index(end as u32, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    // The memory outside the ring is never written by a reader.
    let mut marker = vec![0u8; PAGE_SIZE];
    memory.read(0, &mut marker).expect("read");
    assert!(
        marker.iter().all(|&b| b == OUTSIDE),
        "page before the ring written"
    );
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it; a failed check panics.
pub fn run(data: &[u8]) -> Outcome {
    decode_and_run::<Input>(data, check)
}
