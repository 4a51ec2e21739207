//! Wire layouts of the VMBus channel-management messages (the payloads of
//! SynIC messages between a guest's VMBus driver and the host), with their
//! type numbers, versions, connection ids and limits.
//!
//! Structs and constants only, shared by the host control plane
//! (`vmbdev-vmbus`) and the guest client (`vmbdev-guest`). Every struct is
//! packed little-endian (`Unaligned`) and starts with [`MessageHeader`].
//! Variable parts (GPADL ranges and page numbers) follow the fixed structs.

use crate::vmbfs::Guid;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Largest SynIC message payload; a longer guest message is refused.
pub const MAX_MESSAGE_LEN: usize = 240;

/// Message connection id before protocol 5.0, and the one the host hands
/// out in VERSION_RESPONSE from 5.0 on.
pub const MESSAGE_CONNECTION_ID: u32 = 1;

/// Message connection id a guest uses for INITIATE_CONTACT from 5.0 on.
pub const MESSAGE_CONNECTION_ID_4: u32 = 4;

/// The SINT VMBus messages and channel interrupts arrive on.
pub const VMBUS_SINT: u8 = 2;

/// Status in a reply: success.
pub const STATUS_SUCCESS: u32 = 0;

/// Status in a reply: the request was refused (an NTSTATUS error; the
/// guest only tests for non-zero).
pub const STATUS_UNSUCCESSFUL: u32 = 0xc000_0001;

/// Page numbers a GPADL_HEADER carries after its one range header: what
/// fits in a payload after the 20-byte fixed part and the 8-byte range.
pub const GPADL_HEADER_MAX_PFNS: usize = (MAX_MESSAGE_LEN - 20 - 8) / 8;

/// Page numbers one GPADL_BODY carries after its 16-byte fixed part.
pub const GPADL_BODY_MAX_PFNS: usize = (MAX_MESSAGE_LEN - 16) / 8;

/// Bytes of one SIMP message slot (`struct hv_message`).
pub const SLOT_SIZE: u64 = 256;

/// Offset of the payload in a SIMP slot, after `message_type u32,
/// payload_size u8, message_flags u8, reserved u16, port u64`.
pub const SLOT_PAYLOAD_OFFSET: u64 = 16;

/// Offset of `payload_size` (u8) in a SIMP slot.
pub const SLOT_SIZE_OFFSET: u64 = 4;

/// Offset of `message_flags` (u8) in a SIMP slot.
pub const SLOT_FLAGS_OFFSET: u64 = 5;

/// `message_flags` bit: the host holds more messages for this slot; the
/// guest writes EOM after emptying it.
pub const SLOT_FLAG_PENDING: u8 = 1;

/// Slot `message_type` of an empty slot.
pub const SLOT_TYPE_NONE: u32 = 0;

/// Slot `message_type` of a VMBus channel message.
pub const SLOT_TYPE_CHANNEL_MESSAGE: u32 = 1;

/// Event flags per SINT in the SIEFP page (one bit per relid).
pub const EVENT_FLAGS_PER_SINT: u32 = 2048;

/// A protocol version, `(major << 16) | minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    /// Windows 8.
    pub const WIN8: Self = Self(0x0002_0004);
    /// Windows 8.1.
    pub const WIN8_1: Self = Self(0x0003_0000);
    /// Windows 10.
    pub const WIN10: Self = Self(0x0004_0000);
    /// Windows 10, 4.1.
    pub const WIN10_4_1: Self = Self(0x0004_0001);
    /// 5.0: INITIATE_CONTACT on connection 4, message SINT chosen by the guest.
    pub const V5_0: Self = Self(0x0005_0000);
    /// 5.1.
    pub const V5_1: Self = Self(0x0005_0001);
    /// 5.2.
    pub const V5_2: Self = Self(0x0005_0002);
    /// 5.3: MODIFYCHANNEL is acknowledged.
    pub const V5_3: Self = Self(0x0005_0003);

    /// Every version the host accepts, lowest first.
    pub const SUPPORTED: [Self; 8] = [
        Self::WIN8,
        Self::WIN8_1,
        Self::WIN10,
        Self::WIN10_4_1,
        Self::V5_0,
        Self::V5_1,
        Self::V5_2,
        Self::V5_3,
    ];
}

/// A message type number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType(pub u32);

