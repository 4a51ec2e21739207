//! The vmbfs device on the bus: [`VmbfsDevice`] implements
//! [`VmbusDevice`] by running a [`VmbfsHost`] over an opened channel.
//!
//! Per channel task, in a loop:
//! 0. sleep until a request is readable (not yet taken);
//! 1. reserve outgoing ring space for the largest reply
//!    ([`VmbfsHost::max_reply_size`]) with `wait_write_ready`, *before*
//!    taking the next request: a guest that never reads replies stops the
//!    device from consuming, so host memory stays bounded (one message);
//! 2. take one pipe message (copied into the task's reused buffer);
//! 3. run it through the state machine; tree I/O runs on the device's
//!    [`IoSpawner`] so a slow read does not stall other channels' tasks;
//! 4. send the reply (never a VMBus completion) into the reserved space
//!    and hand its buffer back to the host for the next one.
//!
//! A malformed pipe frame or a protocol violation is counted, stops the
//! channel, and ends the task with a [`ChannelError`]. Every open starts
//! from a clean protocol state unless a restore supplied one. Statistics
//! can be read at any time with [`VmbfsDevice::stats`].

use super::host::{ProtocolState, VmbfsConfig, VmbfsHost, VmbfsSavedState};
use super::saved::{VmbfsSavedStateError, decode_saved_state, encode_saved_state};
use super::stats::VmbfsStats;
use super::{Reply, Step, VmbfsInput};
use crate::bus::{
    BusError, ChannelError, ChannelTask, Guid, Offer, OpenRequest, PipeMode, VmbusDevice,
};
use crate::bus::{IoSpawner, ThreadPool, run_blocking};
use crate::violation::ViolationLog;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vmbdev_protocol::vmbfs::{BOOT_INSTANCE_ID, INTERFACE_ID, MessageType};
use vmbdev_ring::pipe::{MAX_MESSAGE_LEN, PIPE_HEADER_LEN};
use vmbdev_ring::{Endpoint, PipeMessageRef, StopSignal, pipe_data_ring_len};

/// Ring data pages per direction the device offers (what the UEFI client
/// uses).
pub const RING_PAGES: u32 = 4;

/// Threads of the pool a device makes for itself when the VMM injects
/// none.
const DEFAULT_IO_THREADS: usize = 2;

/// Where a request's tree I/O runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoPolicy {
    /// On the device's [`IoSpawner`] (the VMM's, or a small pool of the
    /// device's own): a slow read never stalls other tasks of the
    /// executor. Costs two thread hand-offs per request.
    #[default]
    BlockingPool,
    /// On the channel task's own thread. Only for a VMM that polls this
    /// channel's task on a thread of its own (a blocked read then stalls
    /// only this channel); saves the two hand-offs.
    Inline,
}

/// What the device has done, read while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmbfsDeviceStats {
    /// Protocol counters of the state machine (kept across opens).
    pub protocol: VmbfsStats,
    /// Negotiation state of the channel (awaiting version when never
    /// opened).
    pub state: Option<ProtocolState>,
    /// Channel opens.
    pub opens: u64,
    /// Malformed pipe frames or non-in-band packets (each stopped the
    /// channel).
    pub transport_errors: u64,
    /// File bytes sent in READ_FILE responses.
    pub in_band_bytes: u64,
    /// File bytes written into guest pages by READ_FILE_RDMA.
    pub rdma_bytes: u64,
    /// Requests taken from the ring.
    pub messages: u64,
    /// Times the task found no room for a reply and waited for the guest
    /// to read (backpressure).
    pub backpressure_waits: u64,
}

#[derive(Debug, Default)]
struct Counters {
    opens: AtomicU64,
    transport_errors: AtomicU64,
    in_band_bytes: AtomicU64,
    rdma_bytes: AtomicU64,
    messages: AtomicU64,
    backpressure_waits: AtomicU64,
}

