//! The vmbfs host state machine: one received pipe message in, at most one
//! reply out. No I/O happens here; requests that need the file tree come
//! out as an [`IoJob`].

use super::buffer::GpaDirectBuffer;
use super::handles::GpaDirectTable;
use super::io::{IoDone, IoJob, Work};
use super::path::{PathCache, PathError};
use super::reply::Reply;
use super::stats::{BadInput, VmbfsStats};
use crate::violation::ViolationLog;
use std::collections::BTreeMap;
use std::sync::Arc;
use vmbdev_fs::FileTree;
use vmbdev_protocol::vmbfs::{
    FileStatus, GetFileInfo, MAX_MESSAGE_SIZE, MAX_RDMA_READ_SIZE, MAX_READ_SIZE, MessageHeader,
    MessageType, ReadFile, ReadFileRdma, VERSION_WIN10, VersionRequest, VersionStatus,
};
use vmbdev_ring::{GpaRange, GuestMemory, WireRanges};
use zerocopy::FromBytes;

/// Most GPA-direct buffers a guest may have registered at once. The UEFI
/// client uses one; the limit bounds host memory against a setup flood.
pub const MAX_GPA_DIRECT_BUFFERS: usize = 16;

/// How the host is set up.
#[derive(Clone)]
pub struct VmbfsConfig {
    /// The tree served to the guest.
    pub tree: Arc<dyn FileTree>,
    /// Whether files are offered as RDMA capable and READ_FILE_RDMA served.
    pub rdma_enabled: bool,
}

impl std::fmt::Debug for VmbfsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbfsConfig")
            .field("rdma_enabled", &self.rdma_enabled)
            .finish_non_exhaustive()
    }
}

/// One message received on the channel's pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmbfsInput<'a> {
    /// A pipe DATA message: the vmbfs message bytes, exactly as sent.
    Message(&'a [u8]),
    /// A pipe SETUP_GPA_DIRECT: register a buffer under `handle`.
    SetupGpaDirect {
        /// Handle READ_FILE_RDMA will name.
        handle: u32,
        /// Whether the host may write the buffer.
        writable: bool,
        /// The buffer's ranges, laid end to end.
        ranges: Vec<GpaRange>,
    },
    /// A pipe SETUP_GPA_DIRECT with its ranges still in wire form (as the
    /// pipe decoder checked them): the host parses them into a buffer a
    /// torn-down registration left, so a warm setup allocates nothing.
    SetupGpaDirectWire {
        /// Handle READ_FILE_RDMA will name.
        handle: u32,
        /// Whether the host may write the buffer.
        writable: bool,
        /// The buffer's ranges, laid end to end.
        ranges: WireRanges<'a>,
    },
    /// A pipe TEARDOWN_GPA_DIRECT: forget `handle`.
    TeardownGpaDirect {
        /// The handle to forget.
        handle: u32,
    },
}

/// Where the negotiation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolState {
    /// Waiting for a supported VERSION_REQUEST.
    AwaitVersion,
    /// Version negotiated; file requests are served.
    Ready {
        /// The negotiated version.
        version: u32,
    },
    /// A protocol violation stopped the channel; only a reset revives it.
    Stopped,
}

