//! The storvsp host: the vstor protocol state machine of one channel, the
//! LUN map shared by a controller's channels, and the SRB jobs that move
//! data between the disks and guest pages.
//!
//! Nothing here touches a ring. The glue feeds one received packet to
//! [`StorvspChannel::handle`] (payload bytes, the GPA ranges of a GPA-direct
//! packet, the transaction id) and gets an [`Outcome`]: a completion to
//! send, a request to offer sub-channels, an [`SrbJob`] to run, or a
//! protocol violation. [`SrbJob::run`] is the only function that does
//! blocking I/O, so an async layer can run jobs on a blocking pool and
//! complete them out of order on the channel they came from.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use vmbdev_protocol::scsi::{self, Opcode, VpdHeader};
use vmbdev_protocol::vstor::{
    self, CreateSubChannelsBody, DataDirection, NtStatus, Operation, PacketHeader, PropertiesBody,
    ProtocolVersion, ScsiRequest, SrbStatus, VersionBody,
};
use vmbdev_ring::{GpaRange, GuestMemory};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, IntoBytes};

use crate::scsi_disk::{self, CommandResult, CommandStatus, DataSink, ScsiDisk, SinkError};

/// Default largest transfer of one SRB.
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 2 * 1024 * 1024;
/// Largest `max_transfer_bytes` a guest accepts (UEFI refuses larger).
pub const MAX_MAX_TRANSFER_BYTES: u32 = 8 * 1024 * 1024;

/// An invalid controller configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_transfer_bytes` is 0 or above 8 MiB.
    #[error("max_transfer_bytes {0} is not in 1..=8 MiB")]
    MaxTransferBytes(u32),
}

/// Controller settings reported in QUERY_PROPERTIES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorvspConfig {
    /// Largest data buffer of one SRB, in bytes (1..=8 MiB).
    pub max_transfer_bytes: u32,
    /// Most sub-channels a guest may create.
    pub max_sub_channels: u16,
    /// Whether sub-channels are offered at all.
    pub multi_channel: bool,
}

impl Default for StorvspConfig {
    fn default() -> Self {
        Self {
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            max_sub_channels: 0,
            multi_channel: false,
        }
    }
}

impl StorvspConfig {
    /// Checks the limits guests rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_transfer_bytes == 0 || self.max_transfer_bytes > MAX_MAX_TRANSFER_BYTES {
            return Err(ConfigError::MaxTransferBytes(self.max_transfer_bytes));
        }
        Ok(())
    }
}

/// Where a logical unit sits: path (bus), target and LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LunAddress {
    /// SRB `path_id`.
    pub path: u8,
    /// SRB `target_id`.
    pub target: u8,
    /// SRB `lun`.
    pub lun: u8,
}

/// The LUN map of one controller, shared by all its channels.
#[derive(Debug, Default)]
pub struct Controller {
    luns: RwLock<BTreeMap<LunAddress, Arc<ScsiDisk>>>,
}

impl Controller {
    /// A controller with no LUNs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `disk` at `address`, returning the disk it replaced.
    pub fn insert(&self, address: LunAddress, disk: Arc<ScsiDisk>) -> Option<Arc<ScsiDisk>> {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        map.insert(address, disk)
    }

    /// Detaches the disk at `address`.
    pub fn remove(&self, address: LunAddress) -> Option<Arc<ScsiDisk>> {
        let mut map = self.luns.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&address)
    }

    /// The disk at `address`.
    pub fn get(&self, address: LunAddress) -> Option<Arc<ScsiDisk>> {
        let map = self.luns.read().unwrap_or_else(|e| e.into_inner());
        map.get(&address).cloned()
    }

    /// The LUNs present at `path`/`target`, ascending.
    pub fn luns_of(&self, path: u8, target: u8) -> Vec<u8> {
        let map = self.luns.read().unwrap_or_else(|e| e.into_inner());
        map.keys()
            .filter(|a| a.path == path && a.target == target)
            .map(|a| a.lun)
            .collect()
    }
}

