//! The VMM side: [`RemoteDevice`] implements [`VmbusDevice`] by forwarding
//! every call to a device server, so a VMM (or the loopback VM) uses a
//! device in another process exactly like a local one.
//!
//! `open` passes the memfd (once per memory), the ring's page list and
//! downstream offset, and two eventfds. When the endpoint's doorbells are
//! eventfds they are passed as they are and the data path never touches
//! this process; other doorbells (the loopback VM's in-process events) are
//! relayed through a pair of new eventfds by a thread per channel.
//!
//! The returned channel task ends when the server reports the channel's
//! end, or with [`RemoteError::ConnectionLost`] (inside
//! [`ChannelError::Protocol`]) as soon as the connection ends: the reader
//! thread sees the socket's end the moment the server process dies.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vmbdev_device::bus::{
    BusError, ChannelError, ChannelTask, Offer, OpenRequest, PipeMode, SavedStateError,
    SubChannelControl, VmbusDevice,
};
use vmbdev_ring::doorbell::DoorbellWait;
use vmbdev_ring::{Doorbell, EventfdDoorbell, GuestMemory, StopSignal};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use crate::error::RemoteError;
use crate::link::Link;
use crate::memory::set_memory_message;
use crate::transport::{self, Malformed, Message, fixed};
use crate::wire::{
    ChannelEnded, ChannelRef, HelloReply, HelloRequest, MAX_PAYLOAD_BYTES, MAX_RING_PAGES,
    OfferWire, OpenHeader, PROTOCOL_VERSION, SubChannelsRequest, bus_error, code, kind, pipe_mode,
};

/// How long a control request waits for its reply by default (a guard
/// against a server that is alive but stuck; a dead one is noticed at
/// once).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a channel of the remote device ended, as the server reported it.
type EndReport = Result<(), String>;

struct ChannelSlot {
    ended: async_channel::Sender<EndReport>,
    sub_channels: Arc<dyn SubChannelControl>,
    /// Stops the doorbell relay thread, if there is one.
    relay: Option<Arc<StopSignal>>,
}

#[derive(Default)]
struct ProxyState {
    /// `(device, inode)` of the memfd the server has.
    memory_sent: Option<(u64, u64)>,
    channels: HashMap<u16, ChannelSlot>,
}