#[derive(Default)]
struct Slot {
    host: Option<Arc<Mutex<VmbfsHost>>>,
    running: Option<Arc<StopSignal>>,
    restored: Option<VmbfsSavedState>,
}

struct Shared {
    config: VmbfsConfig,
    io: IoPolicy,
    spawner: Arc<dyn IoSpawner>,
    violations: Arc<ViolationLog>,
    slot: Mutex<Slot>,
    counters: Counters,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vmbfs device: one pipe-mode, message-mode channel serving a tree.
#[derive(Clone)]
pub struct VmbfsDevice {
    offer: Offer,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VmbfsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbfsDevice")
            .field("offer", &self.offer)
            .finish_non_exhaustive()
    }
}

fn lock_host(host: &Mutex<VmbfsHost>) -> MutexGuard<'_, VmbfsHost> {
    host.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmbfsDevice {
    /// A device offered as the boot share.
    pub fn new(config: VmbfsConfig) -> Self {
        Self::with_instance(config, BOOT_INSTANCE_ID, "vmbfs-boot")
    }

    /// A device offered under `instance_id` (e.g. the IMC share).
    pub fn with_instance(config: VmbfsConfig, instance_id: Guid, name: &str) -> Self {
        Self {
            offer: Offer {
                interface_id: INTERFACE_ID,
                instance_id,
                pipe_mode: PipeMode::Message,
                incoming_ring_pages: RING_PAGES,
                outgoing_ring_pages: RING_PAGES,
                max_sub_channels: 0,
                name: name.to_owned(),
            },
            shared: Arc::new(Shared {
                config,
                io: IoPolicy::default(),
                spawner: Arc::new(ThreadPool::new(DEFAULT_IO_THREADS)),
                violations: Arc::new(ViolationLog::new("vmbfs")),
                slot: Mutex::default(),
                counters: Counters::default(),
            }),
        }
    }

    /// The same device rebuilt with one setting changed (set before the
    /// first open; clones made earlier keep the old settings).
    fn rebuilt(self, change: impl FnOnce(&mut Shared)) -> Self {
        let old = &self.shared;
        let mut shared = Shared {
            config: old.config.clone(),
            io: old.io,
            spawner: old.spawner.clone(),
            violations: old.violations.clone(),
            slot: Mutex::default(),
            counters: Counters::default(),
        };
        change(&mut shared);
        Self {
            offer: self.offer,
            shared: Arc::new(shared),
        }
    }

    /// The same device with tree I/O run per `policy`.
    pub fn with_io_policy(self, policy: IoPolicy) -> Self {
        self.rebuilt(|shared| shared.io = policy)
    }

    /// The same device running [`IoPolicy::BlockingPool`] tree I/O on
    /// `spawner` (the VMM's pool) instead of a pool of its own.
    pub fn with_io_spawner(self, spawner: Arc<dyn IoSpawner>) -> Self {
        self.rebuilt(|shared| shared.spawner = spawner)
    }

    /// The same device counting and logging guest protocol violations in
    /// `violations` (e.g. with an injected clock or policy).
    pub fn with_violation_log(self, violations: ViolationLog) -> Self {
        self.rebuilt(|shared| shared.violations = Arc::new(violations))
    }

    /// A snapshot of the counters, consistent per field.
    pub fn stats(&self) -> VmbfsDeviceStats {
        let host = self.shared.slot().host.clone();
        let (protocol, state) = match host {
            Some(host) => {
                let host = lock_host(&host);
                (host.stats(), Some(host.state()))
            }
            None => (
                VmbfsStats::default().with_bad_input(&self.shared.violations),
                None,
            ),
        };
        let c = &self.shared.counters;
        VmbfsDeviceStats {
            protocol,
            state,
            opens: c.opens.load(Ordering::Relaxed),
            transport_errors: c.transport_errors.load(Ordering::Relaxed),
            in_band_bytes: c.in_band_bytes.load(Ordering::Relaxed),
            rdma_bytes: c.rdma_bytes.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            backpressure_waits: c.backpressure_waits.load(Ordering::Relaxed),
        }
    }

    /// Whether the channel task is running (opened and not yet ended).
    pub fn is_running(&self) -> bool {
        self.shared.slot().running.is_some()
    }
}

