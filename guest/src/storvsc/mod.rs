//! The pure parts of a storvsc (guest SCSI driver) modelled on real guests:
//! the init handshake as Linux runs it (0x40-byte packets, version fallback
//! 0x0602 → 0x0600 → 0x0501 → 0x0402 → 0x0200) and as the Hyper-V UEFI
//! firmware runs it (0x30-byte packets, 0x0600 only), SRB packet building,
//! completion parsing, and parsers for the SCSI data a disk probe reads
//! (INQUIRY, VPD 0x00, MODE SENSE, READ CAPACITY, REPORT LUNS).
//!
//! No ring I/O here: a driver loop sends what [`InitDriver`] asks for and
//! feeds back completions; [`driver`] is that loop over real rings.

use thiserror::Error;
use vmbdev_protocol::scsi::{self, Opcode};
use vmbdev_protocol::vstor::{self, NtStatus, Operation, ProtocolVersion};

/// Where a logical unit sits, as an SRB addresses it: path (bus), target
/// and LUN. The guest's own type: the host keeps its LUN map in terms of
/// its own address type, and the two meet only on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LunAddress {
    /// SRB `path_id`.
    pub path: u8,
    /// SRB `target_id`.
    pub target: u8,
    /// SRB `lun`.
    pub lun: u8,
}

/// Which real guest a driver imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestProfile {
    /// Linux storvsc: 0x40-byte packets from the start, version fallback.
    Linux,
    /// Hyper-V UEFI firmware: 0x30-byte init packets, version 0x0600 only,
    /// REPORT LUNS with allocation length 0.
    Uefi,
}

impl GuestProfile {
    /// Versions tried, in order.
    pub fn versions(self) -> &'static [u16] {
        match self {
            GuestProfile::Linux => &[0x0602, 0x0600, 0x0501, 0x0402, 0x0200],
            GuestProfile::Uefi => &[0x0600],
        }
    }

    /// Size of every packet the guest sends.
    pub fn packet_size(self) -> usize {
        match self {
            GuestProfile::Linux => vstor::PACKET_SIZE_WIN8,
            GuestProfile::Uefi => vstor::PACKET_SIZE_PRE_WIN8,
        }
    }
}

/// An error in a completion the guest received.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorvscError {
    /// The completion is shorter than the field the guest must read.
    #[error("completion of {len} bytes is shorter than the {needed} bytes needed")]
    ShortCompletion {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The completion has an operation other than COMPLETE_IO.
    #[error("completion carries operation {0}, not COMPLETE_IO")]
    NotACompletion(u32),
    /// A failure status for an init step.
    #[error("init step {step:?} failed with status {status:#010x}")]
    Status {
        /// The step.
        step: InitStep,
        /// NTSTATUS received.
        status: u32,
    },
    /// Every version was refused.
    #[error("the host refused every protocol version")]
    NoVersionAccepted,
    /// The host reported a max_transfer_bytes the firmware refuses.
    #[error("max_transfer_bytes {0} is 0 or above 8 MiB")]
    BadMaxTransfer(u32),
    /// The driver is not waiting for a completion.
    #[error("no init request is outstanding")]
    NotWaiting,
    /// SCSI data shorter than its format needs.
    #[error("{what}: {len} bytes, need {needed}")]
    ShortData {
        /// What was parsed.
        what: &'static str,
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
}

/// One step of the init handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitStep {
    /// BEGIN_INITIALIZATION.
    Begin,
    /// QUERY_PROTOCOL_VERSION with the n-th version of the profile.
    Version(usize),
    /// QUERY_PROPERTIES.
    Properties,
    /// END_INITIALIZATION.
    End,
    /// Init finished.
    Done,
}

/// What the host reported in QUERY_PROPERTIES.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostProperties {
    /// Most sub-channels.
    pub max_sub_channels: u16,
    /// Multi-channel flag.
    pub multi_channel: bool,
    /// Largest transfer per SRB.
    pub max_transfer_bytes: u32,
}

/// The init handshake of one guest profile.
#[derive(Debug, Clone)]
pub struct InitDriver {
    profile: GuestProfile,
    step: InitStep,
    version: Option<u16>,
    properties: HostProperties,
}

