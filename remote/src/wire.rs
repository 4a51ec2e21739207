//! The control protocol's wire structs and constants: no logic, no I/O.
//!
//! Every message is one `SOCK_SEQPACKET` datagram: a [`Header`], then
//! `Header::len` payload bytes laid out as the message kind says. Integers
//! are little-endian. File descriptors travel beside the bytes as
//! `SCM_RIGHTS` ancillary data; the kinds that carry them say how many.

use vmbdev_protocol::vmbfs::Guid;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `"VMBR"` in memory order: the first bytes of every message.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VMBR");
/// The protocol version this build speaks (in every header and in hello).
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest datagram either side sends or accepts, header included. Below
/// the default Unix socket send buffer, so one message is one datagram.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Largest payload of a message.
pub const MAX_PAYLOAD_BYTES: usize = MAX_MESSAGE_BYTES - size_of::<Header>();
/// Most regions in a guest memory layout.
pub const MAX_REGIONS: usize = 64;
/// Most pages in a ring GPADL (control pages included): 2 × 1023 data
/// pages of 4 KiB plus two control pages, far beyond any offer.
pub const MAX_RING_PAGES: usize = 2048;
/// Most bytes of error or channel-end text.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most file descriptors one message carries.
pub const MAX_FDS: usize = 2;

/// Message kinds. Requests from the VMM are below 32, requests and
/// notifications from the device 32..64, replies 64 and above.
pub mod kind {
    /// VMM → device: [`HelloRequest`](super::HelloRequest); reply
    /// [`HELLO_REPLY`].
    pub const HELLO: u16 = 1;
    /// VMM → device: no payload; reply [`OFFER_REPLY`].
    pub const GET_OFFER: u16 = 2;
    /// VMM → device: [`MemoryHeader`](super::MemoryHeader) then its
    /// [`RegionDesc`](super::RegionDesc)s, one fd (the memfd); reply
    /// [`OK`].
    pub const SET_MEMORY: u16 = 3;
    /// VMM → device: [`OpenHeader`](super::OpenHeader) then its page
    /// numbers (`U64` each), two fds (the eventfd the guest rings for the
    /// device, then the one the device rings for the guest); reply [`OK`].
    pub const OPEN: u16 = 4;
    /// VMM → device: [`ChannelRef`](super::ChannelRef); reply [`OK`].
    pub const CLOSE: u16 = 5;
    /// VMM → device: no payload; reply [`SAVED_REPLY`].
    pub const SAVE: u16 = 6;
    /// VMM → device: the saved bytes; reply [`OK`].
    pub const RESTORE: u16 = 7;
    /// VMM → bus backend: [`SynicPages`](super::SynicPages); reply [`OK`].
    pub const SYNIC_PAGES: u16 = 8;
    /// VMM → bus backend: [`SintRoute`](super::SintRoute), one fd (the
    /// eventfd that raises the SINT, an irqfd under KVM); reply [`OK`].
    pub const SINT_ROUTE: u16 = 9;
    /// VMM → bus backend: [`GuestMessage`](super::GuestMessage) then the
    /// message bytes (an HvPostMessage); reply [`POST_REPLY`].
    pub const GUEST_MESSAGE: u16 = 10;
    /// VMM → bus backend: [`VpRef`](super::VpRef) (the guest wrote EOM on
    /// that vCPU); reply [`OK`].
    pub const EOM: u16 = 11;
    /// Device → VMM: [`SubChannelsRequest`](super::SubChannelsRequest);
    /// reply [`OK`].
    pub const SUB_CHANNELS: u16 = 32;
    /// Device → VMM notification (no reply):
    /// [`ChannelEnded`](super::ChannelEnded) then its text.
    pub const CHANNEL_ENDED: u16 = 33;
    /// Bus backend → VMM: [`EventRoute`](super::EventRoute), one fd (the
    /// eventfd HvSignalEvent on the connection id must ring); reply [`OK`],
    /// sent once the route is in place.
    pub const ROUTE_EVENT: u16 = 34;
    /// Bus backend → VMM notification (no reply):
    /// [`EventRoute`](super::EventRoute); the connection id is no longer
    /// routed.
    pub const UNROUTE_EVENT: u16 = 35;
    /// Success, no payload.
    pub const OK: u16 = 64;
    /// Failure: [`ErrorReply`](super::ErrorReply) then UTF-8 text.
    pub const ERROR: u16 = 65;
    /// [`HelloReply`](super::HelloReply).
    pub const HELLO_REPLY: u16 = 66;
    /// [`OfferWire`](super::OfferWire) then the name (UTF-8).
    pub const OFFER_REPLY: u16 = 67;
    /// The device's saved state bytes.
    pub const SAVED_REPLY: u16 = 68;
    /// [`PostReply`](super::PostReply).
    pub const POST_REPLY: u16 = 69;
}

