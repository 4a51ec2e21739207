//! The vstor protocol spoken on a storvsp (VMBus SCSI) channel: the packet
//! header, its body union (protocol version, channel properties, sub-channel
//! count, SCSI request block), operations, protocol versions and the NTSTATUS
//! and SRB status values the host uses. All fields are little-endian.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Interface (class) GUID of the storvsp device, as text.
pub const INTERFACE_GUID: &str = "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f";

/// Size of the vstor packet header (operation, flags, status).
pub const HEADER_SIZE: usize = 12;
/// Largest body the host ever reads from a request (the WIN8+ SRB).
pub const MAX_BODY_SIZE: usize = 0x34;
/// Packet size with a pre-WIN8 SRB.
pub const PACKET_SIZE_PRE_WIN8: usize = HEADER_SIZE + SRB_SIZE_PRE_WIN8;
/// Packet size with a WIN8+ SRB; also the largest packet the host sends.
pub const PACKET_SIZE_WIN8: usize = HEADER_SIZE + SRB_SIZE_WIN8;
/// Host-to-guest packets on this channel must not exceed this many bytes
/// (the limit Linux storvsc enforces on the VMBus packet payload).
pub const MAX_HOST_PACKET_SIZE: usize = 80;

/// SRB size before WIN8.
pub const SRB_SIZE_PRE_WIN8: usize = 0x24;
/// SRB size from WIN8.
pub const SRB_SIZE_WIN8: usize = 0x34;
/// Sense buffer carried in the SRB before WIN8.
pub const SENSE_SIZE_PRE_WIN8: usize = 0x12;
/// Sense buffer carried in the SRB from WIN8.
pub const SENSE_SIZE_WIN8: usize = 0x14;
/// Bytes of the CDB / sense union in the SRB.
pub const CDB_SENSE_UNION_SIZE: usize = 20;
/// Largest CDB the SRB carries.
pub const MAX_CDB_SIZE: usize = 16;

/// Guest flag: the request wants a completion.
pub const FLAG_REQUEST_COMPLETION: u32 = 1;
/// Properties flag: the host supports sub-channels.
pub const PROPERTIES_FLAG_MULTI_CHANNEL: u32 = 0x1;

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u32)]
/// The `operation` field of a vstor packet.
pub enum Operation {
    /// Complete io (1).
    COMPLETE_IO = 1,
    /// Remove device (2).
    REMOVE_DEVICE = 2,
    /// Execute srb (3).
    EXECUTE_SRB = 3,
    /// Reset lun (4).
    RESET_LUN = 4,
    /// Reset adapter (5).
    RESET_ADAPTER = 5,
    /// Reset bus (6).
    RESET_BUS = 6,
    /// Begin initialization (7).
    BEGIN_INITIALIZATION = 7,
    /// End initialization (8).
    END_INITIALIZATION = 8,
    /// Query protocol version (9).
    QUERY_PROTOCOL_VERSION = 9,
    /// Query properties (10).
    QUERY_PROPERTIES = 10,
    /// Enumerate bus (11).
    ENUMERATE_BUS = 11,
    /// Fc hba data (12).
    FC_HBA_DATA = 12,
    /// Create sub channels (13).
    CREATE_SUB_CHANNELS = 13,
    /// Event notification (14).
    EVENT_NOTIFICATION = 14,
}

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u16)]
/// A protocol version, `(major << 8) | minor`.
pub enum ProtocolVersion {
    /// Win6 (0x0200).
    WIN6 = 0x0200,
    /// Win7 (0x0402).
    WIN7 = 0x0402,
    /// Win8 (0x0501).
    WIN8 = 0x0501,
    /// Win8 1 (0x0600).
    WIN8_1 = 0x0600,
    /// Win10 (0x0602).
    WIN10 = 0x0602,
}

impl ProtocolVersion {
    /// Every version the host accepts, newest first.
    pub const ALL: [ProtocolVersion; 5] = [
        ProtocolVersion::WIN10,
        ProtocolVersion::WIN8_1,
        ProtocolVersion::WIN8,
        ProtocolVersion::WIN7,
        ProtocolVersion::WIN6,
    ];

