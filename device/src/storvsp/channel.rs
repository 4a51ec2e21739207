//! The vstor init/version state machine of one channel: the handshake
//! (BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION, QUERY_PROPERTIES,
//! END_INITIALIZATION), sub-channel creation, hot-plug notifications and
//! save/restore of the channel's progress. It does no I/O: an SRB leaves
//! [`StorvspChannel::handle`] as an [`SrbJob`] for the caller to run.

use std::sync::Arc;

use vmbdev_protocol::vstor::{
    self, CreateSubChannelsBody, NtStatus, Operation, PacketHeader, PropertiesBody,
    ProtocolVersion, VersionBody,
};
use vmbdev_ring::{GpaRange, GuestMemory};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, IntoBytes};

use super::config::LunCache;
use super::packet::completion_bytes;
use super::srb::{ReplyTo, SrbContext};
use super::{
    Completion, ConfigError, Controller, LunAddress, Notification, ProtocolViolation, Request,
    RestoreError, SavedState, SrbJob, StorvspConfig,
};
use crate::scsi_disk::ScsiDisk;

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

/// What to do with one received packet.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Send this completion.
    Complete(Completion),
    /// Offer `count` sub-channels, then send the completion.
    CreateSubChannels {
        /// Completion of CREATE_SUB_CHANNELS.
        completion: Completion,
        /// Sub-channels to offer.
        count: u16,
    },
    /// Run this job (blocking) and send the completion it returns. It
    /// borrows the request's ranges.
    Execute(SrbJob<'a>),
    /// The packet is not a vstor request; nothing to answer.
    Violation(ProtocolViolation),
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
    luns: LunCache,
}

/// A received packet whose header was read, with its body copied into
/// a full-size buffer.
struct Received {
    operation: Operation,
    /// The body, zero-padded past what the guest sent.
    body: [u8; vstor::MAX_BODY_SIZE],
    /// Body bytes present, capped at the buffer size.
    body_len: usize,
    /// Body bytes present, uncapped.
    present: usize,
    reply_to: ReplyTo,
}

impl Received {
    fn parse(request: &Request<'_>) -> Result<Self, ProtocolViolation> {
        let payload = request.payload;
        let Ok((header, rest)) = PacketHeader::read_from_prefix(payload) else {
            tracing::debug!(len = payload.len(), "vstor packet shorter than its header");
            return Err(ProtocolViolation::TooShort { len: payload.len() });
        };
        // Read the body as min(present, 0x34) whatever the version says, and
        // answer with the size the request came with.
        let mut body = [0u8; vstor::MAX_BODY_SIZE];
        let body_len = rest.len().min(vstor::MAX_BODY_SIZE);
        body[..body_len].copy_from_slice(&rest[..body_len]);
        Ok(Self {
            operation: header.operation,
            body,
            body_len,
            present: rest.len(),
            reply_to: ReplyTo {
                transaction_id: request.transaction_id,
                reply_len: payload.len().min(vstor::PACKET_SIZE_WIN8),
            },
        })
    }

    fn completion(&self, status: NtStatus, body: &[u8]) -> Completion {
        Completion {
            transaction_id: self.reply_to.transaction_id,
            bytes: completion_bytes(self.reply_to.reply_len, status, body),
        }
    }

    fn reply(&self, status: NtStatus, body: &[u8]) -> Outcome<'static> {
        Outcome::Complete(self.completion(status, body))
    }

    /// Answers with the request body echoed back.
    fn echo(&self, status: NtStatus) -> Outcome<'static> {
        self.reply(status, &self.body)
    }
}