/// A guest protocol violation that stops the channel (the protocol has no
/// way to answer it). Counted in [`VmbfsStats`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message shorter than its 8-byte header.
    #[error("message of {len} bytes is shorter than the 8-byte header")]
    ShortHeader {
        /// Message length.
        len: usize,
    },
    /// A message longer than the protocol allows.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    MessageTooLong {
        /// Message length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An undefined message type (field `type` at offset 0).
    #[error("unknown message type {message_type} at offset 0")]
    UnknownType {
        /// The type value.
        message_type: u32,
    },
    /// A host-to-guest message type sent by the guest.
    #[error("guest sent response type {message_type} at offset 0")]
    ResponseFromGuest {
        /// The type value.
        message_type: u32,
    },
    /// A file request before VERSION_REQUEST was accepted.
    #[error("message type {message_type} before version negotiation")]
    RequestBeforeVersion {
        /// The type value.
        message_type: u32,
    },
    /// A second VERSION_REQUEST after negotiation succeeded.
    #[error("VERSION_REQUEST for {requested:#x} after version {negotiated:#x} was negotiated")]
    RepeatedVersion {
        /// Version negotiated earlier.
        negotiated: u32,
        /// Version in the new request (0 if the request was truncated).
        requested: u32,
    },
    /// TEARDOWN_GPA_DIRECT of an unregistered handle.
    #[error("TEARDOWN_GPA_DIRECT of unregistered handle {handle:#x}")]
    UnknownTeardown {
        /// The handle.
        handle: u32,
    },
    /// SETUP_GPA_DIRECT of a handle already registered.
    #[error("SETUP_GPA_DIRECT of handle {handle:#x}, which is already registered")]
    DuplicateSetup {
        /// The handle.
        handle: u32,
    },
    /// SETUP_GPA_DIRECT beyond [`MAX_GPA_DIRECT_BUFFERS`].
    #[error("SETUP_GPA_DIRECT of handle {handle:#x} exceeds the limit of {limit} buffers")]
    TooManyHandles {
        /// The handle.
        handle: u32,
        /// The limit.
        limit: usize,
    },
    /// SETUP_GPA_DIRECT with no ranges.
    #[error("SETUP_GPA_DIRECT of handle {handle:#x} has no ranges")]
    EmptySetup {
        /// The handle.
        handle: u32,
    },
    /// Input after an earlier violation stopped the channel.
    #[error("channel stopped by an earlier protocol violation")]
    Stopped,
}

impl ProtocolError {
    /// The counter this violation increments (none for [`Self::Stopped`]).
    pub fn kind(&self) -> Option<BadInput> {
        Some(match self {
            Self::ShortHeader { .. } => BadInput::ShortHeader,
            Self::MessageTooLong { .. } => BadInput::MessageTooLong,
            Self::UnknownType { .. } => BadInput::UnknownType,
            Self::ResponseFromGuest { .. } => BadInput::ResponseFromGuest,
            Self::RequestBeforeVersion { .. } => BadInput::RequestBeforeVersion,
            Self::RepeatedVersion { .. } => BadInput::RepeatedVersion,
            Self::UnknownTeardown { .. } => BadInput::UnknownTeardown,
            Self::DuplicateSetup { .. } => BadInput::DuplicateSetup,
            Self::TooManyHandles { .. } => BadInput::TooManyHandles,
            Self::EmptySetup { .. } => BadInput::EmptySetup,
            Self::Stopped => return None,
        })
    }
}

/// What to do after [`VmbfsHost::start`].
#[derive(Debug)]
pub enum Step {
    /// Nothing to send (pipe setup/teardown).
    NoReply,
    /// Send this reply.
    Reply(Reply),
    /// Run the job (it may block), pass its result to
    /// [`VmbfsHost::finish`] and send the reply that returns. Start no other
    /// input on this host until then: replies go out in request order.
    Io(IoJob),
}

/// A registered GPA-direct buffer in saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedGpaDirect {
    /// Its handle.
    pub handle: u32,
    /// Whether the host may write it.
    pub writable: bool,
    /// Its ranges.
    pub ranges: Vec<GpaRange>,
}

/// Everything a host needs to resume a channel: the negotiation state and
/// the registered GPA-direct buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmbfsSavedState {
    /// Negotiation state.
    pub state: ProtocolState,
    /// Registered buffers, by ascending handle.
    pub gpa_direct: Vec<SavedGpaDirect>,
}

/// Why saved state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A version this host does not speak.
    #[error("saved state has unsupported version {0:#x}")]
    UnsupportedVersion(u32),
    /// More buffers than [`MAX_GPA_DIRECT_BUFFERS`].
    #[error("saved state has {count} GPA-direct buffers, more than the limit of {limit}")]
    TooManyBuffers {
        /// Buffers in the saved state.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A handle listed twice.
    #[error("saved state lists GPA-direct handle {0:#x} twice")]
    DuplicateHandle(u32),
    /// A buffer with no ranges.
    #[error("saved GPA-direct handle {0:#x} has no ranges")]
    EmptyBuffer(u32),
}

/// A request rejected with a status before any I/O.
struct Rejection {
    kind: BadInput,
    status: FileStatus,
}

