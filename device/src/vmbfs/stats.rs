//! Counters of bad guest input, inspectable while the device runs.

/// A kind of bad input the host noticed. Each is either answered with an
/// error status or stops the channel; see the module documentation of
/// [`vmbfs`](super) for which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadInput {
    /// A message shorter than the 8-byte header.
    ShortHeader,
    /// A known request shorter than its fixed part.
    TruncatedBody,
    /// A message longer than the protocol maximum.
    MessageTooLong,
    /// A message type the protocol does not define.
    UnknownType,
    /// A response type sent by the guest.
    ResponseFromGuest,
    /// A file request before version negotiation.
    RequestBeforeVersion,
    /// A VERSION_REQUEST after negotiation succeeded.
    RepeatedVersion,
    /// A VERSION_REQUEST with a version this host does not speak.
    UnsupportedVersion,
    /// A path with an odd number of bytes.
    OddLengthPath,
    /// A path with a NUL before its end.
    EmbeddedNul,
    /// A path with an unpaired UTF-16 surrogate.
    UnpairedSurrogate,
    /// A `byte_count` above the per-request limit.
    ByteCountTooLarge,
    /// `offset + byte_count` overflows 64 bits.
    OffsetOverflow,
    /// A read of a directory.
    ReadOfDirectory,
    /// A READ_FILE_RDMA while RDMA is disabled.
    RdmaDisabled,
    /// A READ_FILE_RDMA naming a handle that is not registered.
    UnknownHandle,
    /// A READ_FILE_RDMA into a buffer registered read-only.
    ReadOnlyHandle,
    /// A READ_FILE_RDMA past the end of its registered buffer.
    RdmaRangeTooSmall,
    /// A READ_FILE_RDMA into pages outside guest memory.
    RdmaOutsideGuestMemory,
    /// A TEARDOWN_GPA_DIRECT of a handle that is not registered.
    UnknownTeardown,
    /// A SETUP_GPA_DIRECT of a handle already registered.
    DuplicateSetup,
    /// A SETUP_GPA_DIRECT beyond the limit of registered buffers.
    TooManyHandles,
    /// A SETUP_GPA_DIRECT with no ranges.
    EmptySetup,
}

impl BadInput {
    /// Number of kinds.
    pub const COUNT: usize = 23;

    /// Every kind, in declaration order.
    pub const ALL: [BadInput; Self::COUNT] = [
        Self::ShortHeader,
        Self::TruncatedBody,
        Self::MessageTooLong,
        Self::UnknownType,
        Self::ResponseFromGuest,
        Self::RequestBeforeVersion,
        Self::RepeatedVersion,
        Self::UnsupportedVersion,
        Self::OddLengthPath,
        Self::EmbeddedNul,
        Self::UnpairedSurrogate,
        Self::ByteCountTooLarge,
        Self::OffsetOverflow,
        Self::ReadOfDirectory,
        Self::RdmaDisabled,
        Self::UnknownHandle,
        Self::ReadOnlyHandle,
        Self::RdmaRangeTooSmall,
        Self::RdmaOutsideGuestMemory,
        Self::UnknownTeardown,
        Self::DuplicateSetup,
        Self::TooManyHandles,
        Self::EmptySetup,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The kind's name in the [`ViolationLog`](crate::violation::ViolationLog).
    pub fn name(self) -> &'static str {
        match self {
            Self::ShortHeader => "ShortHeader",
            Self::TruncatedBody => "TruncatedBody",
            Self::MessageTooLong => "MessageTooLong",
            Self::UnknownType => "UnknownType",
            Self::ResponseFromGuest => "ResponseFromGuest",
            Self::RequestBeforeVersion => "RequestBeforeVersion",
            Self::RepeatedVersion => "RepeatedVersion",
            Self::UnsupportedVersion => "UnsupportedVersion",
            Self::OddLengthPath => "OddLengthPath",
            Self::EmbeddedNul => "EmbeddedNul",
            Self::UnpairedSurrogate => "UnpairedSurrogate",
            Self::ByteCountTooLarge => "ByteCountTooLarge",
            Self::OffsetOverflow => "OffsetOverflow",
            Self::ReadOfDirectory => "ReadOfDirectory",
            Self::RdmaDisabled => "RdmaDisabled",
            Self::UnknownHandle => "UnknownHandle",
            Self::ReadOnlyHandle => "ReadOnlyHandle",
            Self::RdmaRangeTooSmall => "RdmaRangeTooSmall",
            Self::RdmaOutsideGuestMemory => "RdmaOutsideGuestMemory",
            Self::UnknownTeardown => "UnknownTeardown",
            Self::DuplicateSetup => "DuplicateSetup",
            Self::TooManyHandles => "TooManyHandles",
            Self::EmptySetup => "EmptySetup",
        }
    }
}

/// What the host has seen since it was created (bad input from the
/// host's [`ViolationLog`](crate::violation::ViolationLog)). Counters survive
/// [`VmbfsHost::reset`](super::VmbfsHost::reset) so that the cause of a
/// stopped channel is still visible after the guest reopens it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmbfsStats {
    /// Messages received (pipe setup/teardown included).
    pub inputs: u64,
    /// Replies produced.
    pub replies: u64,
    /// Channels stopped for a protocol violation.
    pub channel_stops: u64,
    bad_input: [u64; BadInput::COUNT],
}

impl VmbfsStats {
    /// How many times `kind` was seen.
    pub fn count(&self, kind: BadInput) -> u64 {
        self.bad_input[kind.index()]
    }

    /// All bad input seen, of every kind.
    pub fn total_bad_input(&self) -> u64 {
        self.bad_input.iter().sum()
    }

    /// These counters with the bad-input counts of `log`.
    pub(super) fn with_bad_input(mut self, log: &crate::violation::ViolationLog) -> Self {
        for kind in BadInput::ALL {
            self.bad_input[kind.index()] = log.count(kind.name());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_at_its_index() {
        for (i, kind) in BadInput::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn every_kind_has_its_own_name() {
        let names: std::collections::BTreeSet<_> = BadInput::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), BadInput::COUNT);
        assert_eq!(BadInput::EmptySetup.name(), "EmptySetup");
    }
}
