//! A whole storvsp controller as a VMBus device: the primary channel and
//! its sub-channels, each served by its own task (see [`super::runner`]),
//! sharing one LUN map. Owns open/close of channels, hot add/remove with
//! the ENUMERATE_BUS notification, and taking and restoring the saved
//! state (protocol state plus every request taken from a ring and not yet
//! answered; the types are in [`super::saved`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use vmbdev_ring::{Endpoint, GuestMemory};

use super::runner::{
    ChannelContext, DEFAULT_QUEUE_DEPTH, PendingTable, RunError, StopSignal, StorvspStats,
    SubChannelRequester, serve_channel,
};
use super::{
    ConfigError, Controller, InitState, LunAddress, Notification, RestoreError, SavedState,
    StorvspChannel, StorvspConfig,
};
use crate::scsi_disk::ScsiDisk;

pub use super::saved::SavedDevice;

/// An error opening, closing or saving a channel of the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The channel index is not one the guest created.
    #[error("storvsp has no channel {index} (sub-channels created: {created})")]
    NoSuchChannel {
        /// Index asked for.
        index: u16,
        /// Sub-channels the guest created.
        created: u16,
    },
    /// The channel is already being served.
    #[error("storvsp channel {0} is already open")]
    AlreadyOpen(u16),
    /// The channel is not being served.
    #[error("storvsp channel {0} is not open")]
    NotOpen(u16),
    /// Save needs every channel closed first.
    #[error("storvsp channel {0} is still running; close it before saving")]
    ChannelRunning(u16),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The saved state does not fit this device.
    #[error("storvsp saved state refused: {0}")]
    Restore(#[from] RestoreError),
    /// The saved state lists a channel the saved protocol state has not
    /// created.
    #[error("storvsp saved state has requests for channel {index} but only {created} sub-channels")]
    SavedChannel {
        /// Channel index in the saved state.
        index: u16,
        /// Sub-channels the saved state created.
        created: u16,
    },
}

/// How the bus offers sub-channels to the guest.
pub trait SubChannelOffer: Send + Sync {
    /// Offers sub-channels `1..=count`; the bus later opens them with
    /// [`StorvspDevice::open_channel`].
    fn offer_sub_channels(&self, count: u16) -> Result<(), String>;
}

/// A bus that cannot offer sub-channels.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSubChannelOffer;

impl SubChannelOffer for NoSubChannelOffer {
    fn offer_sub_channels(&self, count: u16) -> Result<(), String> {
        Err(format!(
            "{count} sub-channels asked for but the bus offers none"
        ))
    }
}

#[derive(Debug)]
struct Running {
    stop: Arc<StopSignal>,
    notify: async_channel::Sender<Notification>,
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
    instance_id: crate::bus::Guid,
    stats: Arc<StorvspStats>,
    state: Arc<Mutex<DeviceState>>,
}

impl StorvspDevice {
    /// A device with `config` over `controller`'s LUNs.
    pub fn new(config: StorvspConfig, controller: Arc<Controller>) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            controller,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            instance_id: crate::bus::Guid::from_u128(0x6a3f_2b3c_5d1e_4c6f_8e2a_1b7c_9d0e_f123),
            stats: Arc::default(),
            state: Arc::default(),
        })
    }

    /// Sets how many requests one channel takes before answering any.
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
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
    /// guest created them) over `endpoint`. Returns the channel task: it
    /// runs until [`close_channel`](Self::close_channel) (then `Ok`) or a
    /// ring failure. Opening the primary resets the protocol state unless
    /// [`restore_state`](Self::restore_state) supplied one; requests pending from a
    /// restore are re-issued first.
    pub fn open_channel(
        &self,
        index: u16,
        endpoint: Endpoint,
        memory: GuestMemory,
        offer: Arc<dyn SubChannelOffer>,
    ) -> Result<impl Future<Output = Result<(), RunError>> + Send + 'static, DeviceError> {
        let mut device = self.lock();
        if device
            .slots
            .get(&index)
            .is_some_and(|s| s.running.is_some())
        {
            return Err(DeviceError::AlreadyOpen(index));
        }
        let state = if index == 0 {
            let mut channel =
                StorvspChannel::new(self.config, self.controller.clone(), memory.clone())?;
            match device.restored.take() {
                Some(saved) => channel.restore(saved)?,
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
                return Err(DeviceError::NoSuchChannel {
                    index,
                    created: self.sub_channels_created_locked(&device),
                });
            };
            Arc::new(Mutex::new(sub))
        };
        let stop = Arc::new(StopSignal::new());
        let (notify_tx, notify_rx) = async_channel::bounded(4);
        let slot = device.slots.entry(index).or_default();
        slot.state = Some(state.clone());
        slot.running = Some(Running {
            stop: stop.clone(),
            notify: notify_tx,
        });
        let ctx = ChannelContext {
            index,
            state,
            pending: slot.pending.clone(),
            stats: self.stats.clone(),
            stop,
            notifications: notify_rx,
            sub_channels: Arc::new(DeviceSubChannels {
                state: Arc::downgrade(&self.state),
                offer,
            }),
            queue_depth: self.queue_depth,
        };
        drop(device);
        let (reader, writer) = endpoint.split();
        let device = Arc::downgrade(&self.state);
        Ok(async move {
            let result = serve_channel(ctx, reader, writer).await;
            if let Some(device) = device.upgrade() {
                if let Some(slot) = lock_state(&device).slots.get_mut(&index) {
                    slot.running = None;
                }
            }
            result
        })
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
    pub fn close_channel(&self, index: u16) -> Result<(), DeviceError> {
        let device = self.lock();
        match device.slots.get(&index).and_then(|s| s.running.as_ref()) {
            Some(running) => {
                running.stop.stop();
                Ok(())
            }
            None => Err(DeviceError::NotOpen(index)),
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
            Some(notice) => running.notify.try_send(notice).is_ok() || running.notify.is_full(),
            None => false,
        }
    }

    /// The saved state. Every channel must be closed (its task finished).
    pub fn save_state(&self) -> Result<SavedDevice, DeviceError> {
        let device = self.lock();
        if let Some((&index, _)) = device.slots.iter().find(|(_, s)| s.running.is_some()) {
            return Err(DeviceError::ChannelRunning(index));
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
    pub fn restore_state(&self, saved: SavedDevice) -> Result<(), DeviceError> {
        let mut device = self.lock();
        if let Some((&index, _)) = device.slots.iter().find(|(_, s)| s.running.is_some()) {
            return Err(DeviceError::ChannelRunning(index));
        }
        let created = match saved.primary {
            Some(primary) => {
                primary.validate(&self.config)?;
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
                return Err(DeviceError::SavedChannel {
                    index: *index,
                    created,
                });
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
    offer: Arc<dyn SubChannelOffer>,
}

fn lock_state(state: &Mutex<DeviceState>) -> std::sync::MutexGuard<'_, DeviceState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl SubChannelRequester for DeviceSubChannels {
    fn create_sub_channels(&self, count: u16) -> Result<(), String> {
        let Some(device) = self.state.upgrade() else {
            return Err("device is gone".into());
        };
        {
            let mut state = lock_state(&device);
            for index in 1..=count {
                state.slots.entry(index).or_default();
            }
        }
        self.offer.offer_sub_channels(count)
    }
}