impl Rejection {
    fn error(kind: BadInput) -> Self {
        Self {
            kind,
            status: FileStatus::ERROR,
        }
    }
}

impl From<PathError> for Rejection {
    fn from(e: PathError) -> Self {
        Self::error(match e {
            PathError::OddLength { .. } => BadInput::OddLengthPath,
            PathError::EmbeddedNul { .. } => BadInput::EmbeddedNul,
            PathError::UnpairedSurrogate { .. } => BadInput::UnpairedSurrogate,
        })
    }
}

/// The vmbfs host of one channel.
pub struct VmbfsHost {
    config: VmbfsConfig,
    memory: GuestMemory,
    state: ProtocolState,
    gpa_direct: GpaDirectTable,
    paths: PathCache,
    bounce: Vec<u8>,
    /// The buffer the next reply is built in (see [`Self::recycle`]).
    spare_reply: Vec<u8>,
    stats: VmbfsStats,
    violations: Arc<ViolationLog>,
}

impl std::fmt::Debug for VmbfsHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbfsHost")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("gpa_direct", &self.gpa_direct_handles())
            .field("stats", &self.stats)
            .finish()
    }
}

impl VmbfsHost {
    /// A host in [`ProtocolState::AwaitVersion`] serving `config.tree`;
    /// RDMA reads land in `memory`.
    pub fn new(config: VmbfsConfig, memory: GuestMemory) -> Self {
        Self {
            config,
            memory,
            state: ProtocolState::AwaitVersion,
            gpa_direct: GpaDirectTable::default(),
            paths: PathCache::default(),
            bounce: Vec::new(),
            spare_reply: Vec::new(),
            stats: VmbfsStats::default(),
            violations: Arc::new(ViolationLog::new("vmbfs")),
        }
    }

    /// The same host reporting bad input to `violations` (shared with the
    /// device, so counts outlive the host).
    pub fn with_violation_log(mut self, violations: Arc<ViolationLog>) -> Self {
        self.violations = violations;
        self
    }

    /// Counts bad input of `kind`; the log rate-limits its events.
    fn bad_input(&self, kind: BadInput, detail: &dyn std::fmt::Display) {
        self.violations.record_as(0, kind.name(), detail);
    }

    /// Back to the state of a fresh open: awaiting version, no registered
    /// buffers. Statistics are kept.
    pub fn reset(&mut self) {
        self.state = ProtocolState::AwaitVersion;
        self.gpa_direct.clear();
    }

    /// Serves a new guest memory (a channel reopened by another VM
    /// instance, e.g. after a restore) and resets like [`Self::reset`].
    pub fn rebind(&mut self, memory: GuestMemory) {
        self.memory = memory;
        self.reset();
    }

    /// The negotiation state.
    pub fn state(&self) -> ProtocolState {
        self.state
    }

    /// Counters of what the guest sent.
    pub fn stats(&self) -> VmbfsStats {
        self.stats.clone().with_bad_input(&self.violations)
    }

    /// Handles of the registered GPA-direct buffers, ascending.
    pub fn gpa_direct_handles(&self) -> Vec<u32> {
        self.gpa_direct
            .sorted()
            .into_iter()
            .map(|(handle, _)| handle)
            .collect()
    }

    /// Hands back a sent reply's buffer, so the next reply is built in it
    /// instead of a new allocation.
    pub fn recycle(&mut self, reply: Reply) {
        let buffer = reply.into_bytes();
        if buffer.capacity() > self.spare_reply.capacity() {
            self.spare_reply = buffer;
        }
    }

    /// The buffer to build a reply in: the recycled one, or a new one with
    /// room for the largest reply (so it never grows).
    fn reply_buffer(&mut self) -> Vec<u8> {
        match std::mem::take(&mut self.spare_reply) {
            buffer if buffer.capacity() >= MAX_MESSAGE_SIZE => buffer,
            _ => Vec::with_capacity(MAX_MESSAGE_SIZE),
        }
    }

    /// Largest reply this host sends: reserve this much outgoing space
    /// before consuming a request.
    pub const fn max_reply_size() -> usize {
        MAX_MESSAGE_SIZE
    }

