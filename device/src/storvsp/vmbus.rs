//! [`StorvspDevice`] on the device-bus contract: the offer, channel open
//! and close, sub-channel requests through the bus, and saved state as
//! bytes.

use vmbdev_protocol::vstor;

use super::device::StorvspDevice;
use super::saved::{self, StorvspSavedStateError};
use crate::bus::{BusError, ChannelTask, Guid, Offer, OpenRequest, PipeMode, VmbusDevice};

/// The storvsp interface (class) GUID.
pub const INTERFACE_ID: Guid = Guid::from_u128(0xba6163d9_04a1_4d29_b605_72e2ffb1dc7f);

/// Ring data pages per direction a storvsp channel asks for.
pub const RING_PAGES: u32 = 16;

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
        self.open_channel(channel_index, request)
    }

    fn close(&self, channel_index: u16) -> Result<(), BusError> {
        self.close_channel(channel_index)
    }

    fn save(&self) -> Result<Vec<u8>, BusError> {
        Ok(saved::encode(&self.save_state()?))
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), BusError> {
        let state = saved::decode(bytes).map_err(StorvspSavedStateError::from)?;
        self.restore_state(state)
    }
}

const _: () = assert!(vstor::PACKET_SIZE_WIN8 <= vstor::MAX_HOST_PACKET_SIZE);