impl MessageType {
    /// host→guest: a channel offer.
    pub const OFFER_CHANNEL: Self = Self(1);
    /// host→guest: an offer is withdrawn.
    pub const RESCIND_CHANNEL_OFFER: Self = Self(2);
    /// guest→host: send every offer.
    pub const REQUEST_OFFERS: Self = Self(3);
    /// host→guest: every offer was sent.
    pub const ALL_OFFERS_DELIVERED: Self = Self(4);
    /// guest→host: open a channel over a ring GPADL.
    pub const OPEN_CHANNEL: Self = Self(5);
    /// host→guest: the outcome of an open.
    pub const OPEN_CHANNEL_RESULT: Self = Self(6);
    /// guest→host: close a channel.
    pub const CLOSE_CHANNEL: Self = Self(7);
    /// guest→host: first part of a GPADL.
    pub const GPADL_HEADER: Self = Self(8);
    /// guest→host: more page numbers of a GPADL.
    pub const GPADL_BODY: Self = Self(9);
    /// host→guest: the outcome of a GPADL.
    pub const GPADL_CREATED: Self = Self(10);
    /// guest→host: remove a GPADL.
    pub const GPADL_TEARDOWN: Self = Self(11);
    /// host→guest: the GPADL's pages are no longer used.
    pub const GPADL_TORNDOWN: Self = Self(12);
    /// guest→host: a rescinded relid may be reused.
    pub const RELID_RELEASED: Self = Self(13);
    /// guest→host: version negotiation.
    pub const INITIATE_CONTACT: Self = Self(14);
    /// host→guest: the answer to INITIATE_CONTACT.
    pub const VERSION_RESPONSE: Self = Self(15);
    /// guest→host: disconnect.
    pub const UNLOAD: Self = Self(16);
    /// host→guest: everything is closed.
    pub const UNLOAD_RESPONSE: Self = Self(17);
    /// guest→host: move a channel's interrupts to another vCPU.
    pub const MODIFY_CHANNEL: Self = Self(22);
    /// host→guest: the outcome of MODIFYCHANNEL (5.3 on).
    pub const MODIFY_CHANNEL_RESPONSE: Self = Self(24);
}

/// The 8 bytes every message starts with.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MessageHeader {
    /// A [`MessageType`] value.
    pub message_type: U32,
    /// Zero when sent, ignored when received.
    pub padding: U32,
}

impl MessageHeader {
    /// A header of type `message_type`.
    pub fn new(message_type: MessageType) -> Self {
        Self {
            message_type: U32::new(message_type.0),
            padding: U32::ZERO,
        }
    }
}

/// Channel flag: the channel is a named pipe ([`ChannelOffer::user_defined`]
/// starts with the pipe mode).
pub const CHANNEL_FLAG_NAMED_PIPE: u16 = 0x10;

/// Pipe mode in the offer: a byte stream.
pub const PIPE_MODE_BYTE: u32 = 0;

/// Pipe mode in the offer: one packet per message.
pub const PIPE_MODE_MESSAGE: u32 = 1;

/// The device description inside OFFERCHANNEL (176 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ChannelOffer {
    /// Interface (class) GUID.
    pub interface_id: Guid,
    /// Instance GUID.
    pub instance_id: Guid,
    /// Unused.
    pub reserved1: U64,
    /// Unused.
    pub reserved2: U64,
    /// `CHANNEL_FLAG_*` bits.
    pub flags: U16,
    /// MMIO space the device wants, in MiB.
    pub mmio_megabytes: U16,
    /// Device-defined bytes; pipe channels put the pipe mode (u32) first.
    pub user_defined: [u8; 120],
    /// 0 for a primary channel, 1..n for its sub-channels.
    pub sub_channel_index: U16,
    /// Unused.
    pub reserved3: U16,
}

/// OFFERCHANNEL (196 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OfferChannel {
    /// Type [`MessageType::OFFER_CHANNEL`].
    pub header: MessageHeader,
    /// The device.
    pub offer: ChannelOffer,
    /// The channel's relid.
    pub child_relid: U32,
    /// Monitor slot (unused when `monitor_allocated` is 0).
    pub monitor_id: u8,
    /// Bit 0: monitor allocated.
    pub monitor_allocated: u8,
    /// Bit 0: dedicated interrupt.
    pub dedicated_interrupt: U16,
    /// What the guest passes to HvSignalEvent for this channel.
    pub connection_id: U32,
}

/// RESCIND_CHANNELOFFER, CLOSECHANNEL and RELID_RELEASED.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RelidMessage {
    /// The message type.
    pub header: MessageHeader,
    /// The channel.
    pub child_relid: U32,
}

/// OPENCHANNEL (148 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OpenChannel {
    /// Type [`MessageType::OPEN_CHANNEL`].
    pub header: MessageHeader,
    /// The channel.
    pub child_relid: U32,
    /// Echoed in the result.
    pub open_id: U32,
    /// GPADL of the whole ring (guest→host half first).
    pub ring_gpadl: U32,
    /// vCPU for host→guest interrupts.
    pub target_vp: U32,
    /// Page index where the host→guest half starts.
    pub downstream_page_offset: U32,
    /// Passed to the device (unused here).
    pub user_data: [u8; 120],
}

