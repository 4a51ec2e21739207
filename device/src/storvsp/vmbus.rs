//! [`StorvspDevice`] on the device-bus contract: the offer, channel open
//! and close, sub-channel requests through the bus, and saved state as
//! bytes.

use std::sync::Arc;

use vmbdev_protocol::vstor;

use super::device::{DeviceError, StorvspDevice, SubChannelOffer};
use super::runner::RunError;
use super::saved;
use crate::bus::{
    BusError, ChannelError, ChannelTask, Guid, Offer, OpenRequest, PipeMode, SubChannelControl,
    VmbusDevice,
};

/// The storvsp interface (class) GUID.
pub const INTERFACE_ID: Guid = Guid::from_u128(0xba6163d9_04a1_4d29_b605_72e2ffb1dc7f);

/// Ring data pages per direction a storvsp channel asks for.
pub const RING_PAGES: u32 = 16;

/// Hands CREATE_SUB_CHANNELS to the bus.
struct BusSubChannels(Arc<dyn SubChannelControl>);

impl SubChannelOffer for BusSubChannels {
    fn offer_sub_channels(&self, count: u16) -> Result<(), String> {
        self.0.enable_sub_channels(count).map_err(|e| e.to_string())
    }
}

fn bus_error(error: DeviceError) -> BusError {
    match error {
        DeviceError::AlreadyOpen(i) => BusError::AlreadyOpen(i),
        DeviceError::NotOpen(i) => BusError::NotOpen(i),
        DeviceError::ChannelRunning(i) => BusError::ChannelRunning(i),
        DeviceError::NoSuchChannel { index, created } => BusError::NoSuchChannel {
            index,
            count: created + 1,
        },
        other => BusError::BadSavedState(other.to_string()),
    }
}

impl VmbusDevice for StorvspDevice {
    fn offer(&self) -> Offer {
        let config = self.config();
        Offer {
            interface_id: INTERFACE_ID,
            instance_id: self.instance_id(),
            pipe_mode: PipeMode::None,
            incoming_ring_pages: RING_PAGES,
            outgoing_ring_pages: RING_PAGES,
            max_sub_channels: if config.multi_channel {
                config.max_sub_channels
            } else {
                0
            },
            name: "storvsp".into(),
        }
    }

    fn open(&self, channel_index: u16, request: OpenRequest) -> Result<ChannelTask, BusError> {
        let offer: Arc<dyn SubChannelOffer> = Arc::new(BusSubChannels(request.sub_channels));
        let task = self
            .open_channel(channel_index, request.endpoint, request.memory, offer)
            .map_err(bus_error)?;
        Ok(Box::pin(async move {
            task.await.map_err(|error| match error {
                RunError::Ring { channel, source } => ChannelError::Ring { channel, source },
                RunError::Panicked { channel } => ChannelError::Protocol {
                    channel,
                    source: Box::new(RunError::Panicked { channel }),
                },
            })
        }))
    }

    fn close(&self, channel_index: u16) -> Result<(), BusError> {
        self.close_channel(channel_index).map_err(bus_error)
    }

    fn save(&self) -> Result<Vec<u8>, BusError> {
        Ok(saved::encode(&self.save_state().map_err(bus_error)?))
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), BusError> {
        let state = saved::decode(bytes).map_err(|e| BusError::BadSavedState(e.to_string()))?;
        self.restore_state(state).map_err(bus_error)
    }
}

const _: () = assert!(vstor::PACKET_SIZE_WIN8 <= vstor::MAX_HOST_PACKET_SIZE);