/// Error codes of an [`ErrorReply`].
pub mod code {
    /// The message is shorter than its header or its kind's fixed part,
    /// or its length field disagrees with the datagram.
    pub const TRUNCATED: u32 = 1;
    /// Wrong magic or a protocol version this side does not speak.
    pub const BAD_VERSION: u32 = 2;
    /// A kind this side does not know (or may not receive).
    pub const UNKNOWN_COMMAND: u32 = 3;
    /// The message lacks the file descriptors its kind needs.
    pub const MISSING_FDS: u32 = 4;
    /// A ring page list that is empty, too long or reaches outside guest
    /// memory.
    pub const BAD_GPADL: u32 = 5;
    /// A memory fd or layout refused (unsealed, short, bad regions).
    pub const BAD_MEMORY: u32 = 6;
    /// An open before any memory was set.
    pub const NO_MEMORY: u32 = 7;
    /// The device refused the call (its error text follows).
    pub const DEVICE: u32 = 8;
    /// The message or a count in it is above the protocol's bounds.
    pub const TOO_LARGE: u32 = 9;
    /// The message carries file descriptors its kind does not take.
    pub const UNEXPECTED_FDS: u32 = 10;
    /// A request before hello, or a second hello.
    pub const BAD_SEQUENCE: u32 = 11;
    /// A field holds a value its kind does not allow.
    pub const BAD_FIELD: u32 = 12;
}

/// The fixed start of every message.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: U32,
    /// [`PROTOCOL_VERSION`].
    pub version: U16,
    /// One of [`kind`].
    pub kind: U16,
    /// Request id chosen by the sender of a request; a reply echoes it.
    pub id: U32,
    /// Payload bytes after the header.
    pub len: U32,
}

/// Payload of [`kind::HELLO`]: the versions the VMM speaks.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct HelloRequest {
    /// Oldest version.
    pub min_version: U16,
    /// Newest version.
    pub max_version: U16,
    /// Zero.
    pub reserved: U32,
}

/// Payload of [`kind::HELLO_REPLY`]: the version both sides now speak.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct HelloReply {
    /// The chosen version.
    pub version: U16,
    /// Zero.
    pub reserved: U16,
    /// Zero.
    pub reserved2: U32,
}

/// Fixed part of [`kind::SET_MEMORY`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MemoryHeader {
    /// Number of [`RegionDesc`]s that follow.
    pub region_count: U32,
    /// Zero.
    pub reserved: U32,
}

/// One guest memory region: where its bytes are in the memfd.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RegionDesc {
    /// First guest physical address.
    pub gpa: U64,
    /// Length in bytes.
    pub len: U64,
    /// Offset of the region in the memfd.
    pub fd_offset: U64,
}

/// Fixed part of [`kind::OPEN`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OpenHeader {
    /// Channel index (0: primary).
    pub channel: U16,
    /// Zero.
    pub reserved: U16,
    /// Page index in the ring GPADL where the host→guest half starts.
    pub downstream_offset: U32,
    /// Number of page numbers that follow.
    pub page_count: U32,
    /// Zero.
    pub reserved2: U32,
}

/// Payload of [`kind::CLOSE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ChannelRef {
    /// Channel index.
    pub channel: U16,
    /// Zero.
    pub reserved: U16,
    /// Zero.
    pub reserved2: U32,
}

/// Payload of [`kind::SUB_CHANNELS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SubChannelsRequest {
    /// The channel whose task asks (the primary, for storvsp).
    pub channel: U16,
    /// Sub-channels to offer (1..=count).
    pub count: U16,
    /// Zero.
    pub reserved: U32,
}

/// Fixed part of [`kind::CHANNEL_ENDED`]; the text (why it failed) follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ChannelEnded {
    /// Channel index.
    pub channel: U16,
    /// 1: ended cleanly (closed); 0: failed.
    pub ok: U16,
    /// Zero.
    pub reserved: U32,
}

/// Fixed part of [`kind::ERROR`]; UTF-8 text follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ErrorReply {
    /// One of [`code`].
    pub code: U32,
    /// With [`code::DEVICE`]: which bus error the device returned (one of
    /// [`bus_error`]), so the proxy hands the VMM the same error a local
    /// device would; otherwise 0.
    pub bus_error: U16,
    /// The bus error's channel index (or requested count).
    pub arg: U16,
    /// The bus error's second number (channel count), or 0.
    pub arg2: U16,
    /// Zero.
    pub reserved: U16,
}