    /// Whether the host supports this version.
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }

    /// Whether this version uses the 0x34-byte SRB and 0x14-byte sense.
    pub fn has_win8_srb(self) -> bool {
        self.0 >= ProtocolVersion::WIN8.0
    }

    /// SRB size used by this version.
    pub fn srb_size(self) -> usize {
        if self.has_win8_srb() {
            SRB_SIZE_WIN8
        } else {
            SRB_SIZE_PRE_WIN8
        }
    }

    /// Sense buffer size carried in this version's SRB.
    pub fn sense_size(self) -> usize {
        if self.has_win8_srb() {
            SENSE_SIZE_WIN8
        } else {
            SENSE_SIZE_PRE_WIN8
        }
    }

    /// Packet size (header + SRB) of this version.
    pub fn packet_size(self) -> usize {
        HEADER_SIZE + self.srb_size()
    }
}

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u32)]
/// The NTSTATUS values carried in the `status` field.
pub enum NtStatus {
    /// Success (0).
    SUCCESS = 0,
    /// Invalid parameter (0xC000_000D).
    INVALID_PARAMETER = 0xC000_000D,
    /// Invalid device request (0xC000_0010).
    INVALID_DEVICE_REQUEST = 0xC000_0010,
    /// Revision mismatch (0xC000_0059).
    REVISION_MISMATCH = 0xC000_0059,
    /// Not supported (0xC000_00BB).
    NOT_SUPPORTED = 0xC000_00BB,
    /// Invalid device state (0xC000_0184).
    INVALID_DEVICE_STATE = 0xC000_0184,
}

impl NtStatus {
    /// Whether the status is a failure (top bit set).
    pub fn is_error(self) -> bool {
        self.0 & 0x8000_0000 != 0
    }
}

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u8)]
/// SRB status values (bits 0–5 of `srb_status`).
pub enum SrbStatus {
    /// Pending (0x00).
    PENDING = 0x00,
    /// Success (0x01).
    SUCCESS = 0x01,
    /// Aborted (0x02).
    ABORTED = 0x02,
    /// Error (0x04).
    ERROR = 0x04,
    /// Invalid request (0x06).
    INVALID_REQUEST = 0x06,
    /// Invalid path id (0x07).
    INVALID_PATH_ID = 0x07,
    /// No device (0x08).
    NO_DEVICE = 0x08,
    /// Timeout (0x09).
    TIMEOUT = 0x09,
    /// Selection timeout (0x0A).
    SELECTION_TIMEOUT = 0x0A,
    /// Data overrun (0x12).
    DATA_OVERRUN = 0x12,
    /// Invalid lun (0x20).
    INVALID_LUN = 0x20,
    /// Invalid target id (0x21).
    INVALID_TARGET_ID = 0x21,
}

/// `srb_status` bit: the queue is frozen.
pub const SRB_STATUS_QUEUE_FROZEN: u8 = 0x40;
/// `srb_status` bit: the sense buffer holds valid autosense data.
pub const SRB_STATUS_AUTOSENSE_VALID: u8 = 0x80;
/// Mask of the status part of `srb_status`.
pub const SRB_STATUS_MASK: u8 = 0x3F;

#[open_enum::open_enum]
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone, Copy, Debug, Hash)]
#[repr(u8)]
/// The SRB `data_in` field: the direction of the data buffer.
pub enum DataDirection {
    /// Write (0).
    WRITE = 0,
    /// Read (1).
    READ = 1,
    /// None (2).
    NONE = 2,
}

/// The 12-byte header of every vstor packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PacketHeader {
    /// What the packet asks or answers.
    pub operation: Operation,
    /// [`FLAG_REQUEST_COMPLETION`] from the guest, 0 from the host.
    pub flags: U32,
    /// NTSTATUS of a completion.
    pub status: NtStatus,
}

/// Body of QUERY_PROTOCOL_VERSION (request and completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VersionBody {
    /// `(major << 8) | minor`.
    pub major_minor: U16,
    /// Revision (0 from current guests).
    pub revision: U16,
}

/// Body of a QUERY_PROPERTIES completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PropertiesBody {
    /// Reserved, 0.
    pub reserved1: U32,
    /// Most sub-channels the guest may ask for.
    pub max_sub_channels: U16,
    /// Reserved, 0.
    pub reserved2: U16,
    /// [`PROPERTIES_FLAG_MULTI_CHANNEL`].
    pub flags: U32,
    /// Largest data buffer of one SRB, in bytes.
    pub max_transfer_bytes: U32,
    /// Reserved, 0.
    pub reserved3: [U32; 2],
}

/// Body of CREATE_SUB_CHANNELS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CreateSubChannelsBody {
    /// Sub-channels requested.
    pub count: U16,
}