    /// Handles one input completely, doing any tree I/O on this thread.
    /// Returns the reply to send, if any.
    pub fn handle(&mut self, input: VmbfsInput<'_>) -> Result<Option<Reply>, ProtocolError> {
        Ok(match self.start(input)? {
            Step::NoReply => None,
            Step::Reply(reply) => Some(reply),
            Step::Io(job) => Some(self.finish(job.run())),
        })
    }

    /// Processes one input up to the point where tree I/O is needed.
    ///
    /// An `Err` is a protocol violation: the channel must stop (every later
    /// input returns [`ProtocolError::Stopped`] until [`Self::reset`]).
    pub fn start(&mut self, input: VmbfsInput<'_>) -> Result<Step, ProtocolError> {
        if self.state == ProtocolState::Stopped {
            return Err(ProtocolError::Stopped);
        }
        self.stats.inputs += 1;
        let step = match input {
            VmbfsInput::Message(bytes) => self.message(bytes).map(|step| {
                if let Step::Reply(_) = step {
                    self.stats.replies += 1;
                }
                step
            }),
            VmbfsInput::SetupGpaDirect { handle, ranges, .. } if ranges.is_empty() => {
                Err(ProtocolError::EmptySetup { handle })
            }
            VmbfsInput::SetupGpaDirect {
                handle,
                writable,
                ranges,
            } => self
                .setup(handle, writable, |out| *out = ranges)
                .map(|()| Step::NoReply),
            VmbfsInput::SetupGpaDirectWire {
                handle,
                writable,
                ranges,
            } => self
                .setup(handle, writable, |out| ranges.parse_into(out))
                .map(|()| Step::NoReply),
            VmbfsInput::TeardownGpaDirect { handle } => {
                self.teardown(handle).map(|()| Step::NoReply)
            }
        };
        step.map_err(|e| self.stop(e))
    }

    /// Takes the result of an [`IoJob`] started by [`Self::start`] and
    /// returns the reply to send.
    pub fn finish(&mut self, done: IoDone) -> Reply {
        let IoDone {
            reply,
            rejected,
            bounce,
        } = done;
        if let Some(kind) = rejected {
            self.bad_input(kind, &"request rejected by the tree read");
        }
        if bounce.len() > self.bounce.len() {
            self.bounce = bounce;
        }
        self.stats.replies += 1;
        reply
    }

    /// The state to save for resuming this channel.
    pub fn save(&self) -> VmbfsSavedState {
        VmbfsSavedState {
            state: self.state,
            gpa_direct: self
                .gpa_direct
                .sorted()
                .into_iter()
                .map(|(handle, buf)| SavedGpaDirect {
                    handle,
                    writable: buf.writable,
                    ranges: buf.ranges.clone(),
                })
                .collect(),
        }
    }

    /// Resumes from saved state, replacing the current one. The saved state
    /// is checked like guest input; on error nothing changes.
    pub fn restore(&mut self, saved: &VmbfsSavedState) -> Result<(), RestoreError> {
        if let ProtocolState::Ready { version } = saved.state {
            if version != VERSION_WIN10 {
                return Err(RestoreError::UnsupportedVersion(version));
            }
        }
        if saved.gpa_direct.len() > MAX_GPA_DIRECT_BUFFERS {
            return Err(RestoreError::TooManyBuffers {
                count: saved.gpa_direct.len(),
                limit: MAX_GPA_DIRECT_BUFFERS,
            });
        }
        let mut buffers = BTreeMap::new();
        for entry in &saved.gpa_direct {
            if entry.ranges.is_empty() {
                return Err(RestoreError::EmptyBuffer(entry.handle));
            }
            let buffer = GpaDirectBuffer {
                writable: entry.writable,
                ranges: entry.ranges.clone(),
            };
            if buffers.insert(entry.handle, buffer).is_some() {
                return Err(RestoreError::DuplicateHandle(entry.handle));
            }
        }
        self.state = saved.state;
        self.gpa_direct.replace(buffers.into_iter().collect());
        Ok(())
    }

    fn stop(&mut self, error: ProtocolError) -> ProtocolError {
        if let Some(kind) = error.kind() {
            self.bad_input(kind, &format_args!("{error}; stopping the channel"));
            self.stats.channel_stops += 1;
            self.state = ProtocolState::Stopped;
        }
        error
    }

