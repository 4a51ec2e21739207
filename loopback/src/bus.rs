//! A loopback VM with a real control plane: [`BusVm`] hosts devices behind
//! the `vmbdev-vmbus` [`Server`] and its software [`Synic`], and the guest
//! finds and opens them with the Linux-like [`VmbusClient`] of
//! `vmbdev-guest`, as a guest kernel would: contact, offers, ring GPADLs,
//! OPENCHANNEL, and at the end CLOSECHANNEL, GPADL_TEARDOWN and UNLOAD.
//!
//! The opened channels are handed to the existing guest drivers: the
//! storvsc driver through a [`ChannelOpener`] (its sub-channels are offered
//! by the server once the device asks and opened the same way), the vmbfs
//! client through a [`VmbfsBus`]. The VMM's part ([`VmbusHost`]) runs device
//! tasks and teardown waits on the VM's executor and gives each channel a
//! pair of event doorbells, which the guest endpoint uses directly; the
//! control messages go through the SIMP slot of vCPU 0, SINT 2, and the
//! SynIC's SINT interrupt wakes the client. With tracing on, every control
//! message both ways is recorded ([`BusVm::trace`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use vmbdev_device::bus::{ChannelError, ChannelTask, VmbusDevice};
use vmbdev_guest::storvsc::ChannelOpener;
use vmbdev_guest::vmbfs::{BusFailure, VmbfsBus, VmbfsChannel};
use vmbdev_guest::vmbus::{
    ClientConfig, OfferedChannel, TraceEntry, TransportError, VmbusClient, VmbusError,
    VmbusTransport,
};
use vmbdev_protocol::vmbfs::Guid;
use vmbdev_protocol::vmbus::{VMBUS_SINT, Version};
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, GpadlRegistry, GuestMemory, LoopbackError, MemoryError,
    PAGE_SIZE, PageAllocator, RingError, Side, StopSignal,
};
use vmbdev_vmbus::server::AddDeviceError;
use vmbdev_vmbus::{
    ChannelDoorbells, ChannelSignal, ConfigError, Dropped, PostResult, Server, ServerConfig, Synic,
    SynicError, SynicHost, TeardownWait, VmbusHost,
};

/// The SIMP page of vCPU 0.
const SIMP_PAGE: u64 = 0;
/// The SIEFP page of vCPU 0.
const SIEFP_PAGE: u64 = 1;
/// Pages below this hold the SynIC pages; guest allocations start here.
const FIRST_FREE_PAGE: u64 = 2;