/// Where a channel is in the init sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    /// Waiting for BEGIN_INITIALIZATION.
    AwaitBegin,
    /// Waiting for an acceptable QUERY_PROTOCOL_VERSION.
    AwaitVersion,
    /// Version agreed; waiting for QUERY_PROPERTIES.
    AwaitProperties,
    /// Waiting for END_INITIALIZATION.
    AwaitEnd,
    /// Initialized: SRBs are accepted.
    Ready,
}

/// What a channel must remember across save/restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedState {
    /// Init progress.
    pub state: InitState,
    /// Negotiated protocol version (`(major << 8) | minor`).
    pub version: Option<u16>,
    /// Sub-channels the guest created.
    pub sub_channels: u16,
    /// Whether this is the primary channel.
    pub primary: bool,
}

impl SavedState {
    /// Checks that a channel with `config` can resume from this state.
    pub fn validate(&self, config: &StorvspConfig) -> Result<(), RestoreError> {
        if let Some(v) = self.version {
            if !ProtocolVersion(v).is_known() {
                return Err(RestoreError::Version(v));
            }
        }
        let needs_version = !matches!(self.state, InitState::AwaitBegin | InitState::AwaitVersion);
        if needs_version && self.version.is_none() {
            return Err(RestoreError::MissingVersion(self.state));
        }
        if self.sub_channels > config.max_sub_channels {
            return Err(RestoreError::SubChannels {
                count: self.sub_channels,
                max: config.max_sub_channels,
            });
        }
        Ok(())
    }
}

/// A saved state that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The version is not one the host speaks.
    #[error("saved protocol version {0:#06x} is not supported")]
    Version(u16),
    /// The state needs a version but none is saved.
    #[error("saved state {0:?} has no protocol version")]
    MissingVersion(InitState),
    /// More sub-channels than the configuration allows.
    #[error("saved sub-channel count {count} exceeds the maximum {max}")]
    SubChannels {
        /// Saved count.
        count: u16,
        /// Configured maximum.
        max: u16,
    },
}

/// A packet from the guest the host cannot treat as a vstor request at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// Shorter than the 12-byte vstor header.
    #[error("vstor packet of {len} bytes is shorter than the 12-byte header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
}

/// One packet received on a channel.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The packet payload (vstor header and body).
    pub payload: &'a [u8],
    /// GPA ranges of a GPA-direct packet (empty for in-band).
    pub ranges: Vec<GpaRange>,
    /// Transaction id to echo in the completion.
    pub transaction_id: u64,
}

/// A completion packet to send on the request's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Transaction id of the request.
    pub transaction_id: u64,
    /// Payload bytes (never more than 80).
    pub bytes: Vec<u8>,
}

impl Completion {
    /// The vstor header of the payload.
    pub fn header(&self) -> Option<PacketHeader> {
        PacketHeader::read_from_prefix(&self.bytes)
            .ok()
            .map(|(h, _)| h)
    }
}

/// What to do with one received packet.
#[derive(Debug)]
pub enum Outcome {
    /// Send this completion.
    Complete(Completion),
    /// Offer `count` sub-channels, then send the completion.
    CreateSubChannels {
        /// Completion of CREATE_SUB_CHANNELS.
        completion: Completion,
        /// Sub-channels to offer.
        count: u16,
    },
    /// Run this job (blocking) and send the completion it returns.
    Execute(SrbJob),
    /// The packet is not a vstor request; nothing to answer.
    Violation(ProtocolViolation),
}

/// An unsolicited packet to send to the guest (transaction id 0, no
/// completion requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Payload bytes.
    pub bytes: Vec<u8>,
}

