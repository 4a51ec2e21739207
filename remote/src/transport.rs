//! Moving control messages over a Unix `SOCK_SEQPACKET` socket: one
//! datagram per message, file descriptors as `SCM_RIGHTS`, and the checks
//! every received datagram passes before anyone reads its payload (magic,
//! version, length, size bounds, descriptor count).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::RemoteError;
use crate::wire::{
    ErrorReply, Header, MAGIC, MAX_FDS, MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES, MAX_TEXT_BYTES,
    PROTOCOL_VERSION, code,
};

/// A connected pair of control sockets (close-on-exec), e.g. for a device
/// server on a thread of the same process.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), RemoteError> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| RemoteError::io("create a socket pair", e))
}

/// A listening control socket bound at `path` (close-on-exec).
pub fn listen(path: &Path) -> Result<OwnedFd, RemoteError> {
    let socket = new_socket()?;
    let addr = SocketAddrUnix::new(path).map_err(|e| RemoteError::io("name the socket", e))?;
    rustix::net::bind(&socket, &addr).map_err(|e| RemoteError::io("bind the socket", e))?;
    rustix::net::listen(&socket, 4).map_err(|e| RemoteError::io("listen", e))?;
    Ok(socket)
}

/// Waits for the next connection on a socket from [`listen`].
pub fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd, RemoteError> {
    rustix::net::accept_with(listener, SocketFlags::CLOEXEC)
        .map_err(|e| RemoteError::io("accept a connection", e))
}

/// Connects to a device server listening at `path`.
pub fn connect(path: &Path) -> Result<OwnedFd, RemoteError> {
    let socket = new_socket()?;
    let addr = SocketAddrUnix::new(path).map_err(|e| RemoteError::io("name the socket", e))?;
    rustix::net::connect(&socket, &addr).map_err(|e| RemoteError::io("connect", e))?;
    Ok(socket)
}

fn new_socket() -> Result<OwnedFd, RemoteError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| RemoteError::io("create a socket", e))
}

/// Ends both directions of a connection: a thread blocked receiving on it
/// sees the end.
pub fn shut_down(socket: BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);
}

/// Sends one message. The payload must be at most
/// [`MAX_PAYLOAD_BYTES`].
pub fn send(
    socket: BorrowedFd<'_>,
    kind: u16,
    id: u32,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), RemoteError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(RemoteError::TooLarge {
            what: "message payload",
            len: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let header = Header {
        magic: U32::new(MAGIC),
        version: U16::new(PROTOCOL_VERSION),
        kind: U16::new(kind),
        id: U32::new(id),
        len: U32::new(payload.len() as u32),
    };
    send_raw(socket, &[header.as_bytes(), payload], fds)
}

/// Sends `parts` as one datagram with `fds` beside it, unchecked: the
/// tests use it to send malformed messages.
pub fn send_raw(
    socket: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> Result<(), RemoteError> {
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(RemoteError::TooLarge {
            what: "file descriptors",
            len: fds.len(),
            max: MAX_FDS,
        });
    }
    loop {
        match rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                return Err(RemoteError::ConnectionLost);
            }
            Err(e) => return Err(RemoteError::io("send a message", e)),
        }
    }
}

/// One received datagram, not yet checked.
#[derive(Debug)]
pub struct Datagram {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Descriptors that came with it (already close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The bytes or descriptors did not fit (the excess was discarded).
    pub truncated: bool,
}

/// Receives one datagram; `None` at the end of the connection.
pub fn recv(socket: BorrowedFd<'_>) -> Result<Option<Datagram>, RemoteError> {
    // One byte more than the largest message shows an oversized one.
    let mut bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut bytes)];
        match rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                if msg.bytes == 0 && fds.is_empty() {
                    return Ok(None);
                }
                let truncated = msg.flags.contains(ReturnFlags::TRUNC)
                    || msg.flags.contains(ReturnFlags::CTRUNC)
                    || msg.bytes > MAX_MESSAGE_BYTES;
                bytes.truncate(msg.bytes.min(MAX_MESSAGE_BYTES));
                return Ok(Some(Datagram {
                    bytes,
                    fds,
                    truncated,
                }));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::CONNRESET) => return Ok(None),
            Err(e) => return Err(RemoteError::io("receive a message", e)),
        }
    }
}

/// Why a received message cannot be used: an error code of the protocol
/// and a text naming the field and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// One of the [`crate::wire::code`] constants.
    pub code: u32,
    /// What was wrong.
    pub text: String,
    /// With `code::DEVICE`: the bus error's variant and numbers
    /// ([`bus_error`](crate::wire::bus_error)).
    pub bus: (u16, u16, u16),
}

impl Malformed {
    /// A malformed-message error.
    pub fn new(code: u32, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            bus: (0, 0, 0),
        }
    }
}

/// A checked message: header fields and the payload.
#[derive(Debug)]
pub struct Message {
    /// Kind.
    pub kind: u16,
    /// Request id.
    pub id: u32,
    /// Payload (exactly `len` bytes).
    pub payload: Vec<u8>,
    /// Descriptors.
    pub fds: Vec<OwnedFd>,
}

