//! The device-bus contract: what a VMM (or the loopback VM) and a VMBus
//! device say to each other.
//!
//! A device describes itself with an [`Offer`]. When the guest opens one of
//! the device's channels, the VMM builds the channel's [`Endpoint`] (ring
//! halves over guest memory plus [`Doorbell`]s) and calls
//! [`VmbusDevice::open`], which returns a [`ChannelTask`]: a `Send` future
//! that serves the channel until the guest closes it, the VMM calls
//! [`VmbusDevice::close`], or the guest breaks the protocol (the task then
//! returns a [`ChannelError`]). The VMM decides where the future runs: any
//! executor, one thread per channel, or `block_on` on a thread. With eventfd
//! doorbells, a thread per channel should run its task with
//! [`vmbdev_ring::block_on`], which waits for the eventfd on that thread
//! instead of through a reactor thread (two fewer thread hand-offs per
//! doorbell: the remote benchmark's 4 KiB QD32 figure rose by about half).
//!
//! Nothing here knows how guest memory and doorbells are provided: an
//! in-process loopback uses one shared mapping and `event-listener`
//! doorbells, an out-of-process backend maps the guest's memfd and wraps
//! eventfds in [`Doorbell`]. Only the construction of the [`OpenRequest`]
//! changes ([`OpenRequest::from_gpadl`] does it for either).
//!
//! # Saved state
//!
//! The VMM first closes (quiesces) the channels, then calls
//! [`VmbusDevice::save`]. To resume, it hands the bytes to
//! [`VmbusDevice::restore`] on a device built the same way and reopens the
//! channels over the same rings: an open after a restore resumes the saved
//! protocol state instead of starting clean. The bytes are the device's own
//! versioned encoding and are checked like guest input on restore; a
//! refusal is [`BusError::BadSavedState`] with the device's typed reason
//! ([`SavedStateError`]).
//!
//! # Sub-channels
//!
//! A device that serves sub-channels asks for them through the
//! [`SubChannelControl`] in [`OpenRequest::sub_channels`], the one
//! sub-channel seam: the VMM offers channels `1..=count` to the guest and
//! later calls [`VmbusDevice::open`] with those indices. [`NoSubChannels`]
//! refuses every request.
//!
//! # How a channel task ends
//!
//! [`ChannelTask`] returns `Ok` after [`VmbusDevice::close`], or a
//! [`ChannelError`]: the ring is broken ([`ChannelError::Ring`]), a pipe
//! frame is malformed ([`ChannelError::Pipe`]), the guest broke the device
//! protocol in a way the device cannot answer ([`ChannelError::Protocol`]),
//! a blocking job was lost ([`ChannelError::IoLost`]), or the device's
//! task panicked ([`ChannelError::Panicked`]: a device bug, caught so it
//! ends one channel and not the VMM's executor thread). The channel is
//! closed in every case; the VMM may reopen it when the guest does.
//!
//! # Guest protocol violations
//!
//! One policy for every device: each violation is counted per kind in the
//! device's [`ViolationLog`](crate::violation::ViolationLog) (exact counts,
//! readable while it runs) and logged at a rate limit (the first few of
//! each kind, then one summary per interval), so a guest cannot flood the
//! host log. The device then either fails the packet (answers it with an
//! error status, or drops it unanswered, and keeps serving) or stops the
//! channel (the task ends with a [`ChannelError`]); which one, per kind, is
//! in the device's module doc (storvsp: [`crate::storvsp`]; vmbfs:
//! [`crate::vmbfs`]). The rule: fail the packet when the protocol has a way
//! to say "this request is bad" and the stream stays in sync; stop the
//! channel when the device can no longer tell where the next request
//! starts or what state the guest believes it is in.
//!
//! # Seams the VMM provides
//!
//! - **Guest memory and doorbells**, inside the [`OpenRequest`].
//! - **Where blocking I/O runs**: an [`IoSpawner`] given to the device when
//!   it is built (`with_io_spawner`); by default each device runs a small
//!   [`ThreadPool`] of its own. There is no process-wide pool.
//! - **GPADL lifetime**: the ring halves of an endpoint opened with
//!   [`OpenRequest::from_gpadl`] hold the ring GPADL
//!   ([`GpadlGuard`](vmbdev_ring::GpadlGuard)), so the VMM's
//!   [`GpadlRegistry::teardown`] of it completes only after the channel's
//!   task has ended, and [`GpadlRegistry::try_teardown`] reports it in use
//!   until then. The guest cannot hold a teardown up: closing the channel
//!   releases the halves.
//! - **Sub-channel offers**, through [`SubChannelControl`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use vmbdev_ring::{
    Doorbell, Endpoint, GpaError, GpadlRegistry, GuestMemory, PipeError, RingError, Side,
};

