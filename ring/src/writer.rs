//! The sending side of a ring half: packet encoding into the ring, batched
//! write-index publication with the empty-ring signal rule, and the async
//! backpressure wait with the pending-send-size handshake.

use crate::doorbell::Doorbell;
use crate::error::{Result, RingError};
use crate::packet::{OutgoingPacket, TRAILER_LEN};
use crate::ring::{RingHalf, bytes_free};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

/// Packets of at most this many ring bytes (completions, small requests)
/// are assembled on the stack and written with one copy.
const STAGED_PACKET_LEN: usize = 256;

/// The trailer of a packet written at ring offset `start`: that offset in
/// the high half.
fn trailer(start: u32) -> [u8; TRAILER_LEN] {
    (u64::from(start) << 32).to_le_bytes()
}

/// Writes packets into one ring half.
pub struct RingWriter {
    half: RingHalf,
    /// Rung by the peer when it frees space we asked for (we wait on it).
    incoming: Arc<dyn Doorbell>,
    /// Rung by us when we publish data into an empty ring.
    outgoing: Arc<dyn Doorbell>,
    /// Offset of the next packet (may be ahead of `published`).
    position: u32,
    /// Write index last stored in the control page.
    published: u32,
    /// Read index as last loaded (validated). Free space computed from it
    /// can only be an underestimate, since the reader only moves forward;
    /// it is reloaded before a write is refused or a sleep begins.
    seen_read: u32,
    /// Reused buffer for descriptor + extension.
    header: Vec<u8>,
    /// The hold on the ring GPADL, if opened from the registry: the
    /// GPADL cannot be torn down while this half exists.
    gpadl: Option<crate::gpa::GpadlGuard>,
}

impl std::fmt::Debug for RingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingWriter")
            .field("size", &self.half.size())
            .field("position", &self.position)
            .finish()
    }
}

impl RingWriter {
    /// A writer of `half`, starting at its current (validated) write index.
    pub fn new(
        half: RingHalf,
        incoming: Arc<dyn Doorbell>,
        outgoing: Arc<dyn Doorbell>,
    ) -> Result<Self> {
        let position = half.load_write_index()?;
        let seen_read = half.load_read_index()?;
        Ok(Self {
            half,
            incoming,
            outgoing,
            position,
            published: position,
            seen_read,
            header: Vec::with_capacity(64),
            gpadl: None,
        })
    }

    /// Keeps `guard` (the ring GPADL's) for as long as this half lives.
    pub(crate) fn hold_gpadl(&mut self, guard: crate::gpa::GpadlGuard) {
        self.gpadl = Some(guard);
    }

    /// The ring half written to.
    pub fn half(&self) -> &RingHalf {
        &self.half
    }

    /// Free bytes as seen from the (possibly unpublished) write position.
    pub fn free(&mut self) -> Result<u32> {
        self.seen_read = self.half.load_read_index()?;
        Ok(bytes_free(self.position, self.seen_read, self.half.size()))
    }

    /// Whether `ring_len` bytes fit, trusting the last-seen read index
    /// first and reloading it only when that says no. Avoids touching the
    /// control page's cache line (which the reader writes) per packet.
    fn fits(&mut self, ring_len: u32) -> Result<bool> {
        if bytes_free(self.position, self.seen_read, self.half.size()) > ring_len {
            return Ok(true);
        }
        Ok(self.free()? > ring_len)
    }

    /// Checks that `ring_len` bytes (packet + trailer) can ever fit.
    fn check_fits_ring(&self, ring_len: u32) -> Result<()> {
        if u64::from(ring_len) + 8 > u64::from(self.half.size()) {
            return Err(RingError::PacketExceedsRing {
                needed: u64::from(ring_len),
                ring_size: self.half.size(),
            });
        }
        Ok(())
    }

    /// Writes `packet` without publishing it. `Ok(false)`: not enough space
    /// now. A packet that can never fit is an error.
    pub fn try_write_unpublished(&mut self, packet: &OutgoingPacket<'_>) -> Result<bool> {
        let ring_len = packet.ring_len()?;
        self.check_fits_ring(ring_len)?;
        if !self.fits(ring_len)? {
            return Ok(false);
        }
        let start = self.position;
        if ring_len as usize <= STAGED_PACKET_LEN {
            self.position = self.write_staged(start, packet, ring_len)?;
            return Ok(true);
        }
        // Every header byte is encoded over, so the buffer is only sized
        // (zero-filling just what it grows by), not cleared.
        self.header.resize(packet.header_len(), 0);
        packet.encode_header_into(ring_len, &mut self.header);
        let used = self.header.len() + packet.payload_len();
        let padding = used.next_multiple_of(8) - used;
        let mut at = self.half.write_at(start, &self.header)?;
        at = self.half.write_at(at, packet.prefix)?;
        at = self.half.write_at(at, packet.payload)?;
        let mut tail = [0u8; 16];
        tail[padding..padding + TRAILER_LEN].copy_from_slice(&trailer(start));
        at = self.half.write_at(at, &tail[..padding + TRAILER_LEN])?;
        self.position = at;
        Ok(true)
    }