impl StorvspChannel {
    /// The primary channel of a controller, before init.
    pub fn new(
        config: StorvspConfig,
        controller: Arc<Controller>,
        memory: GuestMemory,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::new_validated(config, controller, memory))
    }

    /// [`new`](Self::new) for a configuration already validated (the
    /// device checks its configuration once, when it is built).
    pub(super) fn new_validated(
        config: StorvspConfig,
        controller: Arc<Controller>,
        memory: GuestMemory,
    ) -> Self {
        Self {
            config,
            controller,
            memory,
            state: InitState::AwaitBegin,
            version: None,
            sub_channels: 0,
            primary: true,
            luns: LunCache::default(),
        }
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
            luns: LunCache::default(),
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
    pub fn handle<'a>(&mut self, request: Request<'a>) -> Outcome<'a> {
        let packet = match Received::parse(&request) {
            Ok(packet) => packet,
            Err(violation) => return Outcome::Violation(violation),
        };
        match (packet.operation, self.state) {
            (Operation::BEGIN_INITIALIZATION, InitState::AwaitBegin) if self.primary => {
                self.state = InitState::AwaitVersion;
                packet.reply(NtStatus::SUCCESS, &[])
            }
            (
                Operation::QUERY_PROTOCOL_VERSION,
                InitState::AwaitVersion | InitState::AwaitProperties,
            ) if self.primary => self.query_version(&packet),
            (Operation::QUERY_PROPERTIES, InitState::AwaitProperties) if self.primary => {
                self.state = InitState::AwaitEnd;
                packet.reply(NtStatus::SUCCESS, self.properties().as_bytes())
            }
            (Operation::END_INITIALIZATION, InitState::AwaitEnd) if self.primary => {
                self.state = InitState::Ready;
                packet.reply(NtStatus::SUCCESS, &[])
            }
            (Operation::CREATE_SUB_CHANNELS, InitState::Ready) if self.primary => {
                self.create_sub_channels(&packet)
            }
            (Operation::EXECUTE_SRB, InitState::Ready) => self.execute_srb(&packet, request.ranges),
            (
                Operation::RESET_LUN | Operation::RESET_ADAPTER | Operation::RESET_BUS,
                InitState::Ready,
            ) => packet.echo(NtStatus::SUCCESS),
            (operation, state) if is_vstor_request(operation) => {
                tracing::debug!(
                    ?operation,
                    ?state,
                    primary = self.primary,
                    "vstor operation out of order"
                );
                packet.echo(NtStatus::INVALID_DEVICE_STATE)
            }
            (operation, _) => {
                tracing::debug!(?operation, "unsupported vstor operation");
                packet.echo(NtStatus::INVALID_DEVICE_REQUEST)
            }
        }
    }

    fn query_version(&mut self, packet: &Received) -> Outcome<'static> {
        let echoed = &packet.body[..size_of::<VersionBody>()];
        let asked = VersionBody::read_from_bytes(echoed)
            .map(|v| ProtocolVersion(v.major_minor.get()))
            .unwrap_or(ProtocolVersion(0));
        if asked.is_known() {
            self.version = Some(asked);
            self.state = InitState::AwaitProperties;
            packet.reply(NtStatus::SUCCESS, echoed)
        } else {
            tracing::debug!(version = asked.0, "unsupported vstor version");
            packet.reply(NtStatus::REVISION_MISMATCH, echoed)
        }
    }

    /// The guest memory the channel's requests are checked against, which
    /// the jobs it hands out run on.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn properties(&self) -> PropertiesBody {
        PropertiesBody {
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

    fn create_sub_channels(&mut self, packet: &Received) -> Outcome<'static> {
        let present = packet.present;
        let count = CreateSubChannelsBody::read_from_prefix(&packet.body)
            .map(|(b, _)| b.count.get())
            .unwrap_or(0);
        let ok = present >= size_of::<CreateSubChannelsBody>()
            && self.multi_channel_allowed()
            && self.sub_channels == 0
            && count > 0
            && count <= self.config.max_sub_channels;
        if !ok {
            tracing::debug!(count, present, "refused CREATE_SUB_CHANNELS");
            return packet.echo(NtStatus::INVALID_PARAMETER);
        }
        self.sub_channels = count;
        Outcome::CreateSubChannels {
            completion: packet.completion(NtStatus::SUCCESS, &packet.body),
            count,
        }
    }

    fn execute_srb<'a>(&self, packet: &Received, ranges: &'a [GpaRange]) -> Outcome<'a> {
        let context = SrbContext {
            config: &self.config,
            controller: &self.controller,
            luns: &self.luns,
            memory: &self.memory,
            version: self.version.unwrap_or(ProtocolVersion::WIN8),
        };
        Outcome::Execute(SrbJob::prepare(
            &context,
            &packet.body,
            packet.body_len,
            ranges,
            packet.reply_to,
        ))
    }
}

/// Whether `operation` is a request a guest may send, in some state.
fn is_vstor_request(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::BEGIN_INITIALIZATION
            | Operation::QUERY_PROTOCOL_VERSION
            | Operation::QUERY_PROPERTIES
            | Operation::END_INITIALIZATION
            | Operation::CREATE_SUB_CHANNELS
            | Operation::EXECUTE_SRB
            | Operation::RESET_LUN
            | Operation::RESET_ADAPTER
            | Operation::RESET_BUS
    )
}
