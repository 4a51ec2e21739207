//! Errors of the remote transport, the server and the proxy.

use crate::wire::code;

/// An error of the out-of-process transport.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A socket call failed.
    #[error("cannot {op}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The peer closed the connection or its process died.
    #[error("the connection to the peer is lost")]
    ConnectionLost,
    /// No reply came within the request timeout.
    #[error("no reply to {what} within {seconds} s")]
    Timeout {
        /// The request.
        what: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// The peer answered with an error reply.
    #[error("the peer refused {what}: {} ({code}): {text}", code_name(*.code))]
    Refused {
        /// The request.
        what: &'static str,
        /// One of [`wire::code`](crate::wire::code).
        code: u32,
        /// The peer's explanation.
        text: String,
        /// With a device refusal: the bus error's variant and numbers
        /// ([`wire::bus_error`](crate::wire::bus_error)).
        bus: (u16, u16, u16),
    },
    /// The device process reported that a channel task failed.
    #[error("remote channel {channel} failed: {text}")]
    ChannelFailed {
        /// Channel index.
        channel: u16,
        /// The device's error, as text.
        text: String,
    },
    /// The peer answered with a reply that does not fit the request.
    #[error("bad reply to {what}: {reason}")]
    BadReply {
        /// The request.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Something to send is above the protocol's bounds.
    #[error("{what} of {len} is above the limit of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size or count.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The guest memory has no fd to pass (a VMM-owned mapping).
    #[error("guest memory has no memfd to pass to the device process")]
    NoMemoryFd,
    /// A doorbell relay could not be set up.
    #[error("cannot relay a doorbell: {0}")]
    Doorbell(std::io::Error),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

impl RemoteError {
    /// An I/O error of `op`.
    pub fn io(op: &'static str, error: impl Into<std::io::Error>) -> Self {
        Self::Io {
            op,
            error: error.into(),
        }
    }

    /// The protocol error code, if the peer refused.
    pub fn refused_code(&self) -> Option<u32> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The name of an error code, for messages.
pub fn code_name(value: u32) -> &'static str {
    match value {
        code::TRUNCATED => "truncated",
        code::BAD_VERSION => "bad version",
        code::UNKNOWN_COMMAND => "unknown command",
        code::MISSING_FDS => "missing fds",
        code::BAD_GPADL => "bad gpadl",
        code::BAD_MEMORY => "bad memory",
        code::NO_MEMORY => "no memory",
        code::DEVICE => "device error",
        code::TOO_LARGE => "too large",
        code::UNEXPECTED_FDS => "unexpected fds",
        code::BAD_SEQUENCE => "bad sequence",
        code::BAD_FIELD => "bad field",
        _ => "unknown code",
    }
}