    /// Writes a small packet of `ring_len` bytes as one copy into the
    /// ring: the header is encoded straight into an array on the stack and
    /// the payload copied after it, so the packet costs one bounds check
    /// and one guest-memory write instead of four. Returns the offset
    /// after it.
    fn write_staged(&self, start: u32, packet: &OutgoingPacket<'_>, ring_len: u32) -> Result<u32> {
        let mut staged = [0u8; STAGED_PACKET_LEN];
        let mut at = packet.encode_header_into(ring_len, &mut staged);
        for part in [packet.prefix, packet.payload] {
            staged[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        // The padding up to the trailer stays zero.
        let end = ring_len as usize;
        staged[end - TRAILER_LEN..end].copy_from_slice(&trailer(start));
        self.half.write_at(start, &staged[..end])
    }

    /// Writes and publishes one packet. `Ok(false)`: not enough space now.
    pub fn try_write(&mut self, packet: &OutgoingPacket<'_>) -> Result<bool> {
        let written = self.try_write_unpublished(packet)?;
        self.publish()?;
        Ok(written)
    }

    /// Starts a batch: packets written through it are published once, when
    /// [`WriteBatch::publish`] is called or the batch is dropped.
    pub fn batch(&mut self) -> WriteBatch<'_> {
        WriteBatch { writer: self }
    }

    /// Publishes everything written so far, signalling the reader if its
    /// interrupt mask is clear and the ring was empty before this batch.
    pub fn publish(&mut self) -> Result<()> {
        if self.position == self.published {
            return Ok(());
        }
        let before = self.published;
        let control = self.half.control();
        control.set_write_index(self.position, Ordering::Release);
        self.published = self.position;
        // Order the index store before the mask/read-index loads (the
        // reader does the mirror image before sleeping).
        fence(Ordering::SeqCst);
        let masked = control.interrupt_mask(Ordering::Relaxed) != 0;
        let read = self.half.load_read_index()?;
        self.seen_read = read;
        if !masked && read == before {
            self.outgoing.signal();
        }
        Ok(())
    }

    /// Sleeps until `ring_len` bytes (packet + trailer, see
    /// [`OutgoingPacket::ring_len`] and the `*_ring_len` helpers) fit,
    /// using the pending-send-size handshake. Publishes pending writes
    /// first. Use it to reserve space for a reply before consuming the
    /// request: only this writer fills the ring, so the space stays.
    pub async fn wait_write_ready(&mut self, ring_len: usize) -> Result<()> {
        let ring_len = u32::try_from(ring_len).map_err(|_| RingError::PacketExceedsRing {
            needed: ring_len as u64,
            ring_size: self.half.size(),
        })?;
        self.check_fits_ring(ring_len)?;
        self.publish()?;
        let control = self.half.control().clone();
        let incoming = self.incoming.clone();
        loop {
            if self.free()? > ring_len {
                return Ok(());
            }
            let wait = crate::doorbell::wait(&*incoming);
            control.set_pending_send_size(ring_len + 8, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.free()? > ring_len {
                control.set_pending_send_size(0, Ordering::Relaxed);
                return Ok(());
            }
            wait.await;
            control.set_pending_send_size(0, Ordering::Relaxed);
        }
    }

    /// Writes and publishes `packet`, sleeping while the ring is too full.
    pub async fn write(&mut self, packet: &OutgoingPacket<'_>) -> Result<()> {
        loop {
            if self.try_write(packet)? {
                return Ok(());
            }
            self.wait_write_ready(packet.ring_len()? as usize).await?;
        }
    }

    /// Writes every packet, publishing when the ring fills (before
    /// sleeping) and once at the end.
    pub async fn write_all(&mut self, packets: &[OutgoingPacket<'_>]) -> Result<()> {
        for packet in packets {
            while !self.try_write_unpublished(packet)? {
                self.wait_write_ready(packet.ring_len()? as usize).await?;
            }
        }
        self.publish()
    }
}

/// Packets written through a batch are published together.
#[derive(Debug)]
pub struct WriteBatch<'a> {
    writer: &'a mut RingWriter,
}

impl WriteBatch<'_> {
    /// Writes `packet` unpublished; `Ok(false)`: not enough space now.
    pub fn try_write(&mut self, packet: &OutgoingPacket<'_>) -> Result<bool> {
        self.writer.try_write_unpublished(packet)
    }

    /// Publishes the batch (also done on drop, ignoring errors).
    pub fn publish(self) -> Result<()> {
        self.writer.publish()
    }
}

impl Drop for WriteBatch<'_> {
    fn drop(&mut self) {
        let _ = self.writer.publish();
    }
}