    fn message(&mut self, bytes: &[u8]) -> Result<Step, ProtocolError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(ProtocolError::MessageTooLong {
                len: bytes.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let (header, _) = MessageHeader::read_from_prefix(bytes)
            .map_err(|_| ProtocolError::ShortHeader { len: bytes.len() })?;
        let message_type = header.message_type();
        match message_type {
            MessageType::VERSION_REQUEST
            | MessageType::GET_FILE_INFO
            | MessageType::READ_FILE
            | MessageType::READ_FILE_RDMA => {}
            MessageType::VERSION_RESPONSE
            | MessageType::GET_FILE_INFO_RESPONSE
            | MessageType::READ_FILE_RESPONSE
            | MessageType::READ_FILE_RDMA_RESPONSE => {
                return Err(ProtocolError::ResponseFromGuest {
                    message_type: message_type.0,
                });
            }
            _ => {
                return Err(ProtocolError::UnknownType {
                    message_type: message_type.0,
                });
            }
        }
        match (self.state, message_type) {
            (ProtocolState::AwaitVersion, MessageType::VERSION_REQUEST) => {
                Ok(Step::Reply(self.version(bytes)))
            }
            (ProtocolState::AwaitVersion, _) => Err(ProtocolError::RequestBeforeVersion {
                message_type: message_type.0,
            }),
            (ProtocolState::Ready { version }, MessageType::VERSION_REQUEST) => {
                Err(ProtocolError::RepeatedVersion {
                    negotiated: version,
                    requested: VersionRequest::read_from_prefix(bytes)
                        .map_or(0, |(r, _)| r.requested_version.get()),
                })
            }
            (ProtocolState::Ready { .. }, MessageType::GET_FILE_INFO) => Ok(self.file_info(bytes)),
            (ProtocolState::Ready { .. }, MessageType::READ_FILE) => Ok(self.read(bytes)),
            (ProtocolState::Ready { .. }, _) => Ok(self.read_rdma(bytes)),
            // `start` returns before reaching here when stopped.
            (ProtocolState::Stopped, _) => Err(ProtocolError::Stopped),
        }
    }

    fn reject(&mut self, what: &str, rejection: &Rejection) {
        self.bad_input(
            rejection.kind,
            &format_args!("{what} rejected with status {:?}", rejection.status),
        );
    }

    fn version(&mut self, bytes: &[u8]) -> Reply {
        let buffer = self.reply_buffer();
        let Ok((request, _)) = VersionRequest::read_from_prefix(bytes) else {
            self.bad_input(BadInput::TruncatedBody, &"VERSION_REQUEST under 12 bytes");
            return Reply::version(buffer, VersionStatus::UNSUPPORTED);
        };
        let version = request.requested_version.get();
        if version == VERSION_WIN10 {
            self.state = ProtocolState::Ready { version };
            Reply::version(buffer, VersionStatus::SUPPORTED)
        } else {
            self.bad_input(
                BadInput::UnsupportedVersion,
                &format_args!("version {version:#x} requested"),
            );
            Reply::version(buffer, VersionStatus::UNSUPPORTED)
        }
    }

    fn job(&mut self, work: Work) -> Step {
        Step::Io(IoJob {
            tree: self.config.tree.clone(),
            work,
            bounce: Vec::new(),
            reply: self.reply_buffer(),
        })
    }

    fn file_info(&mut self, bytes: &[u8]) -> Step {
        // The fixed part is the header, which `message` already checked.
        let path = bytes.get(size_of::<GetFileInfo>()..).unwrap_or_default();
        match self.paths.decode(path) {
            Ok(path) => self.job(Work::FileInfo {
                path,
                rdma_enabled: self.config.rdma_enabled,
            }),
            Err(e) => {
                let rejection = Rejection::from(e);
                self.reject("GET_FILE_INFO", &rejection);
                Step::Reply(Reply::file_info(
                    self.reply_buffer(),
                    rejection.status,
                    vmbdev_protocol::vmbfs::FileInfoFlags::new(),
                    0,
                ))
            }
        }
    }

    fn read(&mut self, bytes: &[u8]) -> Step {
        match self.parse_read(bytes) {
            Ok(work) => self.job(work),
            Err(rejection) => {
                self.reject("READ_FILE", &rejection);
                Step::Reply(Reply::read_status(self.reply_buffer(), rejection.status))
            }
        }
    }

    fn parse_read(&mut self, bytes: &[u8]) -> Result<Work, Rejection> {
        let (request, path) = ReadFile::read_from_prefix(bytes)
            .map_err(|_| Rejection::error(BadInput::TruncatedBody))?;
        let path = self.paths.decode(path)?;
        let byte_count = request.byte_count.get();
        let offset = request.offset.get();
        if byte_count > MAX_READ_SIZE {
            return Err(Rejection::error(BadInput::ByteCountTooLarge));
        }
        check_end(offset, byte_count)?;
        Ok(Work::Read {
            path,
            offset,
            byte_count,
        })
    }

    fn read_rdma(&mut self, bytes: &[u8]) -> Step {
        match self.parse_read_rdma(bytes) {
            Ok(work) => {
                let mut step = self.job(work);
                if let Step::Io(job) = &mut step {
                    job.bounce = std::mem::take(&mut self.bounce);
                }
                step
            }
            Err(rejection) => {
                self.reject("READ_FILE_RDMA", &rejection);
                Step::Reply(Reply::rdma(self.reply_buffer(), rejection.status, 0))
            }
        }
    }

    fn parse_read_rdma(&mut self, bytes: &[u8]) -> Result<Work, Rejection> {
        let (request, path) = ReadFileRdma::read_from_prefix(bytes)
            .map_err(|_| Rejection::error(BadInput::TruncatedBody))?;
        let path = self.paths.decode(path)?;
        if !self.config.rdma_enabled {
            return Err(Rejection::error(BadInput::RdmaDisabled));
        }
        let handle = request.handle.get();
        let byte_count = request.byte_count.get();
        let file_offset = request.file_offset.get();
        let token_offset = request.token_offset.get();
        if byte_count > MAX_RDMA_READ_SIZE {
            return Err(Rejection::error(BadInput::ByteCountTooLarge));
        }
        check_end(file_offset, byte_count)?;
        let target = self
            .gpa_direct
            .get(handle)
            .ok_or(Rejection::error(BadInput::UnknownHandle))?;
        if !target.writable {
            return Err(Rejection::error(BadInput::ReadOnlyHandle));
        }
        let fits = token_offset
            .checked_add(u64::from(byte_count))
            .is_some_and(|end| end <= target.len());
        if !fits {
            return Err(Rejection::error(BadInput::RdmaRangeTooSmall));
        }
        target
            .check(&self.memory, token_offset, u64::from(byte_count))
            .map_err(|_| Rejection::error(BadInput::RdmaOutsideGuestMemory))?;
        Ok(Work::ReadRdma {
            path,
            file_offset,
            byte_count,
            token_offset,
            target: target.clone(),
            memory: self.memory.clone(),
        })
    }

    /// Registers `handle` with the ranges `fill` writes (into a list
    /// reused from an earlier registration).
    fn setup(
        &mut self,
        handle: u32,
        writable: bool,
        fill: impl FnOnce(&mut Vec<GpaRange>),
    ) -> Result<(), ProtocolError> {
        if self.gpa_direct.contains(handle) {
            return Err(ProtocolError::DuplicateSetup { handle });
        }
        if self.gpa_direct.len() >= MAX_GPA_DIRECT_BUFFERS {
            return Err(ProtocolError::TooManyHandles {
                handle,
                limit: MAX_GPA_DIRECT_BUFFERS,
            });
        }
        if self.gpa_direct.insert_with(handle, writable, fill) {
            Ok(())
        } else {
            Err(ProtocolError::EmptySetup { handle })
        }
    }

    fn teardown(&mut self, handle: u32) -> Result<(), ProtocolError> {
        if self.gpa_direct.remove(handle) {
            Ok(())
        } else {
            Err(ProtocolError::UnknownTeardown { handle })
        }
    }
}

/// Refuses a read whose last byte would lie beyond 2^64.
fn check_end(offset: u64, byte_count: u32) -> Result<(), Rejection> {
    offset
        .checked_add(u64::from(byte_count))
        .map(drop)
        .ok_or(Rejection::error(BadInput::OffsetOverflow))
}