fn header_packet(operation: Operation, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[..4].copy_from_slice(&operation.0.to_le_bytes());
    p[4..8].copy_from_slice(&vstor::FLAG_REQUEST_COMPLETION.to_le_bytes());
    p
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn need(bytes: &[u8], needed: usize) -> Result<(), StorvscError> {
    if bytes.len() < needed {
        return Err(StorvscError::ShortCompletion {
            len: bytes.len(),
            needed,
        });
    }
    Ok(())
}

/// The operation and status of a completion.
pub fn completion_status(bytes: &[u8]) -> Result<NtStatus, StorvscError> {
    let (Some(op), Some(status)) = (read_u32(bytes, 0), read_u32(bytes, 8)) else {
        return Err(StorvscError::ShortCompletion {
            len: bytes.len(),
            needed: vstor::HEADER_SIZE,
        });
    };
    if op != Operation::COMPLETE_IO.0 {
        return Err(StorvscError::NotACompletion(op));
    }
    Ok(NtStatus(status))
}

impl InitDriver {
    /// A driver about to send BEGIN_INITIALIZATION.
    pub fn new(profile: GuestProfile) -> Self {
        Self {
            profile,
            step: InitStep::Begin,
            version: None,
            properties: HostProperties::default(),
        }
    }

    /// The step whose request is outstanding (or `Done`).
    pub fn step(&self) -> InitStep {
        self.step
    }

    /// The accepted version.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// The host's properties.
    pub fn properties(&self) -> HostProperties {
        self.properties
    }

    /// The packet to send for the current step, `None` once done.
    pub fn request(&self) -> Option<Vec<u8>> {
        let size = self.profile.packet_size();
        Some(match self.step {
            InitStep::Begin => header_packet(Operation::BEGIN_INITIALIZATION, size),
            InitStep::Version(n) => {
                let mut p = header_packet(Operation::QUERY_PROTOCOL_VERSION, size);
                let version = *self.profile.versions().get(n)?;
                p[12..14].copy_from_slice(&version.to_le_bytes());
                p
            }
            InitStep::Properties => header_packet(Operation::QUERY_PROPERTIES, size),
            InitStep::End => header_packet(Operation::END_INITIALIZATION, size),
            InitStep::Done => return None,
        })
    }

    /// Feeds the completion of the current request; moves to the next step.
    pub fn on_completion(&mut self, bytes: &[u8]) -> Result<InitStep, StorvscError> {
        let status = completion_status(bytes)?;
        let step = self.step;
        if let InitStep::Version(n) = step {
            if status != NtStatus::SUCCESS {
                // Fall back to the next older version.
                if n + 1 >= self.profile.versions().len() {
                    return Err(StorvscError::NoVersionAccepted);
                }
                self.step = InitStep::Version(n + 1);
                return Ok(self.step);
            }
        } else if status != NtStatus::SUCCESS {
            return Err(StorvscError::Status {
                step,
                status: status.0,
            });
        }
        self.step = match step {
            InitStep::Begin => InitStep::Version(0),
            InitStep::Version(n) => {
                self.version = self.profile.versions().get(n).copied();
                InitStep::Properties
            }
            InitStep::Properties => {
                need(bytes, 28)?;
                let max_transfer = read_u32(bytes, 24).unwrap_or(0);
                self.properties = HostProperties {
                    max_sub_channels: read_u16(bytes, 16).unwrap_or(0),
                    multi_channel: read_u32(bytes, 20).unwrap_or(0)
                        & vstor::PROPERTIES_FLAG_MULTI_CHANNEL
                        != 0,
                    max_transfer_bytes: max_transfer,
                };
                if self.profile == GuestProfile::Uefi
                    && (max_transfer == 0 || max_transfer > 8 * 1024 * 1024)
                {
                    return Err(StorvscError::BadMaxTransfer(max_transfer));
                }
                InitStep::End
            }
            InitStep::End => InitStep::Done,
            InitStep::Done => return Err(StorvscError::NotWaiting),
        };
        Ok(self.step)
    }
}

/// Number of sub-channels Linux asks for: one per extra CPU, capped by the
/// host; none unless the host offers multi-channel at WIN8 or later.
pub fn linux_sub_channel_count(cpus: u16, version: u16, props: HostProperties) -> u16 {
    if !props.multi_channel || version < ProtocolVersion::WIN8.0 {
        return 0;
    }
    cpus.saturating_sub(1).min(props.max_sub_channels)
}

/// CREATE_SUB_CHANNELS packet.
pub fn create_sub_channels_packet(count: u16) -> Vec<u8> {
    let mut p = header_packet(Operation::CREATE_SUB_CHANNELS, vstor::PACKET_SIZE_WIN8);
    p[12..14].copy_from_slice(&count.to_le_bytes());
    p
}

/// What an SRB asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrbParams {
    /// Path id.
    pub path: u8,
    /// Target id.
    pub target: u8,
    /// LUN.
    pub lun: u8,
    /// CDB (at most 16 bytes; longer is cut).
    pub cdb: Vec<u8>,
    /// Data direction (`vstor::DataDirection` value).
    pub data_in: u8,
    /// Data buffer length.
    pub data_transfer_length: u32,
}

