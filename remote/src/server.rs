//! The device side: serves one [`VmbusDevice`] to a VMM over a control
//! connection. It adopts the VMM's memfd, opens channels on the rings the
//! VMM describes with the eventfds it passes, runs each channel task on a
//! thread of its own and reports how each ended.
//!
//! Every received message is checked before use; a bad one gets an error
//! reply naming what was wrong and is counted in [`ServerStats`] by error
//! code. Nothing a VMM sends makes the server panic or stop serving.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use vmbdev_device::bus::{
    BusError, ChannelTask, OpenRequest, PipeMode, SubChannelControl, VmbusDevice,
};
use vmbdev_ring::{Doorbell, EventfdDoorbell, GpadlRegistry, GuestMemory};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32};

use crate::error::RemoteError;
use crate::link::{Link, is_reply};
use crate::memory::adopt_memory;
use crate::transport::{self, Malformed, Message, capped_text, exact_array, fixed};
use crate::wire::{
    ChannelEnded, ChannelRef, HelloReply, HelloRequest, MAX_PAYLOAD_BYTES, MAX_RING_PAGES,
    OfferWire, OpenHeader, PROTOCOL_VERSION, SubChannelsRequest, bus_error, code, kind, pipe_mode,
};

/// How long a device's sub-channel request waits for the VMM's answer.
const SUB_CHANNEL_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters of a server: messages handled and error replies by code.
#[derive(Debug, Default)]
pub struct ServerStats {
    messages: AtomicU64,
    /// Indexed by error code (0: replies nobody waited for).
    refused: [AtomicU64; 16],
}

