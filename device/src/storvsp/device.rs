//! A whole storvsp controller as a VMBus device: the primary channel and
//! its sub-channels, each served by its own task (see [`super::runner`]),
//! sharing one LUN map. Owns open/close of channels, hot add/remove with
//! the ENUMERATE_BUS notification, and taking and restoring the saved
//! state (protocol state plus every request taken from a ring and not yet
//! answered; the types are in [`super::saved`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::runner::{
    ChannelContext, DEFAULT_QUEUE_DEPTH, PendingTable, RunError, StopSignal, StorvspStats,
    serve_channel,
};
use super::saved::StorvspSavedStateError;
use super::{
    ConfigError, Controller, InitState, LunAddress, Notification, SavedState, StorvspChannel,
    StorvspConfig,
};
use crate::bus::{
    BusError, ChannelError, ChannelTask, IoSpawner, OpenRequest, SubChannelControl, ThreadPool,
};
use crate::scsi_disk::ScsiDisk;
use crate::violation::ViolationLog;
use vmbdev_ring::Mailbox;

pub use super::saved::SavedDevice;

impl From<RunError> for ChannelError {
    fn from(error: RunError) -> Self {
        match error {
            RunError::Ring { channel, source } => Self::Ring { channel, source },
        }
    }
}

#[derive(Debug)]
struct Running {
    stop: Arc<StopSignal>,
    notify: Arc<Mailbox<Notification>>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Option<Arc<Mutex<StorvspChannel>>>,
    pending: Arc<PendingTable>,
    running: Option<Running>,
}

#[derive(Debug, Default)]
struct DeviceState {
    slots: BTreeMap<u16, Slot>,
    /// Saved primary state to resume at the next open of channel 0.
    restored: Option<SavedState>,
}

/// A storvsp controller: channels, LUN map, counters.
#[derive(Debug)]
pub struct StorvspDevice {
    config: StorvspConfig,
    controller: Arc<Controller>,
    queue_depth: usize,
    /// Ring polls before a channel sleeps (see `with_spin`).
    spin: u32,
    instance_id: crate::bus::Guid,
    stats: Arc<StorvspStats>,
    io: Arc<dyn IoSpawner>,
    state: Arc<Mutex<DeviceState>>,
}

/// Threads of the pool a device makes for itself when the VMM injects
/// none.
const DEFAULT_IO_THREADS: usize = 4;

