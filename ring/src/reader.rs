//! The receiving side of a ring half: copy-then-validate packet reads,
//! batched read-index publication, the writer-wakeup edge rule, and the
//! async sleep with the interrupt-mask handshake.

use crate::doorbell::Doorbell;
use crate::error::{Result, RingError};
use crate::packet::{
    BorrowedPacket, DESCRIPTOR_LEN, Descriptor, IncomingPacket, PacketView, ParsedKind,
    TRAILER_LEN, parse_packet_kind,
};
use crate::ring::{RingHalf, bytes_available, bytes_free};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

/// Ring bytes the reader copies at once when it starts a packet: enough
/// for a storvsp request with a one-page range list (112 bytes) or a
/// storvsp completion, so such a packet costs one guest-memory read.
/// More would copy bytes of the next packets again when several are
/// queued (and 256 crosses into the string copy, which starts slower).
const EAGER_READ_LEN: usize = 128;

/// A validated packet in the reader's buffer.
struct ParsedPacket {
    desc: Descriptor,
    kind: ParsedKind,
    payload: std::ops::Range<usize>,
    /// Ring offset after the packet's trailer.
    next: u32,
}

/// Reads packets from one ring half.
pub struct RingReader {
    half: RingHalf,
    /// Rung by the peer when it publishes data (we wait on it).
    incoming: Arc<dyn Doorbell>,
    /// Rung by us when freed space crosses the peer's pending send size.
    outgoing: Arc<dyn Doorbell>,
    /// Offset of the next packet to read (may be ahead of `published`).
    position: u32,
    /// Read index last stored in the control page.
    published: u32,
    /// Reused host copy of the current packet.
    buffer: Vec<u8>,
    /// The hold on the ring GPADL, if opened from the registry: the
    /// GPADL cannot be torn down while this half exists.
    gpadl: Option<crate::gpa::GpadlGuard>,
    /// Polls of the ring before arming the doorbell (see
    /// [`set_spin`](Self::set_spin)).
    spin: u32,
}

impl std::fmt::Debug for RingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingReader")
            .field("size", &self.half.size())
            .field("position", &self.position)
            .finish()
    }
}

impl RingReader {
    /// A reader of `half`, starting at its current (validated) read index.
    pub fn new(
        half: RingHalf,
        incoming: Arc<dyn Doorbell>,
        outgoing: Arc<dyn Doorbell>,
    ) -> Result<Self> {
        let position = half.load_read_index()?;
        Ok(Self {
            half,
            incoming,
            outgoing,
            position,
            published: position,
            buffer: Vec::new(),
            gpadl: None,
            spin: 0,
        })
    }

    /// Polls the ring up to `iterations` times before sleeping on the
    /// doorbell in [`wait_readable`](Self::wait_readable). It can only pay
    /// when the writer runs on another, otherwise idle core. The default, 0,
    /// sleeps at once: when both sides share a thread (the loopback, the
    /// benchmarks) nothing can arrive while this side spins, so every spin
    /// is pure loss, and on an oversubscribed host spinning takes the core
    /// from the peer it waits for.
    pub fn set_spin(&mut self, iterations: u32) {
        self.spin = iterations;
    }

    /// Keeps `guard` (the ring GPADL's) for as long as this half lives.
    pub(crate) fn hold_gpadl(&mut self, guard: crate::gpa::GpadlGuard) {
        self.gpadl = Some(guard);
    }

    /// The doorbells: `(incoming, outgoing)`, the one the peer rings for
    /// this side and the one this side rings for the peer.
    pub fn doorbells(&self) -> (Arc<dyn Doorbell>, Arc<dyn Doorbell>) {
        (self.incoming.clone(), self.outgoing.clone())
    }

    /// The ring half read from.
    pub fn half(&self) -> &RingHalf {
        &self.half
    }

    /// Bytes published by the writer and not yet consumed.
    pub fn available(&self) -> Result<u32> {
        let write = self.half.load_write_index()?;
        Ok(bytes_available(write, self.position, self.half.size()))
    }