pub use vmbdev_protocol::vmbfs::Guid;

/// How the channel frames its payloads (the offer's pipe flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeMode {
    /// Plain VMBus packets (storvsp, netvsp).
    None,
    /// Pipe mode, one packet per message (vmbfs).
    Message,
    /// Pipe mode, a byte stream split into packets.
    Byte,
}

/// What a device asks the bus to offer to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Interface (class) GUID: which driver binds.
    pub interface_id: Guid,
    /// Instance GUID: which device of that class.
    pub instance_id: Guid,
    /// Pipe framing of the channel.
    pub pipe_mode: PipeMode,
    /// Data pages the device wants in the guest→host ring half (a guest
    /// may choose otherwise; the device works with any size ≥ 1 page that
    /// fits its largest message).
    pub incoming_ring_pages: u32,
    /// Data pages the device wants in the host→guest ring half.
    pub outgoing_ring_pages: u32,
    /// Most sub-channels the device can serve beside channel 0 (0: none).
    pub max_sub_channels: u16,
    /// A short human-readable name for logs.
    pub name: String,
}

/// How a device asks the bus for sub-channels (storvsp's
/// CREATE_SUB_CHANNELS). The VMM implements it: it offers the new channels
/// to the guest and later calls [`VmbusDevice::open`] with their indices
/// (1..=count) when the guest opens them.
pub trait SubChannelControl: Send + Sync {
    /// Offers sub-channels 1..=`count` (at most the offer's
    /// `max_sub_channels`).
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError>;
}

/// A bus that offers no sub-channels: every request is refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSubChannels;

impl SubChannelControl for NoSubChannels {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        Err(BusError::SubChannelsUnsupported { requested: count })
    }
}

/// Where a device runs blocking backing I/O (disk reads, file-tree
/// calls), so it never blocks the executor polling its channel tasks.
/// The VMM injects one at device construction (for example one
/// [`ThreadPool`] it sizes for all its devices); a device given none makes
/// a small [`ThreadPool`] of its own. There is no process-wide pool.
pub trait IoSpawner: Send + Sync + std::fmt::Debug {
    /// Runs `job` on a thread where blocking is allowed. The job must run
    /// eventually; if it is dropped unrun, the device fails the waiting
    /// request's channel with [`ChannelError::IoLost`].
    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send>);
}

pub use crate::io_pool::ThreadPool;

/// Runs `f` on `spawner` and waits for its result without blocking the
/// calling task; `None` if the spawner dropped the job (or it panicked).
pub async fn run_blocking<T: Send + 'static>(
    spawner: &dyn IoSpawner,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (send, receive) = async_channel::bounded(1);
    spawner.spawn_blocking(Box::new(move || {
        let _ = send.send_blocking(f());
    }));
    receive.recv().await.ok()
}

/// Everything a device needs to serve one opened channel.
pub struct OpenRequest {
    /// The host side of the channel: reads guest→host, writes host→guest,
    /// with the doorbells of the transport.
    pub endpoint: Endpoint,
    /// All of guest memory, for GPA-direct and GPADL accesses.
    pub memory: GuestMemory,
    /// GPADLs the guest registered (data buffers beside the ring).
    pub gpadls: GpadlRegistry,
    /// Where to ask for sub-channels.
    pub sub_channels: Arc<dyn SubChannelControl>,
}

impl std::fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRequest")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl OpenRequest {
    /// Builds the request for a channel whose ring GPADL `ring_gpadl` is
    /// registered in `gpadls`, split at `downstream_offset`. `local` is the
    /// doorbell the guest rings for the device, `remote` the one the
    /// device rings for the guest: in-process events or eventfds.
    pub fn from_gpadl(
        memory: GuestMemory,
        gpadls: GpadlRegistry,
        ring_gpadl: u32,
        downstream_offset: u32,
        local: Arc<dyn Doorbell>,
        remote: Arc<dyn Doorbell>,
    ) -> Result<Self, BusError> {
        // The endpoint's halves hold the ring GPADL until the device drops
        // them, so the VMM's teardown of it waits for the channel to end.
        let guard = gpadls.acquire(ring_gpadl)?;
        let endpoint =
            Endpoint::open_guarded(Side::Host, &memory, guard, downstream_offset, local, remote)?;
        Ok(Self {
            endpoint,
            memory,
            gpadls,
            sub_channels: Arc::new(NoSubChannels),
        })
    }
}

