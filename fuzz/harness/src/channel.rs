//! A real loopback channel driven from both ends by a fuzz target: the
//! guest side sends what the input says (well-formed or not), the target
//! plays the device glue on the host side. Also the guest's hostile moves:
//! raw ring bytes, control-page tampering and reopening with fresh rings.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arbitrary::Arbitrary;
use vmbdev_ring::{
    Doorbell, Endpoint, GpaRange, Loopback, LoopbackConfig, OutgoingPacket, PAGE_SIZE, Side,
    loopback,
};

/// Which control-page field a hostile guest overwrites.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Field {
    /// Host's incoming write index (the guest owns it).
    IncomingWrite,
    /// Host's incoming read index (the host owns it).
    IncomingRead,
    /// Host's outgoing write index (the host owns it).
    OutgoingWrite,
    /// Host's outgoing read index (the guest owns it).
    OutgoingRead,
    /// Host's outgoing pending send size.
    OutgoingPending,
    /// Host's incoming interrupt mask.
    IncomingMask,
}

/// A guest-described GPA range: pages from the guest's allocator, or
/// arbitrary wire fields.
#[derive(Debug, Clone, Arbitrary)]
pub enum RangeSpec {
    /// `pages` fresh guest pages (1..=8), offset and count within them.
    Alloc {
        /// Pages to allocate (taken modulo 8, plus 1).
        pages: u8,
        /// Byte offset in the first page (made even, < 4096).
        byte_offset: u16,
        /// Byte count (clamped to what the pages hold; 0 becomes 1).
        byte_count: u32,
    },
    /// Raw wire fields; the GPN list is used as given.
    Raw {
        /// Byte count.
        byte_count: u32,
        /// Byte offset.
        byte_offset: u32,
        /// Page numbers.
        gpns: Vec<u64>,
    },
}

/// A range in wire form and, when it is valid, as a [`GpaRange`].
#[derive(Debug, Clone)]
pub struct WireRange {
    /// The encoded range.
    pub bytes: Vec<u8>,
    /// The parsed range, when the fields are valid.
    pub range: Option<GpaRange>,
}

/// The channel and the guest's page allocator.
pub struct Channel {
    /// The loopback pair.
    pub lb: Loopback,
    /// Whether the guest did something that breaks request/reply pairing
    /// (raw bytes, tampering) since the last reopen.
    pub tampered: bool,
    /// Whether the host glue stopped the channel (a ring or framing
    /// error); only a reopen revives it.
    pub dead: bool,
}

/// Ring data pages per direction (16 KiB, as the UEFI client uses).
pub const RING_PAGES: u32 = 4;

impl Channel {
    /// A fresh channel with `buffer_pages` guest pages for buffers.
    pub fn new(scatter: bool, buffer_pages: u64) -> Self {
        let lb = loopback(&LoopbackConfig {
            incoming_pages: RING_PAGES,
            outgoing_pages: RING_PAGES,
            buffer_pages,
            scatter_ring: scatter,
            scatter_buffers: scatter,
            gpadl_handle: 1,
        })
        .expect("loopback");
        Self {
            lb,
            tampered: false,
            dead: false,
        }
    }

    /// Closes and reopens the channel with fresh zeroed rings (same guest
    /// memory and buffers), as the UEFI client does many times per boot.
    pub fn reopen(&mut self) {
        let ring_pages = u64::from(2 + 2 * RING_PAGES);
        self.lb
            .memory
            .fill(0, ring_pages * PAGE_SIZE as u64, 0)
            .expect("zero rings");
        let host_bell: Arc<dyn Doorbell> = self.lb.host_doorbell.clone();
        let guest_bell: Arc<dyn Doorbell> = self.lb.guest_doorbell.clone();
        let open = |side, local: &Arc<dyn Doorbell>, remote: &Arc<dyn Doorbell>| {
            Endpoint::open_gpadl(
                side,
                &self.lb.memory,
                &self.lb.registry,
                self.lb.gpadl_handle,
                self.lb.downstream_offset,
                local.clone(),
                remote.clone(),
            )
            .expect("reopen")
        };
        let host = open(Side::Host, &host_bell, &guest_bell);
        let guest = open(Side::Guest, &guest_bell, &host_bell);
        self.lb.host = host;
        self.lb.guest = guest;
        self.tampered = false;
        self.dead = false;
    }