/// The vstor state machine of one channel.
#[derive(Debug)]
pub struct StorvspChannel {
    config: StorvspConfig,
    controller: Arc<Controller>,
    memory: GuestMemory,
    state: InitState,
    version: Option<ProtocolVersion>,
    sub_channels: u16,
    primary: bool,
}

/// Builds a completion: header + body, cut (or zero-padded) to `len`.
fn completion_bytes(len: usize, status: NtStatus, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; vstor::PACKET_SIZE_WIN8];
    let header = PacketHeader {
        operation: Operation::COMPLETE_IO,
        flags: U32::new(0),
        status,
    };
    bytes[..vstor::HEADER_SIZE].copy_from_slice(header.as_bytes());
    let body_len = body.len().min(vstor::MAX_BODY_SIZE);
    bytes[vstor::HEADER_SIZE..vstor::HEADER_SIZE + body_len].copy_from_slice(&body[..body_len]);
    bytes.truncate(len);
    bytes
}

impl StorvspChannel {
    /// The primary channel of a controller, before init.
    pub fn new(
        config: StorvspConfig,
        controller: Arc<Controller>,
        memory: GuestMemory,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            controller,
            memory,
            state: InitState::AwaitBegin,
            version: None,
            sub_channels: 0,
            primary: true,
        })
    }

    /// A sub-channel of this (initialized) channel: it takes SRBs at once,
    /// with no handshake. `None` before init completes.
    pub fn sub_channel(&self) -> Option<Self> {
        (self.state == InitState::Ready).then(|| Self {
            config: self.config,
            controller: self.controller.clone(),
            memory: self.memory.clone(),
            state: InitState::Ready,
            version: self.version,
            sub_channels: 0,
            primary: false,
        })
    }

    /// Init progress.
    pub fn state(&self) -> InitState {
        self.state
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The shared LUN map.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// What to save.
    pub fn save(&self) -> SavedState {
        SavedState {
            state: self.state,
            version: self.version.map(|v| v.0),
            sub_channels: self.sub_channels,
            primary: self.primary,
        }
    }

    /// Restores a saved state.
    pub fn restore(&mut self, saved: SavedState) -> Result<(), RestoreError> {
        saved.validate(&self.config)?;
        self.state = saved.state;
        self.version = saved.version.map(ProtocolVersion);
        self.sub_channels = saved.sub_channels;
        self.primary = saved.primary;
        Ok(())
    }

    /// Attaches a disk and returns the ENUMERATE_BUS notification to send on
    /// the primary channel, if the guest has finished init.
    pub fn hot_add(&self, address: LunAddress, disk: Arc<ScsiDisk>) -> Option<Notification> {
        self.controller.insert(address, disk);
        self.enumerate_bus()
    }

    /// Detaches a disk and returns the ENUMERATE_BUS notification to send.
    pub fn hot_remove(&self, address: LunAddress) -> Option<Notification> {
        self.controller.remove(address);
        self.enumerate_bus()
    }

    /// The ENUMERATE_BUS notification telling the guest to rescan after
    /// the LUN map changed, if this primary channel finished init.
    pub fn bus_changed(&self) -> Option<Notification> {
        self.enumerate_bus()
    }

    fn enumerate_bus(&self) -> Option<Notification> {
        let version = self.version?;
        if self.state != InitState::Ready || !self.primary {
            return None;
        }
        let mut bytes = vec![0u8; version.packet_size()];
        let header = PacketHeader {
            operation: Operation::ENUMERATE_BUS,
            flags: U32::new(0),
            status: NtStatus::SUCCESS,
        };
        bytes[..vstor::HEADER_SIZE].copy_from_slice(header.as_bytes());
        Some(Notification { bytes })
    }

    /// Handles one received packet.
    pub fn handle(&mut self, request: Request<'_>) -> Outcome {
        let payload = request.payload;
        let Ok((header, rest)) = PacketHeader::read_from_prefix(payload) else {
            tracing::debug!(len = payload.len(), "vstor packet shorter than its header");
            return Outcome::Violation(ProtocolViolation::TooShort { len: payload.len() });
        };
        // Read the body as min(present, 0x34) whatever the version says, and
        // answer with the size the request came with.
        let mut body = [0u8; vstor::MAX_BODY_SIZE];
        let body_len = rest.len().min(vstor::MAX_BODY_SIZE);
        body[..body_len].copy_from_slice(&rest[..body_len]);
        let reply_len = payload.len().min(vstor::PACKET_SIZE_WIN8);
        let tid = request.transaction_id;
        let reply = |status: NtStatus, body: &[u8]| {
            Outcome::Complete(Completion {
                transaction_id: tid,
                bytes: completion_bytes(reply_len, status, body),
            })
        };
        let operation = header.operation;
        match (operation, self.state) {
            (Operation::BEGIN_INITIALIZATION, InitState::AwaitBegin) if self.primary => {
                self.state = InitState::AwaitVersion;
                reply(NtStatus::SUCCESS, &[])
            }
            (
                Operation::QUERY_PROTOCOL_VERSION,
                InitState::AwaitVersion | InitState::AwaitProperties,
            ) if self.primary => {
                let echoed = &body[..size_of::<VersionBody>()];
                let asked = VersionBody::read_from_bytes(echoed)
                    .map(|v| ProtocolVersion(v.major_minor.get()))
                    .unwrap_or(ProtocolVersion(0));
                if asked.is_known() {
                    self.version = Some(asked);
                    self.state = InitState::AwaitProperties;
                    reply(NtStatus::SUCCESS, echoed)
                } else {
                    tracing::debug!(version = asked.0, "unsupported vstor version");
                    reply(NtStatus::REVISION_MISMATCH, echoed)
                }
            }
            (Operation::QUERY_PROPERTIES, InitState::AwaitProperties) if self.primary => {
                self.state = InitState::AwaitEnd;
                let props = PropertiesBody {
                    reserved1: U32::new(0),
                    max_sub_channels: U16::new(self.max_sub_channels()),
                    reserved2: U16::new(0),
                    flags: U32::new(if self.multi_channel_allowed() {
                        vstor::PROPERTIES_FLAG_MULTI_CHANNEL
                    } else {
                        0
                    }),
                    max_transfer_bytes: U32::new(self.config.max_transfer_bytes),
                    reserved3: [U32::new(0); 2],
                };
                reply(NtStatus::SUCCESS, props.as_bytes())
            }
            (Operation::END_INITIALIZATION, InitState::AwaitEnd) if self.primary => {
                self.state = InitState::Ready;
                reply(NtStatus::SUCCESS, &[])
            }
            (Operation::CREATE_SUB_CHANNELS, InitState::Ready) if self.primary => {
                self.create_sub_channels(&body, rest.len(), tid, reply_len)
            }
            (Operation::EXECUTE_SRB, InitState::Ready) => {
                self.execute_srb(&body, body_len, request.ranges, tid, reply_len)
            }
            (
                Operation::RESET_LUN | Operation::RESET_ADAPTER | Operation::RESET_BUS,
                InitState::Ready,
            ) => reply(NtStatus::SUCCESS, &body),
            (
                Operation::BEGIN_INITIALIZATION
                | Operation::QUERY_PROTOCOL_VERSION
                | Operation::QUERY_PROPERTIES
                | Operation::END_INITIALIZATION
                | Operation::CREATE_SUB_CHANNELS
                | Operation::EXECUTE_SRB
                | Operation::RESET_LUN
                | Operation::RESET_ADAPTER
                | Operation::RESET_BUS,
                state,
            ) => {
                tracing::debug!(
                    ?operation,
                    ?state,
                    primary = self.primary,
                    "vstor operation out of order"
                );
                reply(NtStatus::INVALID_DEVICE_STATE, &body)
            }
            _ => {
                tracing::debug!(?operation, "unsupported vstor operation");
                reply(NtStatus::INVALID_DEVICE_REQUEST, &body)
            }
        }
    }

    fn multi_channel_allowed(&self) -> bool {
        self.config.multi_channel
            && self.config.max_sub_channels > 0
            && self.version.is_some_and(|v| v.has_win8_srb())
    }

    fn max_sub_channels(&self) -> u16 {
        if self.multi_channel_allowed() {
            self.config.max_sub_channels
        } else {
            0
        }
    }

    fn create_sub_channels(
        &mut self,
        body: &[u8; vstor::MAX_BODY_SIZE],
        present: usize,
        tid: u64,
        reply_len: usize,
    ) -> Outcome {
        let count = CreateSubChannelsBody::read_from_prefix(body)
            .map(|(b, _)| b.count.get())
            .unwrap_or(0);
        let ok = present >= size_of::<CreateSubChannelsBody>()
            && self.multi_channel_allowed()
            && self.sub_channels == 0
            && count > 0
            && count <= self.config.max_sub_channels;
        let status = if ok {
            NtStatus::SUCCESS
        } else {
            tracing::debug!(count, present, "refused CREATE_SUB_CHANNELS");
            NtStatus::INVALID_PARAMETER
        };
        let completion = Completion {
            transaction_id: tid,
            bytes: completion_bytes(reply_len, status, body),
        };
        if ok {
            self.sub_channels = count;
            Outcome::CreateSubChannels { completion, count }
        } else {
            Outcome::Complete(completion)
        }
    }

    fn execute_srb(
        &self,
        body: &[u8; vstor::MAX_BODY_SIZE],
        body_len: usize,
        ranges: Vec<GpaRange>,
        tid: u64,
        reply_len: usize,
    ) -> Outcome {
        // The body array is exactly the size of the WIN8 SRB.
        let srb: ScsiRequest = zerocopy::transmute!(*body);
        let version = self.version.unwrap_or(ProtocolVersion::WIN8);
        let plan = self
            .plan(&srb, body_len, ranges)
            .unwrap_or_else(Plan::Reject);
        Outcome::Execute(SrbJob {
            transaction_id: tid,
            reply_len,
            srb,
            sense_capacity: usize::from(srb.sense_info_length).min(version.sense_size()),
            plan,
            memory: self.memory.clone(),
        })
    }

    /// Validates an SRB and decides what running it means.
    fn plan(
        &self,
        srb: &ScsiRequest,
        body_len: usize,
        mut ranges: Vec<GpaRange>,
    ) -> Result<Plan, RejectReason> {
        if body_len < vstor::SRB_SIZE_PRE_WIN8 {
            return Err(RejectReason::Malformed);
        }
        let cdb_len = usize::from(srb.cdb_length);
        if cdb_len == 0 || cdb_len > vstor::MAX_CDB_SIZE {
            return Err(RejectReason::Malformed);
        }
        let direction = srb.data_in;
        if !matches!(
            direction,
            DataDirection::READ | DataDirection::WRITE | DataDirection::NONE
        ) {
            return Err(RejectReason::Malformed);
        }
        let length = srb.data_transfer_length.get();
        if length > self.config.max_transfer_bytes {
            return Err(RejectReason::Malformed);
        }
        if ranges.len() > 1 {
            return Err(RejectReason::Buffer);
        }
        let buffer = if length == 0 {
            None
        } else {
            let range = ranges.pop().ok_or(RejectReason::Buffer)?;
            if range.byte_count() < length {
                return Err(RejectReason::Buffer);
            }
            let range = range.truncated(length).map_err(|_| RejectReason::Buffer)?;
            // Every page must be inside guest memory before any I/O starts.
            range
                .segments(&self.memory, 0, u64::from(length))
                .map_err(|_| RejectReason::Buffer)?;
            Some(range)
        };
        let cdb = srb.cdb_or_sense[..cdb_len].to_vec();
        let address = LunAddress {
            path: srb.path_id,
            target: srb.target_id,
            lun: srb.lun,
        };
        let target = if cdb.first() == Some(&Opcode::REPORT_LUNS.0) {
            Target::ReportLuns(self.controller.luns_of(address.path, address.target))
        } else {
            match self.controller.get(address) {
                Some(disk) => Target::Disk(disk),
                None => Target::Absent,
            }
        };
        Ok(Plan::Run {
            cdb,
            target,
            buffer,
            readable: direction == DataDirection::READ,
        })
    }
}

