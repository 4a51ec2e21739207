//! The whole bus out of process: a bus backend runs the VMBus control
//! plane (the `vmbdev-vmbus` [`Server`] and a [`Synic`] over the guest
//! memory) with every device, and the VMM only forwards what its vCPUs do.
//!
//! What the VMM sends ([`RemoteBus`](crate::RemoteBus) is that side):
//! the guest memory (a memfd), where each vCPU's SIMP and SIEFP pages are
//! (when the guest writes those MSRs), one eventfd per (vCPU, SINT) that
//! raises the SINT (an irqfd under KVM), each HvPostMessage the guest
//! makes (connection id and bytes; the reply is the hypercall's status),
//! each EOM, and save and restore of the whole bus.
//!
//! What the backend sends: for each channel it opens, the eventfd that
//! HvSignalEvent on the channel's connection id must ring (the VMM
//! registers it with `KVM_HYPERV_EVENTFD` or rings it on the exit), and
//! the end of that route when the channel closes. A route is in place
//! before the guest learns that the channel is open: the backend waits
//! for the VMM's answer before it posts OPENCHANNEL_RESULT.
//!
//! Host messages go straight into the guest's SIMP slots in the shared
//! memory, and channel interrupts set the channel's flag in the SIEFP page
//! before they ring the SINT's eventfd, as Hyper-V does: the VMM sees
//! neither. Ring data never crosses the socket.
//!
//! Requests are handled in order on a thread of their own, so that the
//! socket's reader stays free to take the VMM's answers to the backend's
//! own requests; at most [`MAX_QUEUED_REQUESTS`] wait, and a request past
//! that is refused. Every message is checked as in the device server
//! ([`crate::server`]), and counted in the same [`ServerStats`].

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use vmbdev_device::bus::{ChannelTask, VmbusDevice};
use vmbdev_protocol::vmbus::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use vmbdev_ring::{Doorbell, EventDoorbell, EventfdDoorbell, GpadlRegistry, GuestMemory};
use vmbdev_ring::{StopSignal, doorbell::DoorbellWait};
use vmbdev_vmbus::{
    ChannelDoorbells, ChannelSignal, ConfigError, Dropped, EventFlagDoorbell, PostResult, Server,
    ServerConfig, Synic, TeardownWait, VmbusHost,
};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32};

use crate::error::RemoteError;
use crate::link::{Link, is_reply};
use crate::memory::adopt_memory;
use crate::server::{ServerStats, hello_reply, saved_reply};
use crate::transport::{self, Malformed, Message, fixed};
use crate::wire::{
    EventRoute, GuestMessage, HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_SUCCESS, PostReply,
    SintRoute, SynicPages, VpRef, code, kind, synic_enabled,
};

/// Most requests waiting for the request thread.
pub const MAX_QUEUED_REQUESTS: usize = 256;
/// How long the backend waits for the VMM to route a channel's event.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a save waits for the device tasks to stop.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A bus backend: the devices and the control plane's limits, serving
/// one VMM connection after another (each gets a fresh bus, or the one it
/// restores).
pub struct BusBackend {
    devices: Vec<Arc<dyn VmbusDevice>>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
}

impl std::fmt::Debug for BusBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusBackend")
            .field("devices", &self.devices.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BusBackend {
    /// A backend offering `devices` (relids from 1, in this order) under
    /// `config`; refused if `config` is out of bounds.
    pub fn new(
        devices: Vec<Arc<dyn VmbusDevice>>,
        config: ServerConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            devices,
            config,
            stats: Arc::new(ServerStats::default()),
        })
    }

    /// The counters (shared with running connections).
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Serves one VMM connection until it ends; then stops every device
    /// task.
    pub fn serve(&self, socket: OwnedFd) -> Result<(), RemoteError> {
        let (requests, queue) = std::sync::mpsc::sync_channel(MAX_QUEUED_REQUESTS);
        let connection = Arc::new(Connection {
            link: Link::new(socket, ROUTE_TIMEOUT),
            stats: self.stats.clone(),
            devices: self.devices.clone(),
            config: self.config.clone(),
            hello: AtomicBool::new(false),
            bus: Arc::new(Mutex::new(None)),
            requests,
            sub_channels_asked: Arc::new(AtomicBool::new(false)),
        });
        let worker = {
            let connection = connection.clone();
            std::thread::Builder::new()
                .name("remote-bus-requests".into())
                .spawn(move || connection.handle_requests(queue))
                .map_err(RemoteError::Thread)?
        };
        let result = connection.read_loop();
        connection.link.close();
        // Ends the request thread: the queue's last sender goes with the
        // connection's own, after the pending requests.
        let _ = connection.requests.try_send(Work::Stop);
        let _ = worker.join();
        connection.shut_down();
        result
    }
}