impl StorvspDevice {
    /// A device with `config` over `controller`'s LUNs.
    pub fn new(config: StorvspConfig, controller: Arc<Controller>) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            controller,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            spin: 0,
            instance_id: crate::bus::Guid::from_u128(0x6a3f_2b3c_5d1e_4c6f_8e2a_1b7c_9d0e_f123),
            stats: Arc::default(),
            io: Arc::new(ThreadPool::named(DEFAULT_IO_THREADS, "storvsp-io")),
            state: Arc::default(),
        })
    }

    /// Runs SRB jobs on `spawner` (the VMM's pool) instead of a pool of
    /// the device's own.
    pub fn with_io_spawner(mut self, spawner: Arc<dyn IoSpawner>) -> Self {
        self.io = spawner;
        self
    }

    /// Counts and logs guest protocol violations in `violations` (e.g.
    /// with an injected clock or policy). Resets the other counters.
    pub fn with_violation_log(mut self, violations: ViolationLog) -> Self {
        self.stats = Arc::new(StorvspStats::with_violation_log(violations));
        self
    }

    /// Sets how many requests one channel takes before answering any.
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
        self
    }

    /// Sets how many times a channel polls its ring before it sleeps on
    /// the doorbell ([`RingReader::set_spin`](vmbdev_ring::RingReader::set_spin)).
    /// The default, 0, suits a guest sharing the channel's thread or an
    /// oversubscribed host; a guest on its own, otherwise idle vCPU gets
    /// its next request taken without the wake-up of a sleeping thread.
    pub fn with_spin(mut self, iterations: u32) -> Self {
        self.spin = iterations;
        self
    }

    /// Sets the instance GUID offered to the guest.
    pub fn with_instance_id(mut self, id: crate::bus::Guid) -> Self {
        self.instance_id = id;
        self
    }

    /// The instance GUID offered to the guest.
    pub fn instance_id(&self) -> crate::bus::Guid {
        self.instance_id
    }

    /// The configuration.
    pub fn config(&self) -> StorvspConfig {
        self.config
    }

    /// The LUN map.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// Counters shared by every channel.
    pub fn stats(&self) -> &Arc<StorvspStats> {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeviceState> {
        lock_state(&self.state)
    }

    /// Starts serving channel `index` (0 = primary; sub-channels after the
    /// guest created them) over the request's endpoint. The task runs
    /// until [`close_channel`](Self::close_channel) (then `Ok`) or a ring
    /// failure. Opening the primary resets the protocol state unless a
    /// restore supplied one; requests pending from a restore are re-issued
    /// first.
    pub(super) fn open_channel(
        &self,
        index: u16,
        request: OpenRequest,
    ) -> Result<ChannelTask, BusError> {
        let mut device = self.lock();
        if device
            .slots
            .get(&index)
            .is_some_and(|s| s.running.is_some())
        {
            return Err(BusError::AlreadyOpen(index));
        }
        let state = if index == 0 {
            let mut channel = StorvspChannel::new_validated(
                self.config,
                self.controller.clone(),
                request.memory.clone(),
            );
            match device.restored.take() {
                Some(saved) => channel
                    .restore(saved)
                    .map_err(StorvspSavedStateError::from)?,
                None => {
                    // A fresh start: nothing from an earlier session is
                    // answered any more.
                    device.slots.clear();
                }
            }
            Arc::new(Mutex::new(channel))
        } else {
            let primary = device.slots.get(&0).and_then(|s| s.state.clone());
            let sub = primary.and_then(|p| {
                let p = p.lock().unwrap_or_else(|e| e.into_inner());
                let created = p.save().sub_channels;
                if index <= created {
                    p.sub_channel()
                } else {
                    None
                }
            });
            let Some(sub) = sub else {
                return Err(BusError::NoSuchChannel {
                    index,
                    count: self.sub_channels_created_locked(&device) + 1,
                });
            };
            Arc::new(Mutex::new(sub))
        };
        let stop = Arc::new(StopSignal::new());
        let notifications = Arc::new(Mailbox::new());
        let slot = device.slots.entry(index).or_default();
        slot.state = Some(state.clone());
        slot.running = Some(Running {
            stop: stop.clone(),
            notify: notifications.clone(),
        });
        let ctx = ChannelContext {
            index,
            state,
            pending: slot.pending.clone(),
            stats: self.stats.clone(),
            stop,
            notifications,
            sub_channels: Arc::new(DeviceSubChannels {
                state: Arc::downgrade(&self.state),
                bus: request.sub_channels,
            }),
            queue_depth: self.queue_depth,
            io: self.io.clone(),
        };
        drop(device);
        let (mut reader, writer) = request.endpoint.split();
        reader.set_spin(self.spin);
        let served = crate::bus::catch_panics(index, async move {
            Ok(serve_channel(ctx, reader, writer).await?)
        });
        let device = Arc::downgrade(&self.state);
        Ok(Box::pin(async move {
            let result = served.await;
            // However the task ended, the channel is closed.
            if let Some(device) = device.upgrade() {
                if let Some(slot) = lock_state(&device).slots.get_mut(&index) {
                    slot.running = None;
                }
            }
            result
        }))
    }

    fn sub_channels_created_locked(&self, device: &DeviceState) -> u16 {
        device
            .slots
            .get(&0)
            .and_then(|s| s.state.as_ref())
            .map(|p| {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save()
                    .sub_channels
            })
            .unwrap_or(0)
    }

    /// Asks channel `index` to stop; its task returns once no job touches
    /// guest memory. Requests taken and not answered stay pending.
    pub(super) fn close_channel(&self, index: u16) -> Result<(), BusError> {
        let device = self.lock();
        match device.slots.get(&index).and_then(|s| s.running.as_ref()) {
            Some(running) => {
                running.stop.stop();
                Ok(())
            }
            None => Err(BusError::NotOpen(index)),
        }
    }

    /// Indices of the channels being served.
    pub fn running_channels(&self) -> Vec<u16> {
        let device = self.lock();
        device
            .slots
            .iter()
            .filter(|(_, s)| s.running.is_some())
            .map(|(&i, _)| i)
            .collect()
    }

    /// Attaches `disk` at `address`; tells the guest (ENUMERATE_BUS on the
    /// primary channel) if it finished init. Returns whether a
    /// notification was queued.
    pub fn hot_add(&self, address: LunAddress, disk: Arc<ScsiDisk>) -> bool {
        self.controller.insert(address, disk);
        self.notify_bus_change()
    }

    /// Detaches the disk at `address` and tells the guest. Returns whether
    /// a notification was queued.
    pub fn hot_remove(&self, address: LunAddress) -> bool {
        self.controller.remove(address);
        self.notify_bus_change()
    }

    fn notify_bus_change(&self) -> bool {
        let device = self.lock();
        let Some(slot) = device.slots.get(&0) else {
            return false;
        };
        let (Some(state), Some(running)) = (&slot.state, &slot.running) else {
            return false;
        };
        let notice = {
            let channel = state.lock().unwrap_or_else(|e| e.into_inner());
            // The LUN map is already updated; this only builds the packet.
            channel.bus_changed()
        };
        match notice {
            Some(notice) => {
                running.notify.put(notice);
                true
            }
            None => false,
        }
    }

    /// The saved state. Every channel must be closed (its task finished).
    pub(super) fn save_state(&self) -> Result<SavedDevice, BusError> {
        let device = self.lock();
        if let Some((&index, _)) = device.slots.iter().find(|(_, s)| s.running.is_some()) {
            return Err(BusError::ChannelRunning(index));
        }
        let primary = device
            .slots
            .get(&0)
            .and_then(|s| s.state.as_ref())
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).save())
            .or(device.restored);
        let pending = device
            .slots
            .iter()
            .map(|(&i, s)| (i, s.pending.snapshot()))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        Ok(SavedDevice { primary, pending })
    }

    /// Loads a saved state: the next open of each channel resumes from it
    /// and re-issues its pending requests. Every channel must be closed.
    pub(super) fn restore_state(&self, saved: SavedDevice) -> Result<(), BusError> {
        let mut device = self.lock();
        if let Some((&index, _)) = device.slots.iter().find(|(_, s)| s.running.is_some()) {
            return Err(BusError::ChannelRunning(index));
        }
        let created = match saved.primary {
            Some(primary) => {
                primary
                    .validate(&self.config)
                    .map_err(StorvspSavedStateError::from)?;
                if primary.state == InitState::Ready {
                    primary.sub_channels
                } else {
                    0
                }
            }
            None => 0,
        };
        for (index, _) in &saved.pending {
            if *index > created {
                return Err(StorvspSavedStateError::SavedChannel {
                    index: *index,
                    created,
                }
                .into());
            }
        }
        device.slots.clear();
        device.restored = saved.primary;
        for (index, requests) in saved.pending {
            let slot = device.slots.entry(index).or_default();
            slot.pending.replace(requests);
        }
        Ok(())
    }
}

/// Creates device state for sub-channels, then has the bus offer them.
struct DeviceSubChannels {
    state: std::sync::Weak<Mutex<DeviceState>>,
    bus: Arc<dyn SubChannelControl>,
}

fn lock_state(state: &Mutex<DeviceState>) -> std::sync::MutexGuard<'_, DeviceState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl SubChannelControl for DeviceSubChannels {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        let Some(device) = self.state.upgrade() else {
            // The device is gone: nothing could serve the channels.
            return Err(BusError::SubChannelsUnsupported { requested: count });
        };
        {
            let mut state = lock_state(&device);
            for index in 1..=count {
                state.slots.entry(index).or_default();
            }
        }
        self.bus.enable_sub_channels(count)
    }
}