fn check_index(channel_index: u16) -> Result<(), BusError> {
    if channel_index != 0 {
        return Err(BusError::NoSuchChannel {
            index: channel_index,
            count: 1,
        });
    }
    Ok(())
}

impl VmbusDevice for VmbfsDevice {
    fn offer(&self) -> Offer {
        self.offer.clone()
    }

    fn open(&self, channel_index: u16, request: OpenRequest) -> Result<ChannelTask, BusError> {
        check_index(channel_index)?;
        let mut slot = self.shared.slot();
        if slot.running.is_some() {
            return Err(BusError::AlreadyOpen(channel_index));
        }
        let host = match &slot.host {
            Some(host) => {
                lock_host(host).rebind(request.memory.clone());
                host.clone()
            }
            None => Arc::new(Mutex::new(
                VmbfsHost::new(self.shared.config.clone(), request.memory.clone())
                    .with_violation_log(self.shared.violations.clone()),
            )),
        };
        if let Some(saved) = slot.restored.take() {
            lock_host(&host)
                .restore(&saved)
                .map_err(VmbfsSavedStateError::from)?;
        }
        let stop = Arc::new(StopSignal::default());
        slot.host = Some(host.clone());
        slot.running = Some(stop.clone());
        drop(slot);
        self.shared.counters.opens.fetch_add(1, Ordering::Relaxed);
        let channel = Channel {
            shared: self.shared.clone(),
            host,
            stop,
            index: channel_index,
        };
        Ok(crate::bus::catch_panics(
            channel_index,
            channel.serve(request.endpoint),
        ))
    }

    fn close(&self, channel_index: u16) -> Result<(), BusError> {
        check_index(channel_index)?;
        match &self.shared.slot().running {
            Some(stop) => {
                stop.stop();
                Ok(())
            }
            None => Err(BusError::NotOpen(channel_index)),
        }
    }

    fn save(&self) -> Result<Vec<u8>, BusError> {
        let slot = self.shared.slot();
        if slot.running.is_some() {
            return Err(BusError::ChannelRunning(0));
        }
        let saved = match (&slot.restored, &slot.host) {
            (Some(saved), _) => saved.clone(),
            (None, Some(host)) => lock_host(host).save(),
            (None, None) => VmbfsSavedState {
                state: ProtocolState::AwaitVersion,
                gpa_direct: Vec::new(),
            },
        };
        Ok(encode_saved_state(&saved))
    }

    fn restore(&self, saved: &[u8]) -> Result<(), BusError> {
        let saved = decode_saved_state(saved).map_err(VmbfsSavedStateError::from)?;
        let mut slot = self.shared.slot();
        if slot.running.is_some() {
            return Err(BusError::ChannelRunning(0));
        }
        slot.restored = Some(saved);
        Ok(())
    }
}

/// One running channel.
struct Channel {
    shared: Arc<Shared>,
    host: Arc<Mutex<VmbfsHost>>,
    stop: Arc<StopSignal>,
    index: u16,
}

impl Drop for Channel {
    /// Marks the channel closed however the task ends (returned or dropped).
    fn drop(&mut self) {
        let mut slot = self.shared.slot();
        if slot
            .running
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &self.stop))
        {
            slot.running = None;
        }
    }
}