/// Why an SRB was refused before running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RejectReason {
    /// Bad SRB fields (length, CDB length, direction, transfer size).
    Malformed,
    /// Bad data buffer (missing, several ranges, too short, outside memory).
    Buffer,
}

#[derive(Debug)]
enum Target {
    Disk(Arc<ScsiDisk>),
    Absent,
    ReportLuns(Vec<u8>),
}

#[derive(Debug)]
enum Plan {
    Reject(RejectReason),
    Run {
        cdb: Vec<u8>,
        target: Target,
        buffer: Option<GpaRange>,
        readable: bool,
    },
}

/// An SRB ready to run. [`SrbJob::run`] does the (blocking) disk I/O and
/// guest-memory copies and returns the completion to send.
#[derive(Debug)]
pub struct SrbJob {
    transaction_id: u64,
    reply_len: usize,
    srb: ScsiRequest,
    sense_capacity: usize,
    plan: Plan,
    memory: GuestMemory,
}

/// Writes data-in bytes into a guest range.
struct GuestSink<'a> {
    memory: &'a GuestMemory,
    range: &'a GpaRange,
}

impl DataSink for GuestSink<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.range
            .write_at(self.memory, offset, data)
            .map_err(|e| SinkError {
                offset,
                len: data.len(),
                reason: e.to_string(),
            })
    }
}