/// Serves `devices` behind the control plane on the connected socket
/// until the VMM closes it; returns the counters.
pub fn serve_bus(
    socket: OwnedFd,
    devices: Vec<Arc<dyn VmbusDevice>>,
    config: ServerConfig,
) -> Result<Arc<ServerStats>, RemoteError> {
    let backend = BusBackend::new(devices, config).map_err(|e| RemoteError::BadReply {
        what: "bus configuration",
        reason: e.to_string(),
    })?;
    backend.serve(socket)?;
    Ok(backend.stats())
}

/// Listens at `path` and serves `backend` to one VMM connection after
/// another, until accepting fails.
pub fn listen_and_serve_bus(
    path: &std::path::Path,
    backend: &BusBackend,
) -> Result<(), RemoteError> {
    let listener = transport::listen(path)?;
    loop {
        let socket = transport::accept(listener.as_fd())?;
        if let Err(e) = backend.serve(socket) {
            tracing::warn!(error = %e, "bus backend: connection failed");
        }
    }
}

enum Work {
    Request(Message),
    /// A device asked for sub-channels.
    OfferSubChannels,
    Stop,
}

/// The bus of one connection, from the VMM's memory on.
struct Bus {
    server: Server,
    host: BackendHost,
    memory: GuestMemory,
    registry: GpadlRegistry,
    executor_stop: async_channel::Sender<()>,
    executor_thread: Option<JoinHandle<()>>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.executor_stop.close();
        if let Some(thread) = self.executor_thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

type SharedBus = Arc<Mutex<Option<Bus>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A channel's host→guest doorbell on any vCPU it may be retargeted to:
/// one [`EventFlagDoorbell`] per vCPU, the current one chosen by an index,
/// so that ringing takes no lock.
struct ChannelInterrupt {
    targets: Vec<Option<EventFlagDoorbell>>,
    current: AtomicUsize,
    /// Stands in for a vCPU whose SIEFP page or SINT is not set up: the
    /// signal is lost, as on Hyper-V.
    nowhere: EventDoorbell,
}

impl ChannelInterrupt {
    fn target(&self) -> Option<&EventFlagDoorbell> {
        self.targets
            .get(self.current.load(Ordering::Acquire))
            .and_then(Option::as_ref)
    }
}

impl Doorbell for ChannelInterrupt {
    fn signal(&self) {
        if let Some(target) = self.target() {
            target.signal();
        }
    }

    fn listen(&self) -> DoorbellWait {
        match self.target() {
            Some(target) => target.listen(),
            None => self.nowhere.listen(),
        }
    }
}

struct OpenChannel {
    connection_id: u32,
    interrupt: Arc<ChannelInterrupt>,
}

/// The VMM's part of the control plane, played by the backend.
struct BackendHost {
    synic: Synic,
    link: Weak<Connection>,
    executor: Arc<async_executor::Executor<'static>>,
    bus: Weak<Mutex<Option<Bus>>>,
    channels: HashMap<u32, OpenChannel>,
    /// Raised when the task of a relid ends.
    exits: HashMap<u32, Arc<StopSignal>>,
    vp_count: u32,
}

impl BackendHost {
    fn interrupt(&self, signal: &ChannelSignal) -> ChannelInterrupt {
        let targets = (0..self.vp_count)
            .map(|vp| self.synic.event_doorbell(vp, signal.sint, signal.relid))
            .collect();
        ChannelInterrupt {
            targets,
            current: AtomicUsize::new(signal.target_vp as usize),
            nowhere: EventDoorbell::new(),
        }
    }