/// The future serving one channel; the VMM polls it to completion. `Ok`
/// means the channel was closed by [`VmbusDevice::close`]; an error says
/// why the device stopped serving it.
pub type ChannelTask = Pin<Box<dyn Future<Output = Result<(), ChannelError>> + Send + 'static>>;

/// Wraps a device's channel future as a [`ChannelTask`] that turns a panic
/// inside it into [`ChannelError::Panicked`], so a device bug ends one
/// channel instead of the VMM's executor thread.
pub(crate) fn catch_panics(
    channel: u16,
    task: impl Future<Output = Result<(), ChannelError>> + Send + 'static,
) -> ChannelTask {
    use futures_lite::FutureExt;
    Box::pin(async move {
        match std::panic::AssertUnwindSafe(task).catch_unwind().await {
            Ok(result) => result,
            Err(_) => {
                tracing::error!(channel, "device channel task panicked");
                Err(ChannelError::Panicked { channel })
            }
        }
    })
}

/// Why a channel task stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The ring itself is broken (bad indices, malformed packet).
    #[error("channel {channel}: ring failure: {source}")]
    Ring {
        /// Channel index.
        channel: u16,
        /// What the ring reported.
        source: RingError,
    },
    /// A packet could not be unframed as a pipe message.
    #[error("channel {channel}: bad pipe message: {source}")]
    Pipe {
        /// Channel index.
        channel: u16,
        /// What was wrong.
        source: PipeError,
    },
    /// The task serving the channel panicked (a bug in the device, never a
    /// guest's doing); the device caught it and the channel is closed.
    #[error("channel {channel}: the device task panicked")]
    Panicked {
        /// Channel index.
        channel: u16,
    },
    /// The device's [`IoSpawner`] dropped a blocking job without running
    /// it (or the job panicked); the request cannot be answered.
    #[error("channel {channel}: a blocking I/O job was lost by the spawner")]
    IoLost {
        /// Channel index.
        channel: u16,
    },
    /// The guest broke the device protocol; the channel was stopped.
    #[error("channel {channel}: protocol violation: {source}")]
    Protocol {
        /// Channel index.
        channel: u16,
        /// The device's own error (downcast to inspect it).
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl ChannelError {
    /// A pipe error, or the ring error underneath it.
    pub fn from_pipe(channel: u16, error: PipeError) -> Self {
        match error {
            PipeError::Ring(source) => Self::Ring { channel, source },
            source => Self::Pipe { channel, source },
        }
    }

    /// The device protocol error, if this is one of type `E`.
    pub fn protocol_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Protocol { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

/// An error between the bus and a device.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The device has no channel with this index.
    #[error("no channel {index} (the device serves {count})")]
    NoSuchChannel {
        /// Index asked for.
        index: u16,
        /// Channels the device serves.
        count: u16,
    },
    /// The channel is already open.
    #[error("channel {0} is already open")]
    AlreadyOpen(u16),
    /// The channel is not open.
    #[error("channel {0} is not open")]
    NotOpen(u16),
    /// Save was asked for while a channel is running.
    #[error("channel {0} is still running; close it before saving")]
    ChannelRunning(u16),
    /// The device cannot serve sub-channels.
    #[error("{requested} sub-channels requested but the device offers none")]
    SubChannelsUnsupported {
        /// Count asked for.
        requested: u16,
    },
    /// The ring could not be opened.
    #[error("cannot open the ring: {0}")]
    Ring(#[from] RingError),
    /// The ring GPADL is unknown or bad.
    #[error("bad ring GPADL: {0}")]
    Gpadl(#[from] GpaError),
    /// Saved state was refused.
    #[error("saved state refused: {0}")]
    BadSavedState(#[source] SavedStateError),
}

/// Why a device refused saved state, per device.
#[derive(Debug, thiserror::Error)]
pub enum SavedStateError {
    /// storvsp could not decode or restore the bytes.
    #[error("storvsp: {0}")]
    Storvsp(#[from] crate::storvsp::StorvspSavedStateError),
    /// vmbfs could not decode or restore the bytes.
    #[error("vmbfs: {0}")]
    Vmbfs(#[from] crate::vmbfs::VmbfsSavedStateError),
    /// A device outside this crate refused them (downcast to inspect).
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<crate::storvsp::StorvspSavedStateError> for BusError {
    fn from(error: crate::storvsp::StorvspSavedStateError) -> Self {
        Self::BadSavedState(error.into())
    }
}

impl From<crate::vmbfs::VmbfsSavedStateError> for BusError {
    fn from(error: crate::vmbfs::VmbfsSavedStateError) -> Self {
        Self::BadSavedState(error.into())
    }
}

/// A VMBus device as the bus sees it. Methods take `&self`: a device is
/// shared (`Arc`) between the VMM and the tasks of its channels and keeps
/// its mutable state behind its own locks.
pub trait VmbusDevice: Send + Sync {
    /// What to offer to the guest.
    fn offer(&self) -> Offer;

    /// Starts serving channel `channel_index` (0 is the primary channel).
    /// The device resets its protocol state for the channel unless
    /// [`restore`](Self::restore) supplied saved state for it since the
    /// last open. The returned task must be polled for the channel to make
    /// progress.
    fn open(&self, channel_index: u16, request: OpenRequest) -> Result<ChannelTask, BusError>;

    /// Asks the task of `channel_index` to stop at its next quiescent point
    /// (no request half done); the task then returns `Ok(())`. A request
    /// already taken from the ring is answered first.
    fn close(&self, channel_index: u16) -> Result<(), BusError>;

    /// The device's state (every closed channel's protocol state), as
    /// versioned bytes. Channels must be closed first.
    fn save(&self) -> Result<Vec<u8>, BusError>;

    /// Loads state produced by [`save`](Self::save); the next open of each
    /// saved channel resumes from it.
    fn restore(&self, saved: &[u8]) -> Result<(), BusError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmbfs::{VmbfsConfig, VmbfsDevice};
    use futures_lite::future::{block_on, poll_once};
    use vmbdev_fs::MemoryTree;
    use vmbdev_ring::{LoopbackConfig, loopback};

    #[test]
    fn ring_gpadl_teardown_waits_for_the_channel_to_close() {
        let device = VmbfsDevice::new(VmbfsConfig {
            tree: Arc::new(MemoryTree::builder().build()),
            rdma_enabled: false,
        });
        let lb = loopback(&LoopbackConfig::default()).unwrap();
        let handle = lb.gpadl_handle;
        let request = OpenRequest::from_gpadl(
            lb.memory.clone(),
            lb.registry.clone(),
            handle,
            lb.downstream_offset,
            lb.host_doorbell.clone(),
            lb.guest_doorbell.clone(),
        )
        .unwrap();
        // Only the device uses the ring from here on; the guest sends
        // nothing at all.
        drop((lb.host, lb.guest));
        assert_eq!(lb.registry.holders(handle), 2, "reader and writer");
        let task = device.open(0, request).unwrap();
        let served = std::thread::spawn(move || block_on(task));
        assert!(matches!(
            lb.registry.try_teardown(handle),
            Err(GpaError::GpadlInUse { holders: 2, .. })
        ));
        let mut teardown = Box::pin(lb.registry.teardown(handle));
        assert!(block_on(poll_once(teardown.as_mut())).is_none());
        // Closing the channel ends the task, which drops the ring halves.
        device.close(0).unwrap();
        served.join().unwrap().unwrap();
        let pages = block_on(teardown).unwrap();
        let shape = LoopbackConfig::default();
        let ring_pages = 2 + shape.incoming_pages + shape.outgoing_pages;
        assert_eq!(pages.len(), ring_pages as usize);
        assert_eq!(lb.registry.holders(handle), 0);
        // A later open of that GPADL is refused, not served on freed pages.
        let again = OpenRequest::from_gpadl(
            lb.memory.clone(),
            lb.registry.clone(),
            handle,
            lb.downstream_offset,
            lb.host_doorbell.clone(),
            lb.guest_doorbell.clone(),
        );
        assert!(matches!(
            again,
            Err(BusError::Gpadl(GpaError::UnknownGpadl(h))) if h == handle
        ));
    }
}