struct Shared {
    link: Link,
    state: Mutex<ProxyState>,
    bad_messages: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A device served by another process, as a [`VmbusDevice`].
pub struct RemoteDevice {
    shared: Arc<Shared>,
    offer: Offer,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RemoteDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDevice")
            .field("offer", &self.offer)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RemoteDevice {
    /// Connects to the device server listening at `path`.
    pub fn connect_path(path: &Path) -> Result<Self, RemoteError> {
        Self::connect(transport::connect(path)?)
    }

    /// Speaks to a device server over the connected control socket
    /// `socket`: hello, then the offer.
    pub fn connect(socket: OwnedFd) -> Result<Self, RemoteError> {
        Self::connect_with_timeout(socket, DEFAULT_REQUEST_TIMEOUT)
    }

    /// [`connect`](Self::connect) with another request timeout.
    pub fn connect_with_timeout(socket: OwnedFd, timeout: Duration) -> Result<Self, RemoteError> {
        let shared = Arc::new(Shared {
            link: Link::new(socket, timeout),
            state: Mutex::new(ProxyState::default()),
            bad_messages: AtomicU64::new(0),
        });
        let reading = shared.clone();
        let reader = std::thread::Builder::new()
            .name("remote-proxy-reader".into())
            .spawn(move || read_loop(&reading))
            .map_err(RemoteError::Thread)?;
        let mut device = Self {
            shared,
            offer: placeholder_offer(),
            reader: Mutex::new(Some(reader)),
        };
        device.hello()?;
        device.offer = device.fetch_offer()?;
        Ok(device)
    }

    /// Whether the connection to the server is still up.
    pub fn is_connected(&self) -> bool {
        !self.shared.link.is_closed()
    }

    /// Messages from the server that were refused as malformed.
    pub fn bad_messages(&self) -> u64 {
        self.shared.bad_messages.load(Ordering::Relaxed)
    }

    fn hello(&self) -> Result<(), RemoteError> {
        hello(&self.shared.link)
    }

    fn fetch_offer(&self) -> Result<Offer, RemoteError> {
        let reply = self
            .shared
            .link
            .request("get offer", kind::GET_OFFER, &[], &[])?;
        if reply.kind != kind::OFFER_REPLY {
            return Err(bad_reply("get offer", format!("reply kind {}", reply.kind)));
        }
        let (wire, name) = fixed::<OfferWire>(&reply.payload, "offer reply")
            .map_err(|e| bad_reply("get offer", e.text))?;
        let pipe_mode = match wire.pipe_mode.get() {
            pipe_mode::NONE => PipeMode::None,
            pipe_mode::MESSAGE => PipeMode::Message,
            pipe_mode::BYTE => PipeMode::Byte,
            other => return Err(bad_reply("get offer", format!("pipe mode {other}"))),
        };
        Ok(Offer {
            interface_id: wire.interface_id,
            instance_id: wire.instance_id,
            pipe_mode,
            incoming_ring_pages: wire.incoming_ring_pages.get(),
            outgoing_ring_pages: wire.outgoing_ring_pages.get(),
            max_sub_channels: wire.max_sub_channels.get(),
            name: String::from_utf8_lossy(name).into_owned(),
        })
    }

    /// Hands the server `memory` unless it has that memfd already.
    fn send_memory(&self, memory: &GuestMemory) -> Result<(), RemoteError> {
        let (payload, fd, identity) = set_memory_message(memory)?;
        if self.shared.lock().memory_sent == Some(identity) {
            return Ok(());
        }
        self.shared
            .link
            .request("set memory", kind::SET_MEMORY, &payload, &[fd])?;
        self.shared.lock().memory_sent = Some(identity);
        Ok(())
    }

    fn open_remote(&self, index: u16, request: OpenRequest) -> Result<ChannelTask, RemoteError> {
        self.send_memory(&request.memory)?;
        let incoming = request.endpoint.reader.half().page_numbers();
        let outgoing = request.endpoint.writer.half().page_numbers();
        let downstream_offset = incoming.len() as u32;
        let pages: Vec<u64> = incoming.into_iter().chain(outgoing).collect();
        if pages.len() > MAX_RING_PAGES {
            return Err(RemoteError::TooLarge {
                what: "ring pages",
                len: pages.len(),
                max: MAX_RING_PAGES,
            });
        }
        let (local, remote) = request.endpoint.reader.doorbells();
        let bells = DoorbellFds::new(local, remote)?;
        let mut payload = OpenHeader {
            channel: U16::new(index),
            reserved: U16::new(0),
            downstream_offset: U32::new(downstream_offset),
            page_count: U32::new(pages.len() as u32),
            reserved2: U32::new(0),
        }
        .as_bytes()
        .to_vec();
        for page in &pages {
            payload.extend_from_slice(U64::new(*page).as_bytes());
        }
        let (ended, end_report) = async_channel::bounded(1);
        {
            let mut state = self.shared.lock();
            if state.channels.contains_key(&index) {
                return Err(RemoteError::Refused {
                    what: "open",
                    code: code::DEVICE,
                    text: BusError::AlreadyOpen(index).to_string(),
                    bus: (bus_error::ALREADY_OPEN, index, 0),
                });
            }
            state.channels.insert(
                index,
                ChannelSlot {
                    ended,
                    sub_channels: request.sub_channels.clone(),
                    relay: bells.relay.clone(),
                },
            );
        }
        let sent = self.shared.link.request(
            "open",
            kind::OPEN,
            &payload,
            &[bells.host.as_fd(), bells.guest.as_fd()],
        );
        if let Err(e) = sent {
            if let Some(slot) = self.shared.lock().channels.remove(&index) {
                stop_relay(&slot);
            }
            return Err(e);
        }
        bells.start_relay()?;
        Ok(Box::pin(async move {
            match end_report.recv().await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(text)) => Err(ChannelError::Protocol {
                    channel: index,
                    source: Box::new(RemoteError::ChannelFailed {
                        channel: index,
                        text,
                    }),
                }),
                Err(_) => Err(ChannelError::Protocol {
                    channel: index,
                    source: Box::new(RemoteError::ConnectionLost),
                }),
            }
        }))
    }
}