/// An error of the bus VM.
#[derive(Debug, thiserror::Error)]
pub enum BusVmError {
    /// Guest memory could not be created or written.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// Guest pages ran out.
    #[error("guest pages: {0}")]
    Pages(#[from] LoopbackError),
    /// The SynIC refused its pages.
    #[error("SynIC: {0}")]
    Synic(#[from] SynicError),
    /// The server has no relid left.
    #[error("adding a device: {0}")]
    AddDevice(#[from] AddDeviceError),
    /// The server's configuration is out of bounds.
    #[error("VMBus server configuration: {0}")]
    Config(#[from] ConfigError),
    /// The guest's VMBus client failed.
    #[error("vmbus: {0}")]
    Vmbus(#[from] VmbusError),
    /// The guest's ring endpoint could not be opened.
    #[error("ring of relid {relid}: {source}")]
    Ring {
        /// The channel.
        relid: u32,
        /// What the ring said.
        source: RingError,
    },
    /// The server opened the channel without asking for its doorbells.
    #[error("relid {0} was opened without doorbells")]
    NoDoorbells(u32),
    /// No offered device has this relid.
    #[error("no device is offered as relid {0}")]
    NoDevice(u32),
    /// An executor thread could not be started.
    #[error("cannot start an executor thread: {0}")]
    Thread(String),
}

/// Shape of the bus VM.
#[derive(Debug, Clone)]
pub struct BusVmConfig {
    /// Guest memory in pages (two of them hold the SynIC pages).
    pub memory_pages: u64,
    /// Executor threads running device tasks and teardown waits (at least
    /// one is started).
    pub executor_threads: usize,
    /// Data pages of each ring half; `None` takes what the device's offer
    /// asks for.
    pub ring_pages: Option<u32>,
    /// Record the control-plane messages.
    pub trace: bool,
    /// The server's limits.
    pub server: ServerConfig,
}

impl Default for BusVmConfig {
    fn default() -> Self {
        Self {
            // 32 MiB: rings plus a 7 MiB RDMA buffer with room to spare.
            memory_pages: 8192,
            executor_threads: 1,
            ring_pages: None,
            trace: false,
            server: ServerConfig::default(),
        }
    }
}

/// How a device task ended, published for the guest side.
#[derive(Default)]
struct Exit {
    result: Mutex<Option<Result<(), ChannelError>>>,
    ended: Arc<StopSignal>,
}

impl Exit {
    fn publish(&self, result: Result<(), ChannelError>) {
        *lock(&self.result) = Some(result);
        self.ended.stop();
    }

    fn take(&self) -> Result<(), ChannelError> {
        lock(&self.result).take().unwrap_or(Ok(()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VMM's part: device tasks and teardown waits on the executor, a pair
/// of event doorbells per open channel.
struct Vmm {
    executor: Arc<async_executor::Executor<'static>>,
    state: Weak<Mutex<HostState>>,
    doorbells: HashMap<u32, (Arc<EventDoorbell>, Arc<EventDoorbell>)>,
    exits: HashMap<u32, Arc<Exit>>,
}

impl VmbusHost for Vmm {
    fn post_message(&mut self, _vp: u32, _sint: u8, _message: &[u8]) -> PostResult {
        // The SynIC wrapper posts; this is never reached.
        PostResult::Undeliverable
    }

    fn open_doorbells(&mut self, signal: &ChannelSignal) -> ChannelDoorbells {
        let pair = (
            Arc::new(EventDoorbell::new()),
            Arc::new(EventDoorbell::new()),
        );
        self.doorbells.insert(signal.relid, pair.clone());
        ChannelDoorbells {
            guest_to_host: pair.0,
            host_to_guest: pair.1,
        }
    }

    fn retarget(&mut self, _signal: &ChannelSignal) {}

    fn close_doorbells(&mut self, relid: u32) {
        self.doorbells.remove(&relid);
    }

    fn start_channel(&mut self, relid: u32, task: ChannelTask) {
        let exit = Arc::new(Exit::default());
        self.exits.insert(relid, exit.clone());
        self.executor
            .spawn(async move {
                let result = task.await;
                if let Err(error) = &result {
                    tracing::debug!(relid, %error, "bus VM: device task ended");
                }
                exit.publish(result);
            })
            .detach();
    }

    fn wait_teardown(&mut self, wait: TeardownWait) {
        let state = self.state.clone();
        self.executor
            .spawn(async move {
                let released = wait.await;
                if let Some(state) = state.upgrade() {
                    let mut state = lock(&state);
                    let HostState { server, host } = &mut *state;
                    server.teardown_complete(released, host);
                }
            })
            .detach();
    }
}

/// The host side: the server and the SynIC it posts through.
struct HostState {
    server: Server,
    host: SynicHost<Vmm>,
}

/// The client's transport: posts go straight into the server, the SINT
/// interrupt is an event doorbell the SynIC rings.
struct Transport {
    state: Arc<Mutex<HostState>>,
    memory: GuestMemory,
    interrupt: Arc<EventDoorbell>,
    /// The interrupt's signal count the client has seen.
    seen: u64,
    /// A device asked for sub-channels since the last look.
    sub_channels_asked: Arc<AtomicBool>,
}

impl VmbusTransport for Transport {
    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), TransportError> {
        let mut state = lock(&self.state);
        let HostState { server, host } = &mut *state;
        match server.post_message(connection_id, message, host) {
            Err(Dropped::WrongConnection) => Err(TransportError(format!(
                "HvPostMessage: invalid connection id {connection_id}"
            ))),
            _ => Ok(()),
        }
    }

    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn simp_page(&self) -> u64 {
        SIMP_PAGE * PAGE_SIZE as u64
    }

    fn eom(&mut self) {
        let mut state = lock(&self.state);
        let HostState { server, host } = &mut *state;
        host.eom(server);
    }

    fn wait_interrupt(&mut self) -> Result<(), TransportError> {
        loop {
            if self.sub_channels_asked.swap(false, Ordering::AcqRel) {
                let mut state = lock(&self.state);
                let HostState { server, host } = &mut *state;
                server.offer_sub_channels(host);
            }
            // Armed before the count is compared, so a signal in between
            // is not lost.
            let armed = vmbdev_ring::wait(&*self.interrupt);
            let count = self.interrupt.signal_count();
            if count != self.seen {
                self.seen = count;
                return Ok(());
            }
            vmbdev_ring::block_on(armed);
        }
    }
}

/// One ring the guest opened.
struct OpenRing {
    gpadl: u32,
    pages: Vec<u64>,
}

struct Inner {
    memory: GuestMemory,
    registry: GpadlRegistry,
    pages: PageAllocator,
    config: BusVmConfig,
    state: Arc<Mutex<HostState>>,
    client: Mutex<VmbusClient<Transport>>,
    /// Registered devices: relid of the primary, the device.
    devices: Mutex<Vec<(u32, Arc<dyn VmbusDevice>)>>,
    rings: Mutex<HashMap<u32, OpenRing>>,
    shutdown: async_channel::Sender<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.close();
        let threads = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

/// The loopback VM with a control plane. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct BusVm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BusVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusVm")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl BusVm {
    /// A VM with zeroed memory, the SynIC pages of vCPU 0 set, the server
    /// holding no device yet and the executor threads running.
    pub fn new(config: BusVmConfig) -> Result<Self, BusVmError> {
        let memory = GuestMemory::new(config.memory_pages * PAGE_SIZE as u64)?;
        let free = FIRST_FREE_PAGE..config.memory_pages;
        Self::with_memory(config, memory, free)
    }

    /// A VM over `memory` (for example a [`GuestMemory::from_memfd`]
    /// layout with holes, or one that leaves parts of its backing outside
    /// the guest) whose drivers take ring and buffer pages from
    /// `free_pages`; `config.memory_pages` is ignored. The SynIC pages of
    /// vCPU 0 are guest pages 0 and 1, so `memory` must back them and
    /// `free_pages` must leave them out; every page of `free_pages` must be
    /// backed.
    pub fn with_memory(
        config: BusVmConfig,
        memory: GuestMemory,
        free_pages: std::ops::Range<u64>,
    ) -> Result<Self, BusVmError> {
        let registry = GpadlRegistry::new();
        let executor = Arc::new(async_executor::Executor::new());
        let (shutdown, stopped) = async_channel::bounded::<()>(1);
        let mut threads = Vec::new();
        for i in 0..config.executor_threads.max(1) {
            let executor = executor.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("bus-vm-{i}"))
                .spawn(move || {
                    let _ = vmbdev_ring::block_on(executor.run(stopped.recv()));
                })
                .map_err(|e| BusVmError::Thread(e.to_string()))?;
            threads.push(thread);
        }
        let mut synic = Synic::new(memory.clone(), 1);
        synic.set_simp(0, Some(SIMP_PAGE * PAGE_SIZE as u64))?;
        synic.set_siefp(0, Some(SIEFP_PAGE * PAGE_SIZE as u64))?;
        let interrupt = Arc::new(EventDoorbell::new());
        synic.connect_interrupt(0, VMBUS_SINT, interrupt.clone())?;
        let mut server = Server::new(memory.clone(), registry.clone(), config.server.clone())?;
        let sub_channels_asked = Arc::new(AtomicBool::new(false));
        {
            let asked = sub_channels_asked.clone();
            let interrupt = interrupt.clone();
            // Called from a device task: no lock is taken here, the
            // client's transport offers them when it next waits.
            server.on_sub_channel_request(move || {
                asked.store(true, Ordering::Release);
                interrupt.signal();
            });
        }
        let state = Arc::new_cyclic(|weak| {
            Mutex::new(HostState {
                server,
                host: SynicHost::new(
                    synic,
                    Vmm {
                        executor: executor.clone(),
                        state: weak.clone(),
                        doorbells: HashMap::new(),
                        exits: HashMap::new(),
                    },
                ),
            })
        });
        let transport = Transport {
            state: state.clone(),
            memory: memory.clone(),
            interrupt,
            seen: 0,
            sub_channels_asked,
        };
        let client = VmbusClient::new(
            transport,
            ClientConfig {
                trace: config.trace,
                ..ClientConfig::default()
            },
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pages: PageAllocator::new(free_pages, false),
                memory,
                registry,
                config,
                state,
                client: Mutex::new(client),
                devices: Mutex::new(Vec::new()),
                rings: Mutex::new(HashMap::new()),
                shutdown,
                threads: Mutex::new(threads),
            }),
        })
    }

    fn client(&self) -> MutexGuard<'_, VmbusClient<Transport>> {
        lock(&self.inner.client)
    }

    /// Registers `device` with the server; returns its primary relid.
    pub fn add_device(&self, device: Arc<dyn VmbusDevice>) -> Result<u32, BusVmError> {
        let relid = {
            let mut state = lock(&self.inner.state);
            let HostState { server, host } = &mut *state;
            server.add_device(device.clone(), host)?.1
        };
        lock(&self.inner.devices).push((relid, device));
        Ok(relid)
    }

    /// The guest connects: INITIATE_CONTACT down Linux's versions, then
    /// REQUESTOFFERS; returns the version and the offers.
    pub fn connect(&self) -> Result<(Version, Vec<OfferedChannel>), BusVmError> {
        let mut client = self.client();
        let version = client.connect()?;
        let offers = client.request_offers()?;
        Ok((version, offers))
    }

    /// Every offer the guest has seen.
    pub fn offers(&self) -> Vec<OfferedChannel> {
        self.client().offers().cloned().collect()
    }

    /// The name of the device behind `relid`'s instance (sub-channels
    /// included), as its offer gives it.
    pub fn device_name(&self, relid: u32) -> Option<String> {
        let instance = self.client().offer(relid)?.instance_id;
        self.device_of(instance).map(|d| d.offer().name)
    }

    fn device_of(&self, instance: Guid) -> Option<Arc<dyn VmbusDevice>> {
        lock(&self.inner.devices)
            .iter()
            .map(|(_, d)| d)
            .find(|d| d.offer().instance_id == instance)
            .cloned()
    }

    /// The control-plane messages so far (with tracing on).
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.client().trace().to_vec()
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.inner.memory
    }

    /// The allocator of free guest pages.
    pub fn pages(&self) -> &PageAllocator {
        &self.inner.pages
    }

    /// The GPADL registry the devices map guest pages through.
    pub fn registry(&self) -> &GpadlRegistry {
        &self.inner.registry
    }

    /// Opens `relid` as a Linux driver does: fresh zeroed ring pages, a
    /// GPADL over them, OPENCHANNEL; returns the guest's endpoint over the
    /// ring and the signal raised when the device stops serving it.
    pub fn open(&self, relid: u32) -> Result<(Endpoint, Arc<StopSignal>), BusVmError> {
        let instance = self
            .client()
            .offer(relid)
            .ok_or(BusVmError::NoDevice(relid))?
            .instance_id;
        let device = self
            .device_of(instance)
            .ok_or(BusVmError::NoDevice(relid))?;
        let offer = device.offer();
        let (up, down) = match self.inner.config.ring_pages {
            Some(pages) => (pages.max(1), pages.max(1)),
            None => (
                offer.incoming_ring_pages.max(1),
                offer.outgoing_ring_pages.max(1),
            ),
        };
        let pages = self
            .inner
            .pages
            .alloc(2 + u64::from(up) + u64::from(down))?;
        match self.open_on(relid, &pages, 1 + up) {
            Ok(opened) => Ok(opened),
            Err(error) => {
                self.inner.pages.free(&pages);
                Err(error)
            }
        }
    }

    fn open_on(
        &self,
        relid: u32,
        pages: &[u64],
        downstream: u32,
    ) -> Result<(Endpoint, Arc<StopSignal>), BusVmError> {
        for &page in pages {
            self.inner
                .memory
                .fill(page * PAGE_SIZE as u64, PAGE_SIZE as u64, 0)?;
        }
        let gpadl = {
            let mut client = self.client();
            let gpadl = client.create_gpadl(relid, pages)?;
            if let Err(error) = client.open_channel(relid, gpadl, downstream, 0) {
                let _ = client.teardown_gpadl(gpadl);
                return Err(error.into());
            }
            gpadl
        };
        let (bells, exit) = {
            let state = lock(&self.inner.state);
            let vmm = &state.host.inner;
            (
                vmm.doorbells.get(&relid).cloned(),
                vmm.exits.get(&relid).cloned(),
            )
        };
        lock(&self.inner.rings).insert(
            relid,
            OpenRing {
                gpadl,
                pages: pages.to_vec(),
            },
        );
        let Some((to_host, to_guest)) = bells else {
            let _ = self.close(relid);
            return Err(BusVmError::NoDoorbells(relid));
        };
        let local: Arc<dyn Doorbell> = to_guest;
        let remote: Arc<dyn Doorbell> = to_host;
        let endpoint = Endpoint::open(
            Side::Guest,
            &self.inner.memory,
            pages,
            downstream,
            local,
            remote,
        )
        .map_err(|source| BusVmError::Ring { relid, source });
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(error) => {
                let _ = self.close(relid);
                return Err(error);
            }
        };
        let ended = exit.map(|e| e.ended.clone()).unwrap_or_default();
        Ok((endpoint, ended))
    }

    /// How the last device task of `relid` ended, once it has (`None`
    /// while it runs or when its result was already taken).
    pub fn take_task_result(&self, relid: u32) -> Option<Result<(), ChannelError>> {
        let mut state = lock(&self.inner.state);
        let exits = &mut state.host.inner.exits;
        let published = lock(&exits.get(&relid)?.result).take()?;
        exits.remove(&relid);
        Some(published)
    }

    /// The guest pages of `relid`'s ring while the guest holds it open:
    /// the guest→host control page, its data pages, then the host→guest
    /// control page and its data pages.
    pub fn ring_pages(&self, relid: u32) -> Option<Vec<u64>> {
        lock(&self.inner.rings).get(&relid).map(|r| r.pages.clone())
    }

    /// How the device task of `relid` ended (once it has).
    fn task_result(&self, relid: u32) -> Result<(), ChannelError> {
        let exit = lock(&self.inner.state).host.inner.exits.remove(&relid);
        exit.map_or(Ok(()), |e| e.take())
    }

    /// Closes `relid` as Linux does: CLOSECHANNEL, then GPADL_TEARDOWN of
    /// its ring (answered once the device let go of it); the ring pages are
    /// freed after.
    pub fn close(&self, relid: u32) -> Result<(), BusVmError> {
        let ring = lock(&self.inner.rings).remove(&relid);
        let mut client = self.client();
        let closed = client.close_channel(relid);
        let torn = match &ring {
            Some(ring) if client.has_gpadl(ring.gpadl) => client.teardown_gpadl(ring.gpadl),
            _ => Ok(()),
        };
        drop(client);
        if let Some(ring) = ring {
            if torn.is_ok() {
                self.inner.pages.free(&ring.pages);
            }
        }
        closed?;
        torn?;
        Ok(())
    }

    /// UNLOAD: the host closes every channel and drops every GPADL; waits
    /// for UNLOAD_RESPONSE, then frees the ring pages.
    pub fn unload(&self) -> Result<(), BusVmError> {
        self.client().unload()?;
        for (_, ring) in lock(&self.inner.rings).drain() {
            self.inner.pages.free(&ring.pages);
        }
        Ok(())
    }

    /// Whether the server considers `relid` open.
    pub fn host_is_open(&self, relid: u32) -> bool {
        lock(&self.inner.state).server.is_open(relid)
    }

    /// GPADLs the server holds.
    pub fn host_gpadl_count(&self) -> usize {
        lock(&self.inner.state).server.gpadl_count()
    }

    /// The agreed version, as the server sees it.
    pub fn host_version(&self) -> Option<Version> {
        lock(&self.inner.state).server.version()
    }

    /// The storvsc driver's opener for the sub-channels of the device
    /// whose primary is `primary_relid`.
    pub fn storvsc_opener(&self, primary_relid: u32) -> Result<Arc<dyn ChannelOpener>, BusVmError> {
        let instance = self
            .client()
            .offer(primary_relid)
            .ok_or(BusVmError::NoDevice(primary_relid))?
            .instance_id;
        Ok(Arc::new(SubChannels {
            vm: self.clone(),
            instance,
        }))
    }

    /// The vmbfs client's bus to the device offered as `relid`.
    pub fn vmbfs_bus(&self, relid: u32) -> BusVmbfs {
        BusVmbfs {
            vm: self.clone(),
            relid,
        }
    }

    /// Relids of the rings the guest holds open.
    pub fn open_relids(&self) -> Vec<u32> {
        let mut relids: Vec<u32> = lock(&self.inner.rings).keys().copied().collect();
        relids.sort_unstable();
        relids
    }
}

/// Opens a storvsp device's sub-channels through the control plane.
struct SubChannels {
    vm: BusVm,
    instance: Guid,
}

impl ChannelOpener for SubChannels {
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String> {
        let offer = self
            .vm
            .client()
            .wait_offer(self.instance, index)
            .map_err(|e| e.to_string())?;
        let (endpoint, _) = self.vm.open(offer.relid).map_err(|e| e.to_string())?;
        Ok(endpoint)
    }
}

/// The vmbfs client's bus in a [`BusVm`]: each channel is opened and
/// closed through the control plane.
#[derive(Debug, Clone)]
pub struct BusVmbfs {
    vm: BusVm,
    relid: u32,
}

/// A vmbfs client running over a [`BusVm`].
pub type BusVmbfsClient = vmbdev_guest::vmbfs::VmbfsClient<BusVmbfs>;

impl VmbfsBus for BusVmbfs {
    type Channel = BusVmbfsChannel;