/// `ErrorReply::bus_error` values.
pub mod bus_error {
    /// Not a bus error with fields (the text says what).
    pub const OTHER: u16 = 0;
    /// `NoSuchChannel { index: arg, count: arg2 }`.
    pub const NO_SUCH_CHANNEL: u16 = 1;
    /// `AlreadyOpen(arg)`.
    pub const ALREADY_OPEN: u16 = 2;
    /// `NotOpen(arg)`.
    pub const NOT_OPEN: u16 = 3;
    /// `ChannelRunning(arg)`.
    pub const CHANNEL_RUNNING: u16 = 4;
    /// `SubChannelsUnsupported { requested: arg }`.
    pub const SUB_CHANNELS_UNSUPPORTED: u16 = 5;
    /// `BadSavedState(text)`.
    pub const BAD_SAVED_STATE: u16 = 6;
}

/// Fixed part of [`kind::OFFER_REPLY`]; the name (UTF-8) follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct OfferWire {
    /// Interface (class) GUID.
    pub interface_id: Guid,
    /// Instance GUID.
    pub instance_id: Guid,
    /// 0: none, 1: message pipe, 2: byte pipe.
    pub pipe_mode: U32,
    /// Guest→host ring data pages wanted.
    pub incoming_ring_pages: U32,
    /// Host→guest ring data pages wanted.
    pub outgoing_ring_pages: U32,
    /// Most sub-channels.
    pub max_sub_channels: U16,
    /// Zero.
    pub reserved: U16,
}

/// `OfferWire::pipe_mode` values.
pub mod pipe_mode {
    /// Plain packets.
    pub const NONE: u32 = 0;
    /// Message-mode pipe.
    pub const MESSAGE: u32 = 1;
    /// Byte-mode pipe.
    pub const BYTE: u32 = 2;
}

/// Payload of [`kind::SYNIC_PAGES`]: the guest wrote vCPU `vp`'s SIMP or
/// SIEFP register.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SynicPages {
    /// The vCPU.
    pub vp: U32,
    /// Bit 0: the SIMP page is enabled; bit 1: the SIEFP page is.
    pub enabled: U32,
    /// Guest-physical address of the SIMP page.
    pub simp: U64,
    /// Guest-physical address of the SIEFP page.
    pub siefp: U64,
}

/// `SynicPages::enabled` bits.
pub mod synic_enabled {
    /// The SIMP page is enabled.
    pub const SIMP: u32 = 1;
    /// The SIEFP page is enabled.
    pub const SIEFP: u32 = 2;
}

/// Payload of [`kind::SINT_ROUTE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SintRoute {
    /// The vCPU.
    pub vp: U32,
    /// The SINT (below 16).
    pub sint: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// Fixed part of [`kind::GUEST_MESSAGE`]; the message bytes follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct GuestMessage {
    /// The connection id the guest posted on.
    pub connection_id: U32,
    /// Zero.
    pub reserved: U32,
}

/// Payload of [`kind::POST_REPLY`]: what the guest's HvPostMessage
/// returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PostReply {
    /// A Hyper-V hypercall status: [`HV_STATUS_SUCCESS`], or
    /// [`HV_STATUS_INVALID_CONNECTION_ID`] for a connection id the bus
    /// does not take messages on. A message the bus drops for any other
    /// reason is still a success to the guest (and counted by the bus).
    pub status: U16,
    /// Zero.
    pub reserved: U16,
    /// Zero.
    pub reserved2: U32,
}

/// The hypercall completed.
pub const HV_STATUS_SUCCESS: u16 = 0;
/// HvPostMessage on a connection id nobody listens on.
pub const HV_STATUS_INVALID_CONNECTION_ID: u16 = 0x12;

/// Payload of [`kind::EOM`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct VpRef {
    /// The vCPU.
    pub vp: U32,
    /// Zero.
    pub reserved: U32,
}

/// Payload of [`kind::ROUTE_EVENT`] and [`kind::UNROUTE_EVENT`].
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct EventRoute {
    /// What the guest passes to HvSignalEvent for the channel.
    pub connection_id: U32,
    /// The channel's relid.
    pub relid: U32,
}

const _: () = assert!(size_of::<Header>() == 16);
const _: () = assert!(size_of::<OpenHeader>() == 16);
const _: () = assert!(size_of::<RegionDesc>() == 24);
const _: () = assert!(size_of::<OfferWire>() == 48);
const _: () = assert!(size_of::<ErrorReply>() == 12);
const _: () = assert!(MAX_RING_PAGES * 8 + size_of::<OpenHeader>() <= MAX_PAYLOAD_BYTES);
const _: () = assert!(MAX_REGIONS * 24 + size_of::<MemoryHeader>() <= MAX_PAYLOAD_BYTES);