impl Drop for RemoteDevice {
    fn drop(&mut self) {
        self.shared.link.close();
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reader) = reader {
            let _ = reader.join();
        }
    }
}

fn placeholder_offer() -> Offer {
    Offer {
        interface_id: vmbdev_device::bus::Guid::from_u128(0),
        instance_id: vmbdev_device::bus::Guid::from_u128(0),
        pipe_mode: PipeMode::None,
        incoming_ring_pages: 0,
        outgoing_ring_pages: 0,
        max_sub_channels: 0,
        name: String::new(),
    }
}

fn bad_reply(what: &'static str, reason: impl Into<String>) -> RemoteError {
    RemoteError::BadReply {
        what,
        reason: reason.into(),
    }
}

/// The bus error a local device would have returned: a device refusal is
/// rebuilt from its fields; a transport failure reads, for open and close,
/// as a device that serves no channel, and for save and restore as
/// refused state.
fn to_bus_error(error: RemoteError, index: u16, state_call: bool) -> BusError {
    if let RemoteError::Refused { bus, text, .. } = &error {
        let (variant, arg, arg2) = *bus;
        let rebuilt = match variant {
            bus_error::NO_SUCH_CHANNEL => Some(BusError::NoSuchChannel {
                index: arg,
                count: arg2,
            }),
            bus_error::ALREADY_OPEN => Some(BusError::AlreadyOpen(arg)),
            bus_error::NOT_OPEN => Some(BusError::NotOpen(arg)),
            bus_error::CHANNEL_RUNNING => Some(BusError::ChannelRunning(arg)),
            bus_error::SUB_CHANNELS_UNSUPPORTED => {
                Some(BusError::SubChannelsUnsupported { requested: arg })
            }
            bus_error::BAD_SAVED_STATE => Some(BusError::BadSavedState(SavedStateError::Other(
                text.clone().into(),
            ))),
            _ => None,
        };
        if let Some(rebuilt) = rebuilt {
            return rebuilt;
        }
    }
    tracing::warn!(error = %error, channel = index, "remote device call failed");
    if state_call {
        BusError::BadSavedState(SavedStateError::Other(error.to_string().into()))
    } else {
        BusError::NoSuchChannel { index, count: 0 }
    }
}

impl VmbusDevice for RemoteDevice {
    fn offer(&self) -> Offer {
        self.offer.clone()
    }

    fn open(&self, channel_index: u16, request: OpenRequest) -> Result<ChannelTask, BusError> {
        self.open_remote(channel_index, request)
            .map_err(|e| to_bus_error(e, channel_index, false))
    }

    fn close(&self, channel_index: u16) -> Result<(), BusError> {
        let payload = ChannelRef {
            channel: U16::new(channel_index),
            reserved: U16::new(0),
            reserved2: U32::new(0),
        };
        self.shared
            .link
            .request("close", kind::CLOSE, payload.as_bytes(), &[])
            .map(|_| ())
            .map_err(|e| to_bus_error(e, channel_index, false))
    }