    /// Asks the VMM to route HvSignalEvent on the channel's connection id
    /// to `bell`; waits for its answer.
    fn route(&self, signal: &ChannelSignal, bell: &EventfdDoorbell) {
        let Some(connection) = self.link.upgrade() else {
            return;
        };
        let route = EventRoute {
            connection_id: U32::new(signal.connection_id),
            relid: U32::new(signal.relid),
        };
        let result = connection.link.request(
            "event route",
            kind::ROUTE_EVENT,
            route.as_bytes(),
            &[bell.as_fd()],
        );
        if let Err(error) = result {
            tracing::warn!(relid = signal.relid, %error, "bus backend: the VMM did not route a channel's events");
        }
    }
}

impl VmbusHost for BackendHost {
    fn post_message(&mut self, vp: u32, sint: u8, message: &[u8]) -> PostResult {
        self.synic.post_message(vp, sint, message)
    }

    fn open_doorbells(&mut self, signal: &ChannelSignal) -> ChannelDoorbells {
        let interrupt = Arc::new(self.interrupt(signal));
        let guest_to_host: Arc<dyn Doorbell> = match EventfdDoorbell::new() {
            Ok(bell) => {
                self.route(signal, &bell);
                Arc::new(bell)
            }
            Err(error) => {
                tracing::warn!(%error, "bus backend: no eventfd for a channel");
                Arc::new(EventDoorbell::new())
            }
        };
        self.channels.insert(
            signal.relid,
            OpenChannel {
                connection_id: signal.connection_id,
                interrupt: interrupt.clone(),
            },
        );
        ChannelDoorbells {
            guest_to_host,
            host_to_guest: interrupt,
        }
    }

    fn retarget(&mut self, signal: &ChannelSignal) {
        if let Some(channel) = self.channels.get(&signal.relid) {
            channel
                .interrupt
                .current
                .store(signal.target_vp as usize, Ordering::Release);
        }
    }

    fn close_doorbells(&mut self, relid: u32) {
        let Some(channel) = self.channels.remove(&relid) else {
            return;
        };
        let Some(connection) = self.link.upgrade() else {
            return;
        };
        let route = EventRoute {
            connection_id: U32::new(channel.connection_id),
            relid: U32::new(relid),
        };
        if let Err(error) = connection
            .link
            .send(kind::UNROUTE_EVENT, 0, route.as_bytes(), &[])
        {
            tracing::debug!(%error, "bus backend: cannot unroute");
        }
    }

    fn start_channel(&mut self, relid: u32, task: ChannelTask) {
        let ended = Arc::new(StopSignal::new());
        self.exits.insert(relid, ended.clone());
        self.executor
            .spawn(async move {
                if let Err(error) = task.await {
                    tracing::debug!(relid, %error, "bus backend: device task ended");
                }
                ended.stop();
            })
            .detach();
    }

    fn wait_teardown(&mut self, wait: TeardownWait) {
        let bus = self.bus.clone();
        self.executor
            .spawn(async move {
                let released = wait.await;
                let Some(bus) = bus.upgrade() else { return };
                let mut bus = lock(&bus);
                if let Some(Bus { server, host, .. }) = bus.as_mut() {
                    server.teardown_complete(released, host);
                }
            })
            .detach();
    }
}

/// One VMM connection.
struct Connection {
    link: Link,
    stats: Arc<ServerStats>,
    devices: Vec<Arc<dyn VmbusDevice>>,
    config: ServerConfig,
    hello: AtomicBool,
    bus: SharedBus,
    requests: SyncSender<Work>,
    sub_channels_asked: Arc<AtomicBool>,
}

type Outcome = Result<(u16, Vec<u8>), Malformed>;

fn ok() -> Outcome {
    Ok((kind::OK, Vec::new()))
}

impl Connection {
    /// Reads the socket: replies go to the backend's waiting requests,
    /// requests to the request thread.
    fn read_loop(&self) -> Result<(), RemoteError> {
        loop {
            let Some(datagram) = transport::recv(self.link.socket())? else {
                tracing::debug!("bus backend: the VMM closed the connection");
                return Ok(());
            };
            self.stats.count_message();
            match transport::check(datagram) {
                Err((id, error)) => self.refuse(id, &error),
                Ok(message) if is_reply(message.kind) => {
                    if !self.link.deliver(message) {
                        self.stats.count(0);
                    }
                }
                Ok(message) => {
                    let id = message.id;
                    match self.requests.try_send(Work::Request(message)) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => self.refuse(
                            id,
                            &Malformed::new(
                                code::TOO_LARGE,
                                format!("more than {MAX_QUEUED_REQUESTS} requests are waiting"),
                            ),
                        ),
                        Err(TrySendError::Disconnected(_)) => return Ok(()),
                    }
                }
            }
        }
    }