/// A sink for requests with no buffer; never written (the buffer length
/// passed with it is 0).
struct NoSink;

impl DataSink for NoSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        Err(SinkError {
            offset,
            len: data.len(),
            reason: "request has no data-in buffer".into(),
        })
    }
}

impl SrbJob {
    /// Transaction id of the request.
    pub fn transaction_id(&self) -> u64 {
        self.transaction_id
    }

    /// The data buffer length the guest asked for (0 for none).
    pub fn data_length(&self) -> u32 {
        self.srb.data_transfer_length.get()
    }

    /// Runs the SRB (blocking) and builds its completion.
    pub fn run(self) -> Completion {
        let mut srb = self.srb;
        let status = match &self.plan {
            Plan::Reject(reason) => {
                tracing::debug!(?reason, "SRB refused");
                srb.srb_status = SrbStatus::INVALID_REQUEST.0;
                srb.scsi_status = scsi::ScsiStatus::GOOD.0;
                srb.data_transfer_length = U32::new(0);
                srb.sense_info_length = 0;
                NtStatus::INVALID_PARAMETER
            }
            Plan::Run {
                cdb,
                target,
                buffer,
                readable,
            } => {
                let limit = match (buffer, readable) {
                    (Some(range), true) => range.byte_count() as usize,
                    _ => 0,
                };
                let mut guest;
                let mut none = NoSink;
                let sink: &mut dyn DataSink = match buffer {
                    Some(range) if *readable => {
                        guest = GuestSink {
                            memory: &self.memory,
                            range,
                        };
                        &mut guest
                    }
                    _ => &mut none,
                };
                let result = run_target(target, cdb, limit, sink);
                self.fill(&mut srb, result);
                NtStatus::SUCCESS
            }
        };
        Completion {
            transaction_id: self.transaction_id,
            bytes: completion_bytes(self.reply_len, status, srb.as_bytes()),
        }
    }