impl ServerStats {
    /// Messages received.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Error replies sent with `code` (one of [`wire::code`](crate::wire::code)).
    pub fn refused(&self, code: u32) -> u64 {
        self.refused
            .get(code as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// All error replies sent.
    pub fn total_refused(&self) -> u64 {
        self.refused[1..]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Replies that matched no request of the server.
    pub fn stray_replies(&self) -> u64 {
        self.refused[0].load(Ordering::Relaxed)
    }

    pub(crate) fn count_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, code: u32) {
        let slot = if (code as usize) < self.refused.len() {
            code as usize
        } else {
            self.refused.len() - 1
        };
        self.refused[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves `device` on the connected control socket `socket` until the
/// VMM closes it or dies; then closes every channel still open and returns
/// the counters.
pub fn serve(
    socket: OwnedFd,
    device: Arc<dyn VmbusDevice>,
) -> Result<Arc<ServerStats>, RemoteError> {
    let server = Server::new(device);
    server.serve(socket)?;
    Ok(server.stats())
}

/// A device server: the device and its counters, serving connections one
/// after another.
pub struct Server {
    device: Arc<dyn VmbusDevice>,
    stats: Arc<ServerStats>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `device`.
    pub fn new(device: Arc<dyn VmbusDevice>) -> Self {
        Self {
            device,
            stats: Arc::new(ServerStats::default()),
        }
    }

    /// The counters (shared with running connections).
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Serves one connection until it ends.
    pub fn serve(&self, socket: OwnedFd) -> Result<(), RemoteError> {
        let connection = Arc::new(Connection {
            link: Link::new(socket, SUB_CHANNEL_TIMEOUT),
            device: self.device.clone(),
            stats: self.stats.clone(),
            state: Mutex::new(State::default()),
            next_gpadl: AtomicU32::new(1),
        });
        let result = connection.run();
        connection.shut_down();
        result
    }
}

#[derive(Default)]
struct State {
    hello: bool,
    memory: Option<(GuestMemory, GpadlRegistry)>,
    channels: HashMap<u16, JoinHandle<()>>,
}

struct Connection {
    link: Link,
    device: Arc<dyn VmbusDevice>,
    stats: Arc<ServerStats>,
    state: Mutex<State>,
    next_gpadl: AtomicU32,
}

/// What a request handler answers: a reply kind and payload, or an error.
type Outcome = Result<(u16, Vec<u8>), Malformed>;

fn ok() -> Outcome {
    Ok((kind::OK, Vec::new()))
}

/// A device's refusal, with the bus error's variant and numbers so the
/// proxy can rebuild it.
fn device_error(e: BusError) -> Malformed {
    let bus = match &e {
        BusError::NoSuchChannel { index, count } => (bus_error::NO_SUCH_CHANNEL, *index, *count),
        BusError::AlreadyOpen(c) => (bus_error::ALREADY_OPEN, *c, 0),
        BusError::NotOpen(c) => (bus_error::NOT_OPEN, *c, 0),
        BusError::ChannelRunning(c) => (bus_error::CHANNEL_RUNNING, *c, 0),
        BusError::SubChannelsUnsupported { requested } => {
            (bus_error::SUB_CHANNELS_UNSUPPORTED, *requested, 0)
        }
        BusError::BadSavedState(_) => (bus_error::BAD_SAVED_STATE, 0, 0),
        _ => (bus_error::OTHER, 0, 0),
    };
    let text = match e {
        BusError::BadSavedState(text) => text.to_string(),
        e => e.to_string(),
    };
    Malformed {
        code: code::DEVICE,
        text,
        bus,
    }
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(self: &Arc<Self>) -> Result<(), RemoteError> {
        loop {
            let Some(datagram) = transport::recv(self.link.socket())? else {
                tracing::debug!("device server: the VMM closed the connection");
                return Ok(());
            };
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            match transport::check(datagram) {
                Err((id, error)) => self.refuse(id, &error),
                Ok(message) if is_reply(message.kind) => {
                    if !self.link.deliver(message) {
                        self.stats.count(0);
                    }
                }
                Ok(message) => {
                    let id = message.id;
                    match self.handle(message) {
                        Ok((reply, payload)) => {
                            if let Err(e) = self.link.send(reply, id, &payload, &[]) {
                                tracing::debug!(error = %e, "device server: cannot reply");
                            }
                        }
                        Err(error) => self.refuse(id, &error),
                    }
                }
            }
        }
    }

    fn refuse(&self, id: u32, error: &Malformed) {
        self.stats.count(error.code);
        tracing::debug!(code = error.code, text = %error.text, "device server: refused a message");
        self.link.send_error(id, error);
    }

    fn handle(self: &Arc<Self>, message: Message) -> Outcome {
        let wanted_fds = match message.kind {
            kind::SET_MEMORY => 1,
            kind::OPEN => 2,
            _ => 0,
        };
        if !matches!(
            message.kind,
            kind::HELLO
                | kind::GET_OFFER
                | kind::SET_MEMORY
                | kind::OPEN
                | kind::CLOSE
                | kind::SAVE
                | kind::RESTORE
        ) {
            return Err(Malformed::new(
                code::UNKNOWN_COMMAND,
                format!(
                    "message kind {} is not a request a device serves",
                    message.kind
                ),
            ));
        }
        transport::check_fd_count(&message, wanted_fds)?;
        if message.kind == kind::HELLO {
            return self.hello(&message.payload);
        }
        if !self.lock().hello {
            return Err(Malformed::new(
                code::BAD_SEQUENCE,
                format!("kind {} before hello", message.kind),
            ));
        }
        let mut fds = message.fds.into_iter();
        match message.kind {
            kind::GET_OFFER => Ok((kind::OFFER_REPLY, offer_payload(&*self.device))),
            kind::SET_MEMORY => self.set_memory(&message.payload, fds.next()),
            kind::OPEN => self.open(&message.payload, fds.next(), fds.next()),
            kind::CLOSE => {
                let (channel, _) = fixed::<ChannelRef>(&message.payload, "close")?;
                self.device
                    .close(channel.channel.get())
                    .map_err(device_error)?;
                ok()
            }
            kind::SAVE => {
                let saved = self.device.save().map_err(device_error)?;
                saved_reply(saved, "saved state")
            }
            _ => {
                self.device
                    .restore(&message.payload)
                    .map_err(device_error)?;
                ok()
            }
        }
    }

    fn hello(&self, payload: &[u8]) -> Outcome {
        let mut state = self.lock();
        let reply = hello_reply(payload, state.hello, "device")?;
        state.hello = true;
        Ok(reply)
    }

    fn set_memory(&self, payload: &[u8], fd: Option<OwnedFd>) -> Outcome {
        let mut state = self.lock();
        if !state.channels.is_empty() {
            return Err(Malformed::new(
                code::BAD_SEQUENCE,
                "guest memory cannot change while channels are open",
            ));
        }
        let memory = adopt_memory(payload, fd)?;
        state.memory = Some((memory, GpadlRegistry::new()));
        ok()
    }

    fn open(
        self: &Arc<Self>,
        payload: &[u8],
        host_bell: Option<OwnedFd>,
        guest_bell: Option<OwnedFd>,
    ) -> Outcome {
        let (header, rest) = fixed::<OpenHeader>(payload, "open")?;
        let channel = header.channel.get();
        let count = header.page_count.get() as usize;
        if count > MAX_RING_PAGES {
            return Err(Malformed::new(
                code::TOO_LARGE,
                format!("page_count {count} is above {MAX_RING_PAGES}"),
            ));
        }
        let pages: Vec<u64> =
            exact_array::<zerocopy::little_endian::U64>(rest, count, "open pages")?
                .iter()
                .map(|p| p.get())
                .collect();
        let (Some(host_bell), Some(guest_bell)) = (host_bell, guest_bell) else {
            return Err(Malformed::new(
                code::MISSING_FDS,
                "open without its two eventfds",
            ));
        };
        let bell = |fd: OwnedFd, which: &str| -> Result<Arc<dyn Doorbell>, Malformed> {
            EventfdDoorbell::from_fd(fd)
                .map(|d| Arc::new(d) as Arc<dyn Doorbell>)
                .map_err(|e| Malformed::new(code::BAD_FIELD, format!("{which} eventfd: {e}")))
        };
        let (local, remote) = (bell(host_bell, "host")?, bell(guest_bell, "guest")?);
        let mut state = self.lock();
        if state.channels.contains_key(&channel) {
            return Err(device_error(BusError::AlreadyOpen(channel)));
        }
        let Some((memory, gpadls)) = state.memory.clone() else {
            return Err(Malformed::new(code::NO_MEMORY, "open before set memory"));
        };
        let gpadl = self.next_gpadl.fetch_add(1, Ordering::Relaxed);
        gpadls
            .register(&memory, gpadl, pages)
            .map_err(|e| Malformed::new(code::BAD_GPADL, e.to_string()))?;
        let task = self.open_task(channel, &memory, &gpadls, gpadl, &header, local, remote);
        let task = match task {
            Ok(task) => task,
            Err(e) => {
                let _ = gpadls.try_teardown(gpadl);
                return Err(e);
            }
        };
        let weak = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name(format!("remote-channel-{channel}"))
            .spawn(move || {
                let result = vmbdev_ring::block_on(task);
                let _ = gpadls.try_teardown(gpadl);
                if let Some(connection) = weak.upgrade() {
                    // No longer open before the VMM hears of the end, so
                    // its next call finds the channel closed.
                    connection.lock().channels.remove(&channel);
                    connection.report_end(channel, result);
                }
            })
            .map_err(|e| Malformed::new(code::DEVICE, format!("cannot start a thread: {e}")))?;
        state.channels.insert(channel, thread);
        ok()
    }

    #[allow(clippy::too_many_arguments)]
    fn open_task(
        self: &Arc<Self>,
        channel: u16,
        memory: &GuestMemory,
        gpadls: &GpadlRegistry,
        gpadl: u32,
        header: &OpenHeader,
        local: Arc<dyn Doorbell>,
        remote: Arc<dyn Doorbell>,
    ) -> Result<ChannelTask, Malformed> {
        let mut request = OpenRequest::from_gpadl(
            memory.clone(),
            gpadls.clone(),
            gpadl,
            header.downstream_offset.get(),
            local,
            remote,
        )
        .map_err(|e| Malformed::new(code::BAD_GPADL, e.to_string()))?;
        request.sub_channels = Arc::new(RemoteSubChannels {
            connection: Arc::downgrade(self),
            channel,
        });
        self.device.open(channel, request).map_err(device_error)
    }

    fn report_end(&self, channel: u16, result: Result<(), vmbdev_device::bus::ChannelError>) {
        if let Err(error) = &result {
            tracing::debug!(channel, %error, "device server: channel task failed");
        }
        let text = result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let mut payload = ChannelEnded {
            channel: U16::new(channel),
            ok: U16::new(u16::from(result.is_ok())),
            reserved: U32::new(0),
        }
        .as_bytes()
        .to_vec();
        payload.extend_from_slice(capped_text(&text));
        if let Err(e) = self.link.send(kind::CHANNEL_ENDED, 0, &payload, &[]) {
            tracing::debug!(error = %e, "device server: cannot report a channel end");
        }
    }

    /// After the connection ends: closes every channel and waits for its
    /// task.
    fn shut_down(&self) {
        self.link.close();
        let channels = std::mem::take(&mut self.lock().channels);
        for (&channel, _) in channels.iter() {
            match self.device.close(channel) {
                Ok(()) | Err(BusError::NotOpen(_)) => {}
                Err(e) => tracing::debug!(channel, error = %e, "device server: close failed"),
            }
        }
        for (_, thread) in channels {
            let _ = thread.join();
        }
    }
}

/// Answers a hello: refused if one came before (`said_hello`) or if the
/// versions offered leave out [`PROTOCOL_VERSION`]; `side` names this side
/// in the refusal.
pub(crate) fn hello_reply(payload: &[u8], said_hello: bool, side: &str) -> Outcome {
    let (hello, _) = fixed::<HelloRequest>(payload, "hello")?;
    if said_hello {
        return Err(Malformed::new(code::BAD_SEQUENCE, "a second hello"));
    }
    let (min, max) = (hello.min_version.get(), hello.max_version.get());
    if !(min..=max).contains(&PROTOCOL_VERSION) {
        return Err(Malformed::new(
            code::BAD_VERSION,
            format!("versions {min}..={max} offered; this {side} speaks {PROTOCOL_VERSION}"),
        ));
    }
    let reply = HelloReply {
        version: U16::new(PROTOCOL_VERSION),
        reserved: U16::new(0),
        reserved2: U32::new(0),
    };
    Ok((kind::HELLO_REPLY, reply.as_bytes().to_vec()))
}

/// A [`kind::SAVED_REPLY`] of `saved`, refused above the message bound.
pub(crate) fn saved_reply(saved: Vec<u8>, what: &str) -> Outcome {
    if saved.len() > MAX_PAYLOAD_BYTES {
        return Err(Malformed::new(
            code::TOO_LARGE,
            format!(
                "{what} of {} bytes is above the {MAX_PAYLOAD_BYTES}-byte limit",
                saved.len()
            ),
        ));
    }
    Ok((kind::SAVED_REPLY, saved))
}

fn offer_payload(device: &dyn VmbusDevice) -> Vec<u8> {
    let offer = device.offer();
    let mut payload = OfferWire {
        interface_id: offer.interface_id,
        instance_id: offer.instance_id,
        pipe_mode: U32::new(match offer.pipe_mode {
            PipeMode::None => pipe_mode::NONE,
            PipeMode::Message => pipe_mode::MESSAGE,
            PipeMode::Byte => pipe_mode::BYTE,
        }),
        incoming_ring_pages: U32::new(offer.incoming_ring_pages),
        outgoing_ring_pages: U32::new(offer.outgoing_ring_pages),
        max_sub_channels: U16::new(offer.max_sub_channels),
        reserved: U16::new(0),
    }
    .as_bytes()
    .to_vec();
    payload.extend_from_slice(capped_text(&offer.name));
    payload
}

/// The device's sub-channel requests, forwarded to the VMM.
struct RemoteSubChannels {
    connection: Weak<Connection>,
    channel: u16,
}

impl SubChannelControl for RemoteSubChannels {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        let refused = BusError::SubChannelsUnsupported { requested: count };
        let Some(connection) = self.connection.upgrade() else {
            return Err(refused);
        };
        let request = SubChannelsRequest {
            channel: U16::new(self.channel),
            count: U16::new(count),
            reserved: U32::new(0),
        };
        match connection.link.request(
            "sub-channel creation",
            kind::SUB_CHANNELS,
            request.as_bytes(),
            &[],
        ) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, count, "device server: the VMM refused sub-channels");
                Err(refused)
            }
        }
    }
}

/// Listens at `path` and serves `device` to one VMM connection after
/// another (a restarted VMM reconnects), until accepting fails.
pub fn listen_and_serve(
    path: &std::path::Path,
    device: Arc<dyn VmbusDevice>,
) -> Result<(), RemoteError> {
    let listener = transport::listen(path)?;
    let server = Server::new(device);
    loop {
        let socket = transport::accept(listener.as_fd())?;
        if let Err(e) = server.serve(socket) {
            tracing::warn!(error = %e, "device server: connection failed");
        }
    }
}