    fn refuse(&self, id: u32, error: &Malformed) {
        self.stats.count(error.code);
        tracing::debug!(code = error.code, text = %error.text, "bus backend: refused a message");
        self.link.send_error(id, error);
    }

    fn handle_requests(self: Arc<Self>, queue: Receiver<Work>) {
        while let Ok(work) = queue.recv() {
            match work {
                Work::Stop => return,
                Work::OfferSubChannels => {}
                Work::Request(message) => {
                    let id = message.id;
                    match self.handle(message) {
                        Ok((reply, payload)) => {
                            if let Err(e) = self.link.send(reply, id, &payload, &[]) {
                                tracing::debug!(error = %e, "bus backend: cannot reply");
                            }
                        }
                        Err(error) => self.refuse(id, &error),
                    }
                }
            }
            if self.sub_channels_asked.swap(false, Ordering::AcqRel) {
                self.with_bus(|bus| {
                    let Bus { server, host, .. } = bus;
                    server.offer_sub_channels(host);
                    ok()
                })
                .ok();
            }
        }
    }

    fn handle(self: &Arc<Self>, message: Message) -> Outcome {
        let wanted_fds = match message.kind {
            kind::SET_MEMORY | kind::SINT_ROUTE => 1,
            kind::HELLO
            | kind::SYNIC_PAGES
            | kind::GUEST_MESSAGE
            | kind::EOM
            | kind::SAVE
            | kind::RESTORE => 0,
            other => {
                return Err(Malformed::new(
                    code::UNKNOWN_COMMAND,
                    format!("message kind {other} is not a request a bus backend serves"),
                ));
            }
        };
        transport::check_fd_count(&message, wanted_fds)?;
        if message.kind == kind::HELLO {
            return self.hello(&message.payload);
        }
        if !self.hello.load(Ordering::Acquire) {
            return Err(Malformed::new(
                code::BAD_SEQUENCE,
                format!("kind {} before hello", message.kind),
            ));
        }
        let mut fds = message.fds.into_iter();
        match message.kind {
            kind::SET_MEMORY => self.set_memory(&message.payload, fds.next()),
            kind::SYNIC_PAGES => self.synic_pages(&message.payload),
            kind::SINT_ROUTE => self.sint_route(&message.payload, fds.next()),
            kind::GUEST_MESSAGE => self.guest_message(&message.payload),
            kind::EOM => {
                fixed::<VpRef>(&message.payload, "eom")?;
                self.with_bus(|bus| {
                    let Bus { server, host, .. } = bus;
                    server.slot_freed(host);
                    ok()
                })
            }
            kind::SAVE => self.save(),
            _ => self.restore(&message.payload),
        }
    }

    fn hello(&self, payload: &[u8]) -> Outcome {
        let reply = hello_reply(payload, self.hello.load(Ordering::Acquire), "backend")?;
        self.hello.store(true, Ordering::Release);
        Ok(reply)
    }

    /// Runs `f` on the bus, refused before the VMM set the memory.
    fn with_bus(&self, f: impl FnOnce(&mut Bus) -> Outcome) -> Outcome {
        let mut bus = lock(&self.bus);
        match bus.as_mut() {
            Some(bus) => f(bus),
            None => Err(Malformed::new(code::NO_MEMORY, "no guest memory set yet")),
        }
    }