    fn fill(&self, srb: &mut ScsiRequest, result: Result<TargetResult, SinkError>) {
        srb.cdb_or_sense = [0; vstor::CDB_SENSE_UNION_SIZE];
        srb.sense_info_length = 0;
        srb.scsi_status = scsi::ScsiStatus::GOOD.0;
        let (srb_status, transferred) = match result {
            Err(error) => {
                tracing::debug!(%error, "SRB data buffer failed");
                (SrbStatus::ERROR.0, 0)
            }
            Ok(TargetResult::InvalidLun) => (SrbStatus::INVALID_LUN.0, 0),
            Ok(TargetResult::Command(result)) => match result.status {
                CommandStatus::Good => (SrbStatus::SUCCESS.0, result.transferred),
                CommandStatus::BufferTooSmall { .. } => (SrbStatus::DATA_OVERRUN.0, 0),
                CommandStatus::CheckCondition(sense) => {
                    srb.scsi_status = scsi::ScsiStatus::CHECK_CONDITION.0;
                    let sense = sense.as_bytes();
                    let len = self.sense_capacity.min(sense.len());
                    srb.cdb_or_sense[..len].copy_from_slice(&sense[..len]);
                    srb.sense_info_length = len as u8;
                    let autosense = if len > 0 {
                        vstor::SRB_STATUS_AUTOSENSE_VALID
                    } else {
                        0
                    };
                    (SrbStatus::ERROR.0 | autosense, result.transferred)
                }
            },
        };
        srb.srb_status = srb_status;
        srb.data_transfer_length = U32::new(transferred as u32);
    }
}