    /// Copies the next packet into `buffer` and validates it. Returns the
    /// view parts and the offset after the packet's trailer, or `None` if
    /// the ring is empty.
    #[inline]
    fn next_packet(
        half: &RingHalf,
        position: u32,
        available: u32,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<ParsedPacket>> {
        if available == 0 {
            return Ok(None);
        }
        if available < DESCRIPTOR_LEN as u32 {
            return Err(RingError::AvailableTooSmall {
                available,
                offset: position,
            });
        }
        // One copy takes the descriptor and, for a small packet, all of
        // it: up to `EAGER_READ_LEN` published bytes. Bytes past the packet
        // are never looked at, and nothing is fetched twice.
        let eager = (available as usize).min(EAGER_READ_LEN);
        // Grow only: zeroing a reused buffer on every packet would cost
        // as much as the copy itself.
        if buffer.len() < eager {
            buffer.resize(EAGER_READ_LEN, 0);
        }
        let after_eager = half.read_at(position, &mut buffer[..eager])?;
        let mut raw = [0u8; DESCRIPTOR_LEN];
        raw.copy_from_slice(&buffer[..DESCRIPTOR_LEN]);
        let desc = Descriptor::from_bytes(&raw);
        desc.validate(available, position)?;
        // Validated: 16 <= 8*length8 <= available - 8 < size. Copy the rest
        // of a packet longer than the eager read.
        let total = usize::from(desc.length8) * 8;
        if total > eager {
            if buffer.len() < total {
                buffer.resize(total, 0);
            }
            half.read_at(after_eager, &mut buffer[eager..total])?;
        }
        let packet = &buffer[..total];
        let (kind, payload) = parse_packet_kind(&desc, packet, position)?;
        let next = half.advance(position, (total + TRAILER_LEN) as u32);
        Ok(Some(ParsedPacket {
            desc,
            kind,
            payload,
            next,
        }))
    }

    /// Reads up to `max` packets, calling `f` on each, and publishes the
    /// read index once at the end. Returns the number of packets read.
    /// On a malformed packet, packets already read stay consumed and the
    /// error is returned; the reader stays at the bad packet.
    pub fn try_read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(PacketView<'_>),
    ) -> Result<usize> {
        self.try_read_batch_borrowed(max, |packet| f(packet.to_view()))
    }

    /// [`try_read_batch`](Self::try_read_batch) handing out packets that
    /// borrow their range lists too: nothing is allocated per packet.
    pub fn try_read_batch_borrowed(
        &mut self,
        max: usize,
        mut f: impl FnMut(BorrowedPacket<'_>),
    ) -> Result<usize> {
        let mut count = 0;
        let mut write = self.half.load_write_index()?;
        let result = loop {
            if count == max {
                break Ok(());
            }
            let mut available = bytes_available(write, self.position, self.half.size());
            if available == 0 {
                // Look once more: the writer may have published meanwhile.
                write = match self.half.load_write_index() {
                    Ok(w) => w,
                    Err(e) => break Err(e),
                };
                available = bytes_available(write, self.position, self.half.size());
            }
            match Self::next_packet(&self.half, self.position, available, &mut self.buffer) {
                Ok(Some(ParsedPacket {
                    desc,
                    kind,
                    payload,
                    next,
                })) => {
                    let bytes = &self.buffer[..];
                    f(BorrowedPacket {
                        kind: kind.borrow(bytes),
                        transaction_id: desc.transaction_id,
                        completion_requested: desc.flags & crate::packet::FLAG_COMPLETION_REQUESTED
                            != 0,
                        payload: &bytes[payload],
                    });
                    self.position = next;
                    count += 1;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.publish()?;
        result.map(|()| count)
    }

    /// Reads one packet into an owned [`IncomingPacket`], or `None` if the
    /// ring is empty.
    pub fn try_read(&mut self) -> Result<Option<IncomingPacket>> {
        let mut packet = None;
        self.try_read_batch(1, |view| packet = Some(view.to_owned()))?;
        Ok(packet)
    }

    /// Stores the read index and signals the writer if the freed space
    /// crossed its pending send size (`& !7`) on this publication.
    fn publish(&mut self) -> Result<()> {
        if self.position == self.published {
            return Ok(());
        }
        let before = self.published;
        let control = self.half.control();
        control.set_read_index(self.position, Ordering::Release);
        self.published = self.position;
        // Order the index store before the pending-size load (the writer
        // does the mirror image), so one of us sees the other.
        fence(Ordering::SeqCst);
        let threshold = control.pending_send_size(Ordering::Relaxed) & !7;
        if threshold == 0 {
            return Ok(());
        }
        let write = self.half.load_write_index()?;
        let size = self.half.size();
        let free_before = bytes_free(write, before, size);
        let free_after = bytes_free(write, self.position, size);
        if free_before < threshold && free_after >= threshold {
            self.outgoing.signal();
        }
        Ok(())
    }

    /// Sleeps until the ring holds data, using the interrupt-mask handshake:
    /// clear the mask, full fence, re-check, then sleep. While awake the
    /// mask is set so the writer does not signal needlessly.
    pub async fn wait_readable(&mut self) -> Result<()> {
        let control = self.half.control();
        for _ in 0..self.spin {
            if self.available()? != 0 {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        loop {
            if self.available()? != 0 {
                return Ok(());
            }
            let wait = crate::doorbell::wait(&*self.incoming);
            control.set_interrupt_mask(0, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.available()? != 0 {
                control.set_interrupt_mask(1, Ordering::Relaxed);
                return Ok(());
            }
            wait.await;
            control.set_interrupt_mask(1, Ordering::Relaxed);
        }
    }

    /// Reads the next packet, sleeping on the doorbell while the ring is
    /// empty.
    pub async fn read(&mut self) -> Result<IncomingPacket> {
        loop {
            if let Some(packet) = self.try_read()? {
                return Ok(packet);
            }
            self.wait_readable().await?;
        }
    }

    /// Reads up to `max` packets (at least one), sleeping while the ring is
    /// empty; publishes once.
    pub async fn read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(PacketView<'_>),
    ) -> Result<usize> {
        self.read_batch_borrowed(max, |packet| f(packet.to_view()))
            .await
    }

    /// [`read_batch`](Self::read_batch) handing out packets that borrow
    /// their range lists too: nothing is built per packet.
    pub async fn read_batch_borrowed(
        &mut self,
        max: usize,
        mut f: impl FnMut(BorrowedPacket<'_>),
    ) -> Result<usize> {
        loop {
            let n = self.try_read_batch_borrowed(max, &mut f)?;
            if n != 0 || max == 0 {
                return Ok(n);
            }
            self.wait_readable().await?;
        }
    }
}