    /// Overwrites a control-page field.
    pub fn tamper(&mut self, field: Field, value: u32) {
        self.tampered = true;
        let incoming = self.lb.host.reader.half().control();
        let outgoing = self.lb.host.writer.half().control();
        match field {
            Field::IncomingWrite => incoming.set_write_index(value, Ordering::Relaxed),
            Field::IncomingRead => incoming.set_read_index(value, Ordering::Relaxed),
            Field::OutgoingWrite => outgoing.set_write_index(value, Ordering::Relaxed),
            Field::OutgoingRead => outgoing.set_read_index(value, Ordering::Relaxed),
            Field::OutgoingPending => outgoing.set_pending_send_size(value, Ordering::Relaxed),
            Field::IncomingMask => incoming.set_interrupt_mask(value, Ordering::Relaxed),
        }
    }

    /// Writes raw bytes at the guest's write position in the host's
    /// incoming ring and publishes a write index `advance8 * 8` bytes on.
    pub fn raw_ring_bytes(&mut self, bytes: &[u8], advance8: u16) {
        self.tampered = true;
        let half = self.lb.host.reader.half().clone();
        let size = half.size();
        let Ok(write) = half.load_write_index() else {
            return;
        };
        let len = bytes.len().min(size as usize);
        if half.write_at(write, &bytes[..len]).is_err() {
            return;
        }
        let next = half.advance(write, u32::from(advance8) * 8);
        half.control().set_write_index(next, Ordering::Release);
    }

    /// The guest sends an in-band packet; `false` if the ring is full or
    /// broken.
    pub fn guest_send(&mut self, packet: &OutgoingPacket<'_>) -> bool {
        matches!(self.lb.guest.try_write(packet), Ok(true))
    }

    /// Encodes a range spec, allocating guest pages for `Alloc`.
    pub fn wire_range(&mut self, spec: &RangeSpec) -> WireRange {
        let (byte_count, byte_offset, gpns) = match spec {
            RangeSpec::Alloc {
                pages,
                byte_offset,
                byte_count,
            } => {
                let pages = u64::from(pages % 8) + 1;
                let gpns = match self.lb.pages.alloc(pages) {
                    Ok(gpns) => gpns,
                    Err(_) => {
                        // Out of buffer pages: point at the ring's pages,
                        // which a hostile guest may do anyway.
                        self.tampered = true;
                        vec![0; pages as usize]
                    }
                };
                let byte_offset = u32::from(*byte_offset % 4096) & !1;
                let room = pages as u32 * PAGE_SIZE as u32 - byte_offset;
                let byte_count = (byte_count % room).max(1);
                let needed = (byte_offset + byte_count).div_ceil(PAGE_SIZE as u32) as usize;
                (byte_count, byte_offset, gpns[..needed].to_vec())
            }
            RangeSpec::Raw {
                byte_count,
                byte_offset,
                gpns,
            } => {
                // Raw pages may alias the rings or each other: replies can
                // no longer be followed end to end.
                self.tampered = true;
                (
                    *byte_count,
                    *byte_offset,
                    gpns.iter().take(64).copied().collect(),
                )
            }
        };
        let mut bytes = Vec::with_capacity(8 + 8 * gpns.len());
        bytes.extend_from_slice(&byte_count.to_le_bytes());
        bytes.extend_from_slice(&byte_offset.to_le_bytes());
        for gpn in &gpns {
            bytes.extend_from_slice(&gpn.to_le_bytes());
        }
        WireRange {
            bytes,
            range: GpaRange::new(byte_count, byte_offset, gpns).ok(),
        }
    }
}