/// Builds an EXECUTE_SRB packet of `packet_size` bytes (0x30 or 0x40).
pub fn srb_packet(params: &SrbParams, packet_size: usize) -> Vec<u8> {
    let mut p = vec![0u8; packet_size];
    write_srb_packet(
        params.address(),
        &params.cdb,
        params.data_in,
        params.data_transfer_length,
        &mut p,
    );
    p
}

impl SrbParams {
    fn address(&self) -> LunAddress {
        LunAddress {
            path: self.path,
            target: self.target,
            lun: self.lun,
        }
    }
}

/// Writes an EXECUTE_SRB packet filling all of `out` (0x30 or 0x40 bytes,
/// zeroed by the caller), for a driver that keeps its packets off the heap.
pub(crate) fn write_srb_packet(
    address: LunAddress,
    cdb: &[u8],
    data_in: u8,
    data_transfer_length: u32,
    out: &mut [u8],
) {
    let packet_size = out.len();
    let p = out;
    p[..4].copy_from_slice(&Operation::EXECUTE_SRB.0.to_le_bytes());
    p[4..8].copy_from_slice(&vstor::FLAG_REQUEST_COMPLETION.to_le_bytes());
    let srb_len = packet_size.saturating_sub(vstor::HEADER_SIZE) as u16;
    let cdb_len = cdb.len().min(vstor::MAX_CDB_SIZE);
    let sense_len = if packet_size >= vstor::PACKET_SIZE_WIN8 {
        vstor::SENSE_SIZE_WIN8
    } else {
        vstor::SENSE_SIZE_PRE_WIN8
    };
    p[12..14].copy_from_slice(&srb_len.to_le_bytes());
    p[17] = address.path;
    p[18] = address.target;
    p[19] = address.lun;
    p[20] = cdb_len as u8;
    p[21] = sense_len as u8;
    p[22] = data_in;
    p[24..28].copy_from_slice(&data_transfer_length.to_le_bytes());
    p[28..28 + cdb_len].copy_from_slice(&cdb[..cdb_len]);
}

/// A parsed SRB completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrbCompletion {
    /// Packet NTSTATUS.
    pub status: u32,
    /// SRB status byte (with flags).
    pub srb_status: u8,
    /// SCSI status byte.
    pub scsi_status: u8,
    /// Bytes moved.
    pub transferred: u32,
    /// Sense bytes returned.
    pub sense: Vec<u8>,
}

impl SrbCompletion {
    /// Parses an SRB completion.
    pub fn parse(bytes: &[u8]) -> Result<Self, StorvscError> {
        let status = completion_status(bytes)?;
        need(bytes, vstor::PACKET_SIZE_PRE_WIN8)?;
        let sense_len = usize::from(bytes[21]).min(vstor::CDB_SENSE_UNION_SIZE);
        Ok(Self {
            status: status.0,
            srb_status: bytes[14],
            scsi_status: bytes[15],
            transferred: read_u32(bytes, 24).unwrap_or(0),
            sense: bytes[28..28 + sense_len].to_vec(),
        })
    }

    /// Linux treats INQUIRY and MODE SENSE(6) as GOOD whatever the host says.
    pub fn linux_fixup(&mut self, opcode: u8) {
        if opcode == Opcode::INQUIRY.0 || opcode == Opcode::MODE_SENSE6.0 {
            self.srb_status = vstor::SrbStatus::SUCCESS.0;
            self.scsi_status = scsi::ScsiStatus::GOOD.0;
        }
    }

    /// Sense key and ASC, if autosense is valid.
    pub fn sense_key_asc(&self) -> Option<(u8, u8)> {
        if self.srb_status & vstor::SRB_STATUS_AUTOSENSE_VALID == 0 || self.sense.len() < 14 {
            return None;
        }
        Some((self.sense[2] & 0x0F, self.sense[12]))
    }
}

/// CDB builders for the probe commands.
pub mod cdb {
    /// TEST UNIT READY.
    pub fn test_unit_ready() -> Vec<u8> {
        vec![0; 6]
    }

    /// INQUIRY, standard or a VPD page.
    pub fn inquiry(vpd: Option<u8>, allocation: u16) -> Vec<u8> {
        let [hi, lo] = allocation.to_be_bytes();
        match vpd {
            Some(page) => vec![0x12, 1, page, hi, lo, 0],
            None => vec![0x12, 0, 0, hi, lo, 0],
        }
    }

    /// MODE SENSE(6) of `page` (current values).
    pub fn mode_sense6(page: u8, allocation: u8) -> Vec<u8> {
        vec![0x1A, 0, page & 0x3F, 0, allocation, 0]
    }