    fn open_channel(&mut self) -> Result<BusVmbfsChannel, BusFailure> {
        let (endpoint, ended) = self.vm.open(self.relid)?;
        Ok(BusVmbfsChannel {
            endpoint,
            ended,
            vm: self.vm.clone(),
            relid: self.relid,
            closed: false,
        })
    }

    fn memory(&self) -> &GuestMemory {
        self.vm.memory()
    }

    fn pages(&self) -> &PageAllocator {
        self.vm.pages()
    }
}

/// A vmbfs channel opened through the control plane.
pub struct BusVmbfsChannel {
    endpoint: Endpoint,
    ended: Arc<StopSignal>,
    vm: BusVm,
    relid: u32,
    closed: bool,
}

impl std::fmt::Debug for BusVmbfsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusVmbfsChannel")
            .field("relid", &self.relid)
            .finish_non_exhaustive()
    }
}

impl VmbfsChannel for BusVmbfsChannel {
    fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    fn host_stopped(&self) -> Arc<StopSignal> {
        self.ended.clone()
    }

    async fn wait_host_end(&mut self) -> Result<(), BusFailure> {
        self.ended.wait().await;
        Ok(self.vm.task_result(self.relid)?)
    }

    async fn suspend_host(&mut self) -> Result<(), BusFailure> {
        Err("stopping a device without closing its channel is not part of the control plane".into())
    }

    async fn close(mut self) -> Result<(), BusFailure> {
        self.closed = true;
        self.vm.close(self.relid)?;
        self.ended.wait().await;
        Ok(self.vm.task_result(self.relid)?)
    }
}

impl Drop for BusVmbfsChannel {
    /// A channel dropped unclosed is still closed and its ring torn down.
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.vm.close(self.relid);
        }
    }
}