enum TargetResult {
    Command(CommandResult),
    InvalidLun,
}

/// Runs a CDB against a LUN, an absent LUN or the controller's LUN list.
fn run_target(
    target: &Target,
    cdb: &[u8],
    limit: usize,
    sink: &mut dyn DataSink,
) -> Result<TargetResult, SinkError> {
    match target {
        Target::Disk(disk) => disk.execute(cdb, limit, sink).map(TargetResult::Command),
        Target::ReportLuns(luns) => {
            let data = scsi_disk::report_luns_data(luns);
            // UEFI sends allocation length 0 and means the whole buffer.
            let alloc = match scsi_disk::report_luns_allocation(cdb) {
                Some(0) | None => limit,
                Some(n) => n as usize,
            };
            deliver(&data, alloc.min(limit), sink)
        }
        Target::Absent => {
            if cdb.first() != Some(&Opcode::INQUIRY.0) || cdb.len() < 6 {
                return Ok(TargetResult::InvalidLun);
            }
            let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
            let data = if cdb[1] & scsi::INQUIRY_EVPD != 0 {
                VpdHeader {
                    peripheral: scsi::PERIPHERAL_NO_LUN,
                    page_code: cdb[2],
                    page_length: zerocopy::big_endian::U16::new(0),
                }
                .as_bytes()
                .to_vec()
            } else {
                scsi_disk::absent_lun_inquiry().as_bytes().to_vec()
            };
            deliver(&data, alloc.min(limit), sink)
        }
    }
}

fn deliver(data: &[u8], limit: usize, sink: &mut dyn DataSink) -> Result<TargetResult, SinkError> {
    let len = data.len().min(limit);
    if len > 0 {
        sink.write_at(0, &data[..len])?;
    }
    Ok(TargetResult::Command(CommandResult {
        status: CommandStatus::Good,
        transferred: len,
    }))
}

pub mod device;
pub mod runner;
pub mod saved;
pub mod vmbus;

pub use device::{DeviceError, NoSubChannelOffer, SavedDevice, StorvspDevice, SubChannelOffer};
pub use runner::{
    DEFAULT_QUEUE_DEPTH, PendingRequest, RunError, StopSignal, StorvspStats,
    WORST_COMPLETION_RING_LEN,
};

#[cfg(test)]
mod tests;