    fn save(&self) -> Result<Vec<u8>, BusError> {
        let reply = self
            .shared
            .link
            .request("save", kind::SAVE, &[], &[])
            .map_err(|e| to_bus_error(e, 0, true))?;
        if reply.kind != kind::SAVED_REPLY {
            return Err(BusError::BadSavedState(SavedStateError::Other(
                format!("save answered with kind {}", reply.kind).into(),
            )));
        }
        Ok(reply.payload)
    }

    fn restore(&self, saved: &[u8]) -> Result<(), BusError> {
        if saved.len() > MAX_PAYLOAD_BYTES {
            return Err(BusError::BadSavedState(SavedStateError::Other(
                format!(
                    "{} bytes are above the {MAX_PAYLOAD_BYTES}-byte message limit",
                    saved.len()
                )
                .into(),
            )));
        }
        self.shared
            .link
            .request("restore", kind::RESTORE, saved, &[])
            .map(|_| ())
            .map_err(|e| to_bus_error(e, 0, true))
    }
}

/// The two eventfds handed to the server for a channel, and the relay
/// that connects them to non-eventfd doorbells.
struct DoorbellFds {
    /// Rung (by the guest or the relay) for the device.
    host: OwnedFd,
    /// Rung by the device for the guest.
    guest: OwnedFd,
    relay: Option<Arc<StopSignal>>,
    pending_relay: Option<Relay>,
}

struct Relay {
    /// The guest rings this for the device...
    local: Arc<dyn Doorbell>,
    /// ...and the relay forwards it here.
    to_device: EventfdDoorbell,
    /// The device rings this...
    from_device: EventfdDoorbell,
    /// ...and the relay forwards it to the guest here.
    remote: Arc<dyn Doorbell>,
    stop: Arc<StopSignal>,
    /// Listeners registered before the open returns, so a signal the
    /// guest sends before the relay thread runs is not lost.
    first_waits: (DoorbellWait, DoorbellWait),
}

impl DoorbellFds {
    fn new(local: Arc<dyn Doorbell>, remote: Arc<dyn Doorbell>) -> Result<Self, RemoteError> {
        if let (Some(host), Some(guest)) = (local.eventfd(), remote.eventfd()) {
            return Ok(Self {
                host: dup(host)?,
                guest: dup(guest)?,
                relay: None,
                pending_relay: None,
            });
        }
        let to_device = EventfdDoorbell::new().map_err(RemoteError::Doorbell)?;
        let from_device = EventfdDoorbell::new().map_err(RemoteError::Doorbell)?;
        let stop = Arc::new(StopSignal::new());
        let first_waits = (local.listen(), from_device.listen());
        Ok(Self {
            host: to_device.try_clone_fd().map_err(RemoteError::Doorbell)?,
            guest: from_device.try_clone_fd().map_err(RemoteError::Doorbell)?,
            relay: Some(stop.clone()),
            pending_relay: Some(Relay {
                local,
                to_device,
                from_device,
                remote,
                stop,
                first_waits,
            }),
        })
    }