    /// READ CAPACITY(10).
    pub fn read_capacity10() -> Vec<u8> {
        vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    /// READ CAPACITY(16).
    pub fn read_capacity16(allocation: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x10;
        c[10..14].copy_from_slice(&allocation.to_be_bytes());
        c
    }

    /// READ(10).
    pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
        read10_array(lba, blocks).to_vec()
    }

    /// READ(10), on the stack.
    pub fn read10_array(lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x28;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// READ(16).
    pub fn read16(lba: u64, blocks: u32) -> Vec<u8> {
        read16_array(lba, blocks).to_vec()
    }

    /// READ(16), on the stack.
    pub fn read16_array(lba: u64, blocks: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x88;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// REPORT LUNS (UEFI passes allocation 0).
    pub fn report_luns(allocation: u32) -> Vec<u8> {
        let mut c = vec![0u8; 12];
        c[0] = 0xA0;
        c[6..10].copy_from_slice(&allocation.to_be_bytes());
        c
    }
}

fn short(what: &'static str, data: &[u8], needed: usize) -> Result<(), StorvscError> {
    if data.len() < needed {
        return Err(StorvscError::ShortData {
            what,
            len: data.len(),
            needed,
        });
    }
    Ok(())
}

/// What a standard INQUIRY says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InquiryInfo {
    /// Peripheral qualifier (bits 5–7 of byte 0).
    pub qualifier: u8,
    /// Device type (bits 0–4 of byte 0).
    pub device_type: u8,
    /// Full length of the data (additional length + 5).
    pub full_length: usize,
    /// Vendor, trimmed.
    pub vendor: String,
    /// Product, trimmed.
    pub product: String,
}

impl InquiryInfo {
    /// Whether a LUN is present (Linux: qualifier 0).
    pub fn present(&self) -> bool {
        self.qualifier == 0 && self.device_type != 0x1F
    }
}

/// Parses standard INQUIRY data (at least 5 bytes; ids if 36 present).
pub fn parse_inquiry(data: &[u8]) -> Result<InquiryInfo, StorvscError> {
    short("INQUIRY", data, 5)?;
    let text = |range: std::ops::Range<usize>| {
        data.get(range)
            .map(|b| String::from_utf8_lossy(b).trim_end().to_string())
            .unwrap_or_default()
    };
    Ok(InquiryInfo {
        qualifier: data[0] >> 5,
        device_type: data[0] & 0x1F,
        full_length: usize::from(data[4]) + 5,
        vendor: text(8..16),
        product: text(16..32),
    })
}

/// Parses VPD page 0x00: the supported page list.
pub fn parse_vpd_supported(data: &[u8]) -> Result<Vec<u8>, StorvscError> {
    short("VPD 0x00", data, 4)?;
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    short("VPD 0x00", data, 4 + len)?;
    Ok(data[4..4 + len].to_vec())
}

/// The write-protect bit of MODE SENSE(6) data.
pub fn parse_mode_sense6_write_protect(data: &[u8]) -> Result<bool, StorvscError> {
    short("MODE SENSE(6)", data, 4)?;
    Ok(data[2] & scsi::MODE_DEVICE_SPECIFIC_WRITE_PROTECT != 0)
}

/// READ CAPACITY(10): (last LBA, block length).
pub fn parse_read_capacity10(data: &[u8]) -> Result<(u32, u32), StorvscError> {
    short("READ CAPACITY(10)", data, 8)?;
    let be = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    Ok((be(0), be(4)))
}

/// READ CAPACITY(16): (last LBA, block length, physical exponent).
pub fn parse_read_capacity16(data: &[u8]) -> Result<(u64, u32, u8), StorvscError> {
    short("READ CAPACITY(16)", data, 14)?;
    let mut lba = [0u8; 8];
    lba.copy_from_slice(&data[..8]);
    let block = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    Ok((u64::from_be_bytes(lba), block, data[13] & 0x0F))
}

/// REPORT LUNS: LUNs in peripheral format (byte 1 of each entry).
pub fn parse_report_luns(data: &[u8]) -> Result<Vec<u8>, StorvscError> {
    short("REPORT LUNS", data, 8)?;
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let entries = data[8..].len().min(len) / 8;
    Ok(data[8..8 + entries * 8]
        .chunks_exact(8)
        .map(|entry| entry[1])
        .collect())
}

pub mod driver;

pub use driver::{
    ChannelOpener, Completions, Disk, DiskInfo, DriverConfig, DriverError, HostEvents, ProbeRecord,
    Storvsc,
};

#[cfg(test)]
mod tests;
