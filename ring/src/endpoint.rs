//! A channel endpoint: the reader of one ring half and the writer of the
//! other, opened from a ring GPADL split at the downstream page offset. The
//! host reads pages `[0, off)` and writes `[off, n)`; the guest the reverse.

use crate::control::FEATURE_PENDING_SEND_SIZE;
use crate::doorbell::Doorbell;
use crate::error::{Result, RingError};
use crate::gpa::{GpaRange, GpadlRegistry};
use crate::memory::GuestMemory;
use crate::packet::{IncomingPacket, OutgoingPacket, PacketView};
use crate::pipe::{PipeError, PipeMessage};
use crate::reader::RingReader;
use crate::ring::RingHalf;
use crate::writer::{RingWriter, WriteBatch};
use std::sync::Arc;

/// Which side of the channel an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device: reads guest→host, writes host→guest.
    Host,
    /// The guest driver: reads host→guest, writes guest→host.
    Guest,
}

/// The two halves of a ring GPADL: `(guest_to_host, host_to_guest)`.
pub fn split_gpadl(
    memory: &GuestMemory,
    pages: &[u64],
    downstream_offset: u32,
) -> Result<(RingHalf, RingHalf)> {
    let off = downstream_offset as usize;
    if off < 2 || off > pages.len().saturating_sub(2) {
        return Err(RingError::BadDownstreamOffset {
            offset: downstream_offset,
            pages: pages.len(),
        });
    }
    let (up, down) = pages.split_at(off);
    Ok((RingHalf::new(memory, up)?, RingHalf::new(memory, down)?))
}

/// One side of a channel: reads its incoming half, writes its outgoing one.
#[derive(Debug)]
pub struct Endpoint {
    /// Reader of the incoming half.
    pub reader: RingReader,
    /// Writer of the outgoing half.
    pub writer: RingWriter,
}

impl Endpoint {
    /// Opens `side` of the channel whose ring GPADL is `pages`, split at
    /// `downstream_offset`. `local` is the doorbell the peer rings for us,
    /// `remote` the one we ring for the peer. The host sets feature bit 0
    /// (it honours `pending_send_size`) on both control pages.
    pub fn open(
        side: Side,
        memory: &GuestMemory,
        pages: &[u64],
        downstream_offset: u32,
        local: Arc<dyn Doorbell>,
        remote: Arc<dyn Doorbell>,
    ) -> Result<Self> {
        let (up, down) = split_gpadl(memory, pages, downstream_offset)?;
        let (incoming, outgoing) = match side {
            Side::Host => {
                for half in [&up, &down] {
                    let bits = half.control().feature_bits();
                    half.control()
                        .set_feature_bits(bits | FEATURE_PENDING_SEND_SIZE);
                }
                (up, down)
            }
            Side::Guest => (down, up),
        };
        Ok(Self {
            reader: RingReader::new(incoming, local.clone(), remote.clone())?,
            writer: RingWriter::new(outgoing, local, remote)?,
        })
    }

    /// Opens `side` of the channel whose ring GPADL is registered in
    /// `registry` under `handle` (see [`open`](Self::open)). Both halves
    /// hold the GPADL, so its teardown waits until they are dropped.
    pub fn open_gpadl(
        side: Side,
        memory: &GuestMemory,
        registry: &GpadlRegistry,
        handle: u32,
        downstream_offset: u32,
        local: Arc<dyn Doorbell>,
        remote: Arc<dyn Doorbell>,
    ) -> Result<Self> {
        let guard = registry.acquire(handle)?;
        Self::open_guarded(side, memory, guard, downstream_offset, local, remote)
    }

    /// [`open`](Self::open) over the pages of a GPADL already held; both
    /// halves keep the hold, so its teardown waits until they are dropped.
    pub fn open_guarded(
        side: Side,
        memory: &GuestMemory,
        guard: crate::gpa::GpadlGuard,
        downstream_offset: u32,
        local: Arc<dyn Doorbell>,
        remote: Arc<dyn Doorbell>,
    ) -> Result<Self> {
        let mut endpoint = Self::open(
            side,
            memory,
            guard.pages(),
            downstream_offset,
            local,
            remote,
        )?;
        endpoint.reader.hold_gpadl(guard.clone());
        endpoint.writer.hold_gpadl(guard);
        Ok(endpoint)
    }

    /// Splits into the reader and writer, usable from two tasks or threads.
    pub fn split(self) -> (RingReader, RingWriter) {
        (self.reader, self.writer)
    }

    /// Reads one packet, or `None` if the incoming ring is empty.
    pub fn try_read(&mut self) -> Result<Option<IncomingPacket>> {
        self.reader.try_read()
    }

    /// Reads up to `max` packets with one read-index publication.
    pub fn try_read_batch(&mut self, max: usize, f: impl FnMut(PacketView<'_>)) -> Result<usize> {
        self.reader.try_read_batch(max, f)
    }

    /// Reads a packet, sleeping while the incoming ring is empty.
    pub async fn read(&mut self) -> Result<IncomingPacket> {
        self.reader.read().await
    }

    /// Writes and publishes a packet; `Ok(false)` if it does not fit now.
    pub fn try_write(&mut self, packet: &OutgoingPacket<'_>) -> Result<bool> {
        self.writer.try_write(packet)
    }

    /// Starts a batch of writes published once.
    pub fn batch(&mut self) -> WriteBatch<'_> {
        self.writer.batch()
    }

    /// Writes a packet, sleeping while the outgoing ring is too full.
    pub async fn write(&mut self, packet: &OutgoingPacket<'_>) -> Result<()> {
        self.writer.write(packet).await
    }

    /// Sleeps until `ring_len` bytes fit the outgoing ring.
    pub async fn wait_write_ready(&mut self, ring_len: usize) -> Result<()> {
        self.writer.wait_write_ready(ring_len).await
    }

    /// Receives one pipe message (data longer than `max_data` is an error).
    pub async fn recv_pipe(&mut self, max_data: usize) -> Result<PipeMessage, PipeError> {
        self.reader.recv_pipe(max_data).await
    }

    /// Sends one message-mode pipe DATA message.
    pub async fn send_data(&mut self, data: &[u8]) -> Result<(), PipeError> {
        self.writer.send_data(data).await
    }

    /// Sends a pipe SETUP_GPA_DIRECT.
    pub async fn send_setup(
        &mut self,
        handle: u32,
        writable: bool,
        ranges: &[GpaRange],
    ) -> Result<(), PipeError> {
        self.writer.send_setup(handle, writable, ranges).await
    }

    /// Sends a pipe TEARDOWN_GPA_DIRECT.
    pub async fn send_teardown(&mut self, handle: u32) -> Result<(), PipeError> {
        self.writer.send_teardown(handle).await
    }
}