impl Channel {
    async fn serve(self, endpoint: Endpoint) -> Result<(), ChannelError> {
        let (mut reader, mut writer) = endpoint.split();
        let reserve = pipe_data_ring_len(VmbfsHost::max_reply_size());
        let channel = self.index;
        let counters = &self.shared.counters;
        // The payload of the request being served, reused for every one.
        let mut payload = Vec::with_capacity(MAX_MESSAGE_LEN + PIPE_HEADER_LEN);
        loop {
            // Sleep until a request is there (without taking it), so a
            // guest that reads a reply and then sends the next request
            // wakes the task once, not once per step.
            match self.stop.race(reader.wait_readable()).await {
                None => return Ok(()),
                Some(r) => r.map_err(|source| ChannelError::Ring { channel, source })?,
            }
            // Room for the worst-case reply before taking the request:
            // while the guest does not read, nothing more is consumed.
            let free = writer
                .free()
                .map_err(|source| ChannelError::Ring { channel, source })?;
            if free as usize <= reserve {
                counters.backpressure_waits.fetch_add(1, Ordering::Relaxed);
            }
            match self.stop.race(writer.wait_write_ready(reserve)).await {
                None => return Ok(()),
                Some(r) => r.map_err(|source| ChannelError::Ring { channel, source })?,
            }
            let received = match self.stop.race(reader.recv_pipe_into(&mut payload)).await {
                None => return Ok(()),
                Some(received) => received,
            };
            let message =
                match received.and_then(|()| PipeMessageRef::decode(&payload, MAX_MESSAGE_LEN)) {
                    Ok(message) => message,
                    Err(e) => {
                        counters.transport_errors.fetch_add(1, Ordering::Relaxed);
                        let error = ChannelError::from_pipe(channel, e);
                        self.shared.violations.record_as(
                            channel,
                            "malformed pipe frame",
                            &format_args!("{error}; stopping the channel"),
                        );
                        return Err(error);
                    }
                };
            counters.messages.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = self.process(message).await? {
                self.count_reply(&reply);
                writer
                    .send_data(reply.as_bytes())
                    .await
                    .map_err(|e| ChannelError::from_pipe(channel, e))?;
                lock_host(&self.host).recycle(reply);
            }
        }
    }

    /// Runs one message through the host; tree I/O goes to the blocking
    /// pool with the host unlocked.
    async fn process(&self, message: PipeMessageRef<'_>) -> Result<Option<Reply>, ChannelError> {
        let step = {
            let mut host = lock_host(&self.host);
            let input = match message {
                PipeMessageRef::Data(bytes) => VmbfsInput::Message(bytes),
                PipeMessageRef::SetupGpaDirect {
                    handle,
                    writable,
                    ranges,
                } => VmbfsInput::SetupGpaDirectWire {
                    handle,
                    writable,
                    ranges,
                },
                PipeMessageRef::TeardownGpaDirect { handle } => {
                    VmbfsInput::TeardownGpaDirect { handle }
                }
            };
            host.start(input)
        };
        match step {
            Ok(Step::NoReply) => Ok(None),
            Ok(Step::Reply(reply)) => Ok(Some(reply)),
            Ok(Step::Io(job)) => {
                let done = match self.shared.io {
                    IoPolicy::BlockingPool => {
                        run_blocking(self.shared.spawner.as_ref(), move || job.run())
                            .await
                            .ok_or(ChannelError::IoLost {
                                channel: self.index,
                            })?
                    }
                    IoPolicy::Inline => job.run(),
                };
                Ok(Some(lock_host(&self.host).finish(done)))
            }
            Err(e) => Err(ChannelError::Protocol {
                channel: self.index,
                source: Box::new(e),
            }),
        }
    }

    fn count_reply(&self, reply: &Reply) {
        let bytes = reply.as_bytes();
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let counters = &self.shared.counters;
        match MessageType(word(0)) {
            MessageType::READ_FILE_RESPONSE => {
                let data = bytes.len().saturating_sub(12) as u64;
                counters.in_band_bytes.fetch_add(data, Ordering::Relaxed);
            }
            MessageType::READ_FILE_RDMA_RESPONSE => {
                counters
                    .rdma_bytes
                    .fetch_add(u64::from(word(12)), Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