/// A SCSI request block in its WIN8+ form (0x34 bytes). The pre-WIN8 form
/// is the first [`SRB_SIZE_PRE_WIN8`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ScsiRequest {
    /// SRB length as the guest states it (untrusted, informational).
    pub length: U16,
    /// Completion: SRB status with the autosense/frozen bits.
    pub srb_status: u8,
    /// Completion: SCSI status byte.
    pub scsi_status: u8,
    /// Port number (reserved).
    pub port: u8,
    /// SCSI path (bus) id.
    pub path_id: u8,
    /// SCSI target id.
    pub target_id: u8,
    /// Logical unit number.
    pub lun: u8,
    /// Bytes of `cdb_or_sense` that are the CDB.
    pub cdb_length: u8,
    /// Request: guest sense buffer size; completion: sense bytes returned.
    pub sense_info_length: u8,
    /// Data direction.
    pub data_in: DataDirection,
    /// SRB properties (reserved).
    pub properties: u8,
    /// Request: buffer length; completion: bytes actually moved.
    pub data_transfer_length: U32,
    /// The CDB on a request, fixed-format sense on a completion.
    pub cdb_or_sense: [u8; CDB_SENSE_UNION_SIZE],
    /// WIN8+: reserved.
    pub reserve: U16,
    /// WIN8+: queue tag.
    pub queue_tag: u8,
    /// WIN8+: queue action.
    pub queue_action: u8,
    /// WIN8+: SRB flags.
    pub srb_flags: U32,
    /// WIN8+: timeout (units differ between guests).
    pub timeout: U32,
    /// WIN8+: queue sort key.
    pub queue_sort_key: U32,
}

/// A full WIN8+ packet: header and SRB (0x40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SrbPacket {
    /// Operation, flags and status.
    pub header: PacketHeader,
    /// The SCSI request block.
    pub srb: ScsiRequest,
}

const _: () = assert!(size_of::<PacketHeader>() == HEADER_SIZE);
const _: () = assert!(size_of::<VersionBody>() == 4);
const _: () = assert!(size_of::<PropertiesBody>() == 24);
const _: () = assert!(size_of::<CreateSubChannelsBody>() == 2);
const _: () = assert!(size_of::<ScsiRequest>() == SRB_SIZE_WIN8);
const _: () = assert!(size_of::<SrbPacket>() == PACKET_SIZE_WIN8);
const _: () = assert!(PACKET_SIZE_PRE_WIN8 == 0x30);
const _: () = assert!(PACKET_SIZE_WIN8 == 0x40);
const _: () = assert!(PACKET_SIZE_WIN8 <= MAX_HOST_PACKET_SIZE);
const _: () = assert!(HEADER_SIZE + MAX_BODY_SIZE == PACKET_SIZE_WIN8);

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn srb_offsets_match_the_wire_table() {
        let mut packet = <SrbPacket as FromZeros>::new_zeroed();
        packet.srb.target_id = 0xAA;
        packet.srb.data_transfer_length = U32::new(0x1122_3344);
        packet.srb.cdb_or_sense[0] = 0x28;
        packet.srb.srb_flags = U32::new(0x5566_7788);
        let bytes = packet.as_bytes();
        assert_eq!(bytes[18], 0xAA);
        assert_eq!(&bytes[24..28], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(bytes[28], 0x28);
        assert_eq!(&bytes[52..56], &[0x88, 0x77, 0x66, 0x55]);
    }

    #[test]
    fn properties_offsets_match_the_wire_table() {
        let mut bytes = [0u8; HEADER_SIZE + 24];
        let body = PropertiesBody {
            reserved1: U32::new(0),
            max_sub_channels: U16::new(0x0102),
            reserved2: U16::new(0),
            flags: U32::new(1),
            max_transfer_bytes: U32::new(0x0020_0000),
            reserved3: [U32::new(0); 2],
        };
        bytes[HEADER_SIZE..].copy_from_slice(body.as_bytes());
        assert_eq!(&bytes[16..18], &[0x02, 0x01]);
        assert_eq!(bytes[20], 1);
        assert_eq!(&bytes[24..28], &[0, 0, 0x20, 0]);
    }

    #[test]
    fn version_sizes() {
        assert_eq!(ProtocolVersion::WIN7.packet_size(), 0x30);
        assert_eq!(ProtocolVersion::WIN8.packet_size(), 0x40);
        assert_eq!(ProtocolVersion::WIN6.sense_size(), 0x12);
        assert_eq!(ProtocolVersion::WIN10.sense_size(), 0x14);
        assert!(!ProtocolVersion(0x0601).is_known());
    }
}