    fn start_relay(self) -> Result<(), RemoteError> {
        let Some(relay) = self.pending_relay else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name("remote-doorbell-relay".into())
            .spawn(move || relay.run())
            .map(|_| ())
            .map_err(RemoteError::Thread)
    }
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, RemoteError> {
    fd.try_clone_to_owned().map_err(RemoteError::Doorbell)
}

impl Relay {
    fn run(self) {
        let (first_to_device, first_to_guest) = self.first_waits;
        let to_device = forward(&*self.local, &self.to_device, first_to_device);
        let to_guest = forward(&self.from_device, &*self.remote, first_to_guest);
        futures_lite::future::block_on(
            self.stop
                .race(futures_lite::future::zip(to_device, to_guest)),
        );
    }
}

/// Forwards every signal of `from` to `to`. Two listeners are always
/// registered, so a signal arriving while one is being replaced is still
/// caught (at worst forwarded twice, which the doorbell contract allows).
async fn forward(from: &dyn Doorbell, to: &dyn Doorbell, first: DoorbellWait) {
    let mut next = first;
    loop {
        let current = next;
        next = from.listen();
        current.await;
        to.signal();
    }
}

fn stop_relay(slot: &ChannelSlot) {
    if let Some(stop) = &slot.relay {
        stop.stop();
    }
}

/// The proxy's reader thread: replies to their waiters, channel ends to
/// their tasks, sub-channel requests to the VMM. At the end of the
/// connection every waiter and every channel task is released.
/// Hello on `link`: both sides must speak [`PROTOCOL_VERSION`].
pub(crate) fn hello(link: &Link) -> Result<(), RemoteError> {
    let hello = HelloRequest {
        min_version: U16::new(PROTOCOL_VERSION),
        max_version: U16::new(PROTOCOL_VERSION),
        reserved: U32::new(0),
    };
    let reply = link.request("hello", kind::HELLO, hello.as_bytes(), &[])?;
    let (answer, _) = fixed::<HelloReply>(&reply.payload, "hello reply")
        .map_err(|e| bad_reply("hello", e.text))?;
    if reply.kind != kind::HELLO_REPLY || answer.version.get() != PROTOCOL_VERSION {
        return Err(bad_reply(
            "hello",
            format!(
                "kind {} version {} instead of version {PROTOCOL_VERSION}",
                reply.kind,
                answer.version.get()
            ),
        ));
    }
    Ok(())
}

fn read_loop(shared: &Shared) {
    shared
        .link
        .read_messages("remote device", &shared.bad_messages, |message| {
            if let Err(error) = handle_device_message(shared, &message) {
                shared.bad_messages.fetch_add(1, Ordering::Relaxed);
                if message.kind != kind::CHANNEL_ENDED {
                    shared.link.send_error(message.id, &error);
                }
            }
        });
    shared.link.close();
    let channels = std::mem::take(&mut shared.lock().channels);
    for slot in channels.values() {
        stop_relay(slot);
        slot.ended.close();
    }
}

fn handle_device_message(shared: &Shared, message: &Message) -> Result<(), Malformed> {
    if !message.fds.is_empty() {
        return Err(Malformed::new(
            code::UNEXPECTED_FDS,
            "the device sends no fds",
        ));
    }
    match message.kind {
        kind::CHANNEL_ENDED => {
            let (end, text) = fixed::<ChannelEnded>(&message.payload, "channel ended")?;
            let channel = end.channel.get();
            let report = if end.ok.get() == 1 {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(text).into_owned())
            };
            let slot = shared.lock().channels.remove(&channel);
            match slot {
                Some(slot) => {
                    stop_relay(&slot);
                    let _ = slot.ended.try_send(report);
                    Ok(())
                }
                None => Err(Malformed::new(
                    code::BAD_FIELD,
                    format!("end of channel {channel}, which is not open"),
                )),
            }
        }
        kind::SUB_CHANNELS => {
            let (request, _) = fixed::<SubChannelsRequest>(&message.payload, "sub-channels")?;
            let control = shared
                .lock()
                .channels
                .get(&request.channel.get())
                .map(|slot| slot.sub_channels.clone());
            let Some(control) = control else {
                return Err(Malformed::new(
                    code::BAD_FIELD,
                    format!(
                        "sub-channels asked by channel {}, which is not open",
                        request.channel.get()
                    ),
                ));
            };
            control
                .enable_sub_channels(request.count.get())
                .map_err(|e| Malformed::new(code::DEVICE, e.to_string()))?;
            if let Err(e) = shared.link.send(kind::OK, message.id, &[], &[]) {
                tracing::debug!(error = %e, "remote device: cannot answer sub-channels");
            }
            Ok(())
        }
        other => Err(Malformed::new(
            code::UNKNOWN_COMMAND,
            format!("message kind {other} is not one a device sends"),
        )),
    }
}