/// OPENCHANNEL_RESULT.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OpenResult {
    /// Type [`MessageType::OPEN_CHANNEL_RESULT`].
    pub header: MessageHeader,
    /// The channel.
    pub child_relid: U32,
    /// From the request.
    pub open_id: U32,
    /// 0 on success.
    pub status: U32,
}

/// GPADL_HEADER's fixed part; `range_buflen` bytes of ranges follow, the
/// first of them in this message and the rest in GPADL_BODY messages.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GpadlHeader {
    /// Type [`MessageType::GPADL_HEADER`].
    pub header: MessageHeader,
    /// The channel the GPADL is for.
    pub child_relid: U32,
    /// The guest's handle for it.
    pub gpadl: U32,
    /// Bytes of all ranges (each `byte_count u32, byte_offset u32, pfn u64…`).
    pub range_buflen: U16,
    /// Number of ranges.
    pub range_count: U16,
}

/// GPADL_BODY's fixed part; page numbers (u64) follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GpadlBody {
    /// Type [`MessageType::GPADL_BODY`].
    pub header: MessageHeader,
    /// Sequence number (not relied on: bodies are taken in order).
    pub message_number: U32,
    /// The GPADL being continued.
    pub gpadl: U32,
}

/// GPADL_CREATED.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GpadlCreated {
    /// Type [`MessageType::GPADL_CREATED`].
    pub header: MessageHeader,
    /// From the header.
    pub child_relid: U32,
    /// From the header.
    pub gpadl: U32,
    /// 0 on success.
    pub status: U32,
}

/// GPADL_TEARDOWN.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GpadlTeardown {
    /// Type [`MessageType::GPADL_TEARDOWN`].
    pub header: MessageHeader,
    /// The channel.
    pub child_relid: U32,
    /// The GPADL.
    pub gpadl: U32,
}

/// GPADL_TORNDOWN.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GpadlTorndown {
    /// Type [`MessageType::GPADL_TORNDOWN`].
    pub header: MessageHeader,
    /// The GPADL.
    pub gpadl: U32,
}

/// INITIATE_CONTACT (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct InitiateContact {
    /// Type [`MessageType::INITIATE_CONTACT`].
    pub header: MessageHeader,
    /// The [`Version`] asked for.
    pub version_requested: U32,
    /// vCPU the host posts its messages to.
    pub target_vcpu: U32,
    /// Before 5.0: GPA of the interrupt page. From 5.0: the message SINT
    /// in the low byte.
    pub interrupt_page_or_sint: U64,
    /// Monitor page, host→guest.
    pub monitor_page1: U64,
    /// Monitor page, guest→host.
    pub monitor_page2: U64,
}

/// VERSION_RESPONSE.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct VersionResponse {
    /// Type [`MessageType::VERSION_RESPONSE`].
    pub header: MessageHeader,
    /// Non-zero if the version was accepted.
    pub version_supported: u8,
    /// 0: connected.
    pub connection_state: u8,
    /// Zero.
    pub padding: U16,
    /// Message connection id to use from now on (5.0 on).
    pub message_connection_id: U32,
}

/// MODIFYCHANNEL.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ModifyChannel {
    /// Type [`MessageType::MODIFY_CHANNEL`].
    pub header: MessageHeader,
    /// The channel.
    pub child_relid: U32,
    /// New vCPU for its interrupts.
    pub target_vp: U32,
}

/// MODIFYCHANNEL_RESPONSE.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ModifyChannelResponse {
    /// Type [`MessageType::MODIFY_CHANNEL_RESPONSE`].
    pub header: MessageHeader,
    /// The channel.
    pub child_relid: U32,
    /// 0 on success.
    pub status: U32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_wire() {
        assert_eq!(size_of::<ChannelOffer>(), 176);
        assert_eq!(size_of::<OfferChannel>(), 196);
        assert_eq!(size_of::<OpenChannel>(), 148);
        assert_eq!(size_of::<OpenResult>(), 20);
        assert_eq!(size_of::<GpadlHeader>(), 20);
        assert_eq!(size_of::<GpadlBody>(), 16);
        assert_eq!(size_of::<GpadlCreated>(), 20);
        assert_eq!(size_of::<InitiateContact>(), 40);
        assert_eq!(size_of::<VersionResponse>(), 16);
        assert_eq!(size_of::<ModifyChannelResponse>(), 16);
        assert_eq!(GPADL_HEADER_MAX_PFNS, 26);
        assert_eq!(GPADL_BODY_MAX_PFNS, 28);
    }
}