/// Checks a datagram's header (size, magic, version, length) and returns
/// the message, or the request id (0 if unreadable) and what is wrong.
pub fn check(datagram: Datagram) -> Result<Message, (u32, Malformed)> {
    let Ok((header, rest)) = Header::read_from_prefix(&datagram.bytes) else {
        return Err((
            0,
            Malformed::new(
                code::TRUNCATED,
                format!(
                    "message of {} bytes is shorter than the {}-byte header",
                    datagram.bytes.len(),
                    size_of::<Header>()
                ),
            ),
        ));
    };
    let id = header.id.get();
    if datagram.truncated {
        return Err((
            id,
            Malformed::new(
                code::TOO_LARGE,
                format!(
                    "message larger than {MAX_MESSAGE_BYTES} bytes or with more than {MAX_FDS} fds"
                ),
            ),
        ));
    }
    if header.magic.get() != MAGIC {
        return Err((
            id,
            Malformed::new(
                code::BAD_VERSION,
                format!("magic {:#010x} is not {MAGIC:#010x}", header.magic.get()),
            ),
        ));
    }
    if header.version.get() != PROTOCOL_VERSION {
        return Err((
            id,
            Malformed::new(
                code::BAD_VERSION,
                format!(
                    "header version {} is not {PROTOCOL_VERSION}",
                    header.version.get()
                ),
            ),
        ));
    }
    let len = header.len.get() as usize;
    if len != rest.len() {
        return Err((
            id,
            Malformed::new(
                code::TRUNCATED,
                format!(
                    "length field {len} disagrees with the {} payload bytes received",
                    rest.len()
                ),
            ),
        ));
    }
    Ok(Message {
        kind: header.kind.get(),
        id,
        payload: rest.to_vec(),
        fds: datagram.fds,
    })
}

/// Reads the fixed part `T` at the start of `payload`, returning it and
/// the bytes after it.
pub fn fixed<'a, T: FromBytes + KnownLayout + Immutable>(
    payload: &'a [u8],
    what: &str,
) -> Result<(T, &'a [u8]), Malformed> {
    T::read_from_prefix(payload).map_err(|_| {
        Malformed::new(
            code::TRUNCATED,
            format!(
                "{what}: {} payload bytes, the fixed part needs {}",
                payload.len(),
                size_of::<T>()
            ),
        )
    })
}

/// The payload of an error reply.
pub fn error_payload(error: &Malformed) -> Vec<u8> {
    let mut text = error.text.as_bytes();
    if text.len() > MAX_TEXT_BYTES {
        text = &text[..MAX_TEXT_BYTES];
    }
    let mut payload = ErrorReply {
        code: U32::new(error.code),
        bus_error: U16::new(error.bus.0),
        arg: U16::new(error.bus.1),
        arg2: U16::new(error.bus.2),
        reserved: U16::new(0),
    }
    .as_bytes()
    .to_vec();
    payload.extend_from_slice(text);
    payload
}

/// Decodes an error reply's payload.
pub fn parse_error(payload: &[u8]) -> Malformed {
    match ErrorReply::read_from_prefix(payload) {
        Ok((reply, text)) => Malformed {
            code: reply.code.get(),
            text: String::from_utf8_lossy(&text[..text.len().min(MAX_TEXT_BYTES)]).into_owned(),
            bus: (reply.bus_error.get(), reply.arg.get(), reply.arg2.get()),
        },
        Err(_) => Malformed::new(code::TRUNCATED, "error reply without its code"),
    }
}

/// Text bytes capped at [`MAX_TEXT_BYTES`].
pub fn capped_text(text: &str) -> &[u8] {
    let bytes = text.as_bytes();
    &bytes[..bytes.len().min(MAX_TEXT_BYTES)]
}

/// Borrows every descriptor of a slice.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|fd| fd.as_fd()).collect()
}

/// Exactly `count` elements `T` filling `bytes`.
pub fn exact_array<T>(bytes: &[u8], count: usize, what: &str) -> Result<Vec<T>, Malformed>
where
    T: FromBytes + KnownLayout + Immutable + Copy,
{
    let need = count.saturating_mul(size_of::<T>());
    if bytes.len() != need {
        return Err(Malformed::new(
            code::TRUNCATED,
            format!(
                "{what}: {count} entries need {need} bytes, {} came",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(size_of::<T>())
        .filter_map(|chunk| T::read_from_bytes(chunk).ok())
        .collect())
}

/// Checks that `message` carries exactly the `wanted` descriptors its
/// kind takes.
pub fn check_fd_count(message: &Message, wanted: usize) -> Result<(), Malformed> {
    let came = message.fds.len();
    if came < wanted {
        return Err(Malformed::new(
            code::MISSING_FDS,
            format!("kind {} needs {wanted} fds, {came} came", message.kind),
        ));
    }
    if came > wanted {
        return Err(Malformed::new(
            code::UNEXPECTED_FDS,
            format!("kind {} takes {wanted} fds, {came} came", message.kind),
        ));
    }
    Ok(())
}