    fn set_memory(self: &Arc<Self>, payload: &[u8], fd: Option<OwnedFd>) -> Outcome {
        if lock(&self.bus).is_some() {
            return Err(Malformed::new(
                code::BAD_SEQUENCE,
                "the bus already has its guest memory",
            ));
        }
        let memory = adopt_memory(payload, fd)?;
        let registry = GpadlRegistry::new();
        let mut server = Server::new(memory.clone(), registry.clone(), self.config.clone())
            .map_err(|e| Malformed::new(code::BAD_FIELD, e.to_string()))?;
        self.watch_sub_channel_requests(&mut server);
        let bus = self.new_bus(server, memory, registry)?;
        let mut slot = lock(&self.bus);
        let bus = slot.insert(bus);
        let Bus { server, host, .. } = bus;
        for device in &self.devices {
            server
                .add_device(device.clone(), host)
                .map_err(|e| Malformed::new(code::DEVICE, e.to_string()))?;
        }
        ok()
    }

    fn watch_sub_channel_requests(&self, server: &mut Server) {
        let asked = self.sub_channels_asked.clone();
        let requests = self.requests.clone();
        // Called from a device task: nothing is locked here, the request
        // thread offers them.
        server.on_sub_channel_request(move || {
            asked.store(true, Ordering::Release);
            let _ = requests.try_send(Work::OfferSubChannels);
        });
    }

    fn new_bus(
        self: &Arc<Self>,
        server: Server,
        memory: GuestMemory,
        registry: GpadlRegistry,
    ) -> Result<Bus, Malformed> {
        let executor = Arc::new(async_executor::Executor::new());
        let (executor_stop, stopped) = async_channel::bounded::<()>(1);
        let thread = {
            let executor = executor.clone();
            std::thread::Builder::new()
                .name("remote-bus-devices".into())
                .spawn(move || {
                    let _ = vmbdev_ring::block_on(executor.run(stopped.recv()));
                })
                .map_err(|e| Malformed::new(code::DEVICE, format!("cannot start a thread: {e}")))?
        };
        Ok(Bus {
            server,
            host: BackendHost {
                synic: Synic::new(memory.clone(), self.config.vp_count),
                link: Arc::downgrade(self),
                executor,
                bus: Arc::downgrade(&self.bus),
                channels: HashMap::new(),
                exits: HashMap::new(),
                vp_count: self.config.vp_count,
            },
            memory,
            registry,
            executor_stop,
            executor_thread: Some(thread),
        })
    }

    fn synic_pages(&self, payload: &[u8]) -> Outcome {
        let (pages, _) = fixed::<SynicPages>(payload, "synic pages")?;
        let enabled = pages.enabled.get();
        if enabled & !(synic_enabled::SIMP | synic_enabled::SIEFP) != 0 {
            return Err(Malformed::new(
                code::BAD_FIELD,
                format!("synic pages: enabled bits {enabled:#x}"),
            ));
        }
        let vp = pages.vp.get();
        let simp = (enabled & synic_enabled::SIMP != 0).then(|| pages.simp.get());
        let siefp = (enabled & synic_enabled::SIEFP != 0).then(|| pages.siefp.get());
        self.with_bus(|bus| {
            let refused = |e: vmbdev_vmbus::SynicError| {
                Malformed::new(code::BAD_FIELD, format!("synic pages of vCPU {vp}: {e}"))
            };
            bus.host.synic.set_simp(vp, simp).map_err(refused)?;
            bus.host.synic.set_siefp(vp, siefp).map_err(refused)?;
            ok()
        })
    }

    fn sint_route(&self, payload: &[u8], fd: Option<OwnedFd>) -> Outcome {
        let (route, _) = fixed::<SintRoute>(payload, "sint route")?;
        let fd =
            fd.ok_or_else(|| Malformed::new(code::MISSING_FDS, "sint route without its fd"))?;
        let bell = EventfdDoorbell::from_fd(fd)
            .map_err(|e| Malformed::new(code::BAD_FIELD, format!("sint eventfd: {e}")))?;
        let (vp, sint) = (route.vp.get(), route.sint);
        self.with_bus(|bus| {
            bus.host
                .synic
                .connect_interrupt(vp, sint, Arc::new(bell))
                .map_err(|e| {
                    Malformed::new(code::BAD_FIELD, format!("sint {sint} of vCPU {vp}: {e}"))
                })?;
            ok()
        })
    }

    fn guest_message(&self, payload: &[u8]) -> Outcome {
        let (header, bytes) = fixed::<GuestMessage>(payload, "guest message")?;
        let connection_id = header.connection_id.get();
        self.with_bus(|bus| {
            let Bus { server, host, .. } = bus;
            // Every other drop is the bus's to count; the guest's hypercall
            // only fails for a connection id nobody listens on: neither of
            // the two message connection ids, or not the one agreed.
            let posted = server.post_message(connection_id, bytes, host);
            let listened = matches!(
                connection_id,
                MESSAGE_CONNECTION_ID | MESSAGE_CONNECTION_ID_4
            );
            let status = match posted {
                Err(Dropped::WrongConnection) => HV_STATUS_INVALID_CONNECTION_ID,
                _ if !listened => HV_STATUS_INVALID_CONNECTION_ID,
                _ => HV_STATUS_SUCCESS,
            };
            let reply = PostReply {
                status: U16::new(status),
                reserved: U16::new(0),
                reserved2: U32::new(0),
            };
            Ok((kind::POST_REPLY, reply.as_bytes().to_vec()))
        })
    }

    /// Stops the device tasks, saves the bus, starts them again.
    fn save(&self) -> Outcome {
        let exits: Vec<Arc<StopSignal>> = {
            let mut bus = lock(&self.bus);
            let Some(bus) = bus.as_mut() else {
                return Err(Malformed::new(code::NO_MEMORY, "no guest memory set yet"));
            };
            bus.server.suspend();
            bus.host.exits.values().cloned().collect()
        };
        // Waited for unlocked: a teardown finishing meanwhile needs the bus.
        for ended in exits {
            let stopped = vmbdev_ring::block_on(futures_lite::future::or(
                async {
                    ended.wait().await;
                    true
                },
                async {
                    async_io::Timer::after(SUSPEND_TIMEOUT).await;
                    false
                },
            ));
            if !stopped {
                return Err(Malformed::new(
                    code::DEVICE,
                    "a device task did not stop for the save",
                ));
            }
        }
        self.with_bus(|bus| {
            let Bus { server, host, .. } = bus;
            host.exits.clear();
            let saved = server.save();
            let resumed = server.resume(host);
            let saved = saved.map_err(|e| Malformed::new(code::DEVICE, e.to_string()))?;
            resumed.map_err(|e| Malformed::new(code::DEVICE, e.to_string()))?;
            saved_reply(saved, "saved bus")
        })
    }

    /// Replaces a bus the guest has not connected to with the saved one
    /// and starts its open channels.
    fn restore(&self, saved: &[u8]) -> Outcome {
        self.with_bus(|bus| {
            if bus.server.version().is_some() {
                return Err(Malformed::new(
                    code::BAD_SEQUENCE,
                    "restore into a bus the guest is connected to",
                ));
            }
            let mut server = Server::restore(
                bus.memory.clone(),
                bus.registry.clone(),
                self.config.clone(),
                self.devices.clone(),
                saved,
            )
            .map_err(|e| Malformed::new(code::DEVICE, e.to_string()))?;
            self.watch_sub_channel_requests(&mut server);
            bus.server = server;
            let Bus { server, host, .. } = bus;
            server
                .resume(host)
                .map_err(|e| Malformed::new(code::DEVICE, e.to_string()))?;
            ok()
        })
    }

    /// After the connection ends: stops every device task and waits (up
    /// to a bound) for them.
    fn shut_down(&self) {
        let exits: Vec<Arc<StopSignal>> = {
            let mut bus = lock(&self.bus);
            let Some(bus) = bus.as_mut() else { return };
            bus.server.suspend();
            bus.host.exits.values().cloned().collect()
        };
        for ended in exits {
            vmbdev_ring::block_on(futures_lite::future::or(ended.wait(), async {
                async_io::Timer::after(SUSPEND_TIMEOUT).await;
            }));
        }
        lock(&self.bus).take();
    }
}
