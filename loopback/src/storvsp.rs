//! An in-process multi-channel "VM" for a storvsp device (or any
//! [`VmbusDevice`] with sub-channels): one guest memory holding the
//! primary ring, the sub-channel rings and the guest's data pages; each
//! host channel task on its own thread, or all of them on an executor the
//! caller runs (with a polled guest driver, guest and device then share
//! one thread, as a VMM that serves the device on the vCPU's exit does);
//! event doorbells. It plays the
//! VMM's part of the bus contract only: channels are opened with
//! [`VmbusDevice::open`], sub-channels come through the
//! [`SubChannelControl`] it hands the device, and closing, saving and
//! reattaching a restored device go through the same trait.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmbdev_device::bus::{BusError, ChannelError, OpenRequest, SubChannelControl, VmbusDevice};
use vmbdev_ring::executor::{Executor, Task};
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, GpadlRegistry, GuestMemory, LoopbackConfig, LoopbackError,
    PageAllocator, RingError, Side, loopback,
};

use vmbdev_guest::storvsc::{ChannelOpener, DriverConfig, DriverError, Storvsc};

/// Shape of the loopback VM.
#[derive(Debug, Clone)]
pub struct StorvspVmConfig {
    /// Data pages of each ring half (guest→host and host→guest).
    pub ring_pages: u32,
    /// Guest pages for data buffers.
    pub buffer_pages: u64,
    /// Hand out data buffers as non-contiguous pages.
    pub scatter_buffers: bool,
    /// Most sub-channels the VM can host.
    pub max_sub_channels: u16,
    /// Runs the host channel tasks on this executor (whose scheduling
    /// allocates nothing) instead of a thread each; the caller runs it (e.g. `executor.run(work)` on the thread
    /// that drives the guest). [`StorvspVm::start_with_storvsc`] and
    /// [`StorvspVm::close_all`] run it themselves while they wait.
    pub executor: Option<Arc<Executor>>,
}

impl Default for StorvspVmConfig {
    fn default() -> Self {
        Self {
            ring_pages: 16,
            buffer_pages: 4096,
            scatter_buffers: true,
            max_sub_channels: 4,
            executor: None,
        }
    }
}

/// An error of the loopback VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Memory or ring setup failed.
    #[error(transparent)]
    Loopback(#[from] LoopbackError),
    /// A ring could not be opened.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The device refused to open a channel.
    #[error(transparent)]
    Device(#[from] BusError),
    /// A thread could not be started.
    #[error("cannot start a channel thread: {0}")]
    Thread(std::io::Error),
}

/// Why [`StorvspVm::start_with_storvsc`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The guest driver failed to connect.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// One channel's ring and doorbells, kept to reopen the host side.
struct ChannelRing {
    /// The ring GPADL; the host endpoint holds it while it is served.
    handle: u32,
    pages: Arc<[u64]>,
    downstream_offset: u32,
    /// Rung by the guest for the host.
    host_bell: Arc<EventDoorbell>,
    /// Rung by the host for the guest.
    guest_bell: Arc<EventDoorbell>,
}

/// How a channel's task ended.
type TaskResult = Result<(), ChannelError>;

/// Where a host channel task runs.
enum HostTask {
    /// A thread of its own.
    Thread(JoinHandle<TaskResult>),
    /// The configured executor.
    Spawned(Task<TaskResult>),
}

impl HostTask {
    fn is_finished(&self) -> bool {
        match self {
            Self::Thread(thread) => thread.is_finished(),
            Self::Spawned(task) => task.is_finished(),
        }
    }

    /// Waits for the task (running `executor` meanwhile, for a spawned
    /// one) and returns how it ended.
    fn join(self, index: u16, executor: Option<&Executor>) -> TaskResult {
        match (self, executor) {
            (Self::Thread(thread), _) => thread
                .join()
                .unwrap_or(Err(ChannelError::Panicked { channel: index })),
            (Self::Spawned(task), Some(executor)) => {
                futures_lite::future::block_on(executor.run(task))
            }
            (Self::Spawned(task), None) => futures_lite::future::block_on(task),
        }
    }
}

struct VmState<D: ?Sized> {
    device: Arc<D>,
    rings: Vec<ChannelRing>,
    offered: u16,
    threads: Vec<(u16, HostTask)>,
    next_gpadl: u32,
}

struct Shared<D: ?Sized> {
    memory: GuestMemory,
    registry: GpadlRegistry,
    pages: PageAllocator,
    config: StorvspVmConfig,
    state: Mutex<VmState<D>>,
}

impl<D: ?Sized> Shared<D> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VmState<D>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The loopback VM serving a device of type `D` (a concrete device, or
/// `dyn VmbusDevice`).
pub struct StorvspVm<D: VmbusDevice + ?Sized + 'static = vmbdev_device::storvsp::StorvspDevice> {
    shared: Arc<Shared<D>>,
}

impl<D: VmbusDevice + ?Sized> std::fmt::Debug for StorvspVm<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorvspVm")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// What the host side offers through the VM.
struct Offer<D: ?Sized>(std::sync::Weak<Shared<D>>);

impl<D: VmbusDevice + ?Sized> SubChannelControl for Offer<D> {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        let refused = BusError::SubChannelsUnsupported { requested: count };
        let Some(shared) = self.0.upgrade() else {
            return Err(refused);
        };
        if count > shared.config.max_sub_channels {
            tracing::debug!(
                count,
                hosted = shared.config.max_sub_channels,
                "loopback VM: more sub-channels asked for than it hosts"
            );
            return Err(refused);
        }
        shared.lock().offered = count;
        Ok(())
    }
}

impl<D: VmbusDevice + ?Sized + 'static> StorvspVm<D> {
    /// Builds the memory and the primary ring, opens the primary channel
    /// on `device`, and returns the VM and the guest's primary endpoint.
    pub fn start(device: Arc<D>, config: StorvspVmConfig) -> Result<(Self, Endpoint), VmError> {
        let ring_pages_each = 2 + 2 * u64::from(config.ring_pages);
        let lb = loopback(&LoopbackConfig {
            incoming_pages: config.ring_pages,
            outgoing_pages: config.ring_pages,
            buffer_pages: config.buffer_pages
                + ring_pages_each * u64::from(config.max_sub_channels),
            scatter_ring: false,
            scatter_buffers: config.scatter_buffers,
            gpadl_handle: 1,
        })?;
        let pages = lb
            .registry
            .get(lb.gpadl_handle)
            .map_err(LoopbackError::from)?;
        let ring = ChannelRing {
            handle: lb.gpadl_handle,
            pages,
            downstream_offset: lb.downstream_offset,
            host_bell: lb.host_doorbell.clone(),
            guest_bell: lb.guest_doorbell.clone(),
        };
        let shared = Arc::new(Shared {
            memory: lb.memory.clone(),
            registry: lb.registry.clone(),
            pages: lb.pages.clone(),
            config,
            state: Mutex::new(VmState {
                device,
                rings: vec![ring],
                offered: 0,
                threads: Vec::new(),
                next_gpadl: 2,
            }),
        });
        spawn_host(&shared, 0, lb.host)?;
        Ok((Self { shared }, lb.guest))
    }

    /// [`start`](Self::start), then a storvsc driver connected over the
    /// primary channel (and the sub-channels it asks for): what every
    /// harness driving storvsp through the guest driver begins with.
    pub fn start_with_storvsc(
        device: Arc<D>,
        config: StorvspVmConfig,
        driver: &DriverConfig,
    ) -> Result<(Self, Storvsc), StartError> {
        let executor = config.executor.clone();
        let (vm, primary) = Self::start(device, config)?;
        let opener = vm.opener();
        let memory = vm.memory();
        let pages = vm.pages();
        let connect = Storvsc::connect(primary, memory, pages, opener.as_ref(), driver);
        let storvsc = match &executor {
            Some(executor) => futures_lite::future::block_on(executor.run(connect)),
            None => futures_lite::future::block_on(connect),
        }?;
        Ok((vm, storvsc))
    }

    /// The guest memory.
    pub fn memory(&self) -> GuestMemory {
        self.shared.memory.clone()
    }

    /// The allocator of guest data pages.
    pub fn pages(&self) -> PageAllocator {
        self.shared.pages.clone()
    }

    /// The device currently attached.
    pub fn device(&self) -> Arc<D> {
        self.shared.lock().device.clone()
    }

    /// The guest's side of the bus, for [`Storvsc::connect`](vmbdev_guest::storvsc::Storvsc::connect).
    pub fn opener(&self) -> Arc<dyn ChannelOpener> {
        Arc::new(Opener(self.shared.clone()))
    }

    /// Rings the doorbell of host channel `index` (as the guest does after
    /// writing into an empty ring), for guests that write rings by hand.
    pub fn signal_host(&self, index: u16) {
        let state = self.shared.lock();
        if let Some(ring) = state.rings.get(usize::from(index)) {
            ring.host_bell.signal();
        }
    }

    /// Sub-channels the device offered.
    pub fn offered_sub_channels(&self) -> u16 {
        self.shared.lock().offered
    }

    /// Closes every host channel and waits for their tasks; returns each
    /// channel's result.
    pub fn close_all(&self) -> Vec<(u16, TaskResult)> {
        let (device, threads) = {
            let mut state = self.shared.lock();
            (state.device.clone(), std::mem::take(&mut state.threads))
        };
        for (index, _) in &threads {
            let _ = device.close(*index);
        }
        let executor = self.shared.config.executor.as_deref();
        threads
            .into_iter()
            .map(|(index, task)| (index, task.join(index, executor)))
            .collect()
    }

    /// Waits for host channel tasks that ended on their own (for example
    /// after a ring failure) and returns their results.
    pub fn finished_channels(&self) -> Vec<(u16, TaskResult)> {
        let mut state = self.shared.lock();
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut state.threads)
            .into_iter()
            .partition(|(_, t)| t.is_finished());
        state.threads = running;
        drop(state);
        let executor = self.shared.config.executor.as_deref();
        done.into_iter()
            .map(|(index, task)| (index, task.join(index, executor)))
            .collect()
    }

    /// Attaches `device` (for example one restored from the old device's
    /// saved state) to every existing ring and starts serving them. Call
    /// [`close_all`](Self::close_all) first.
    pub fn reattach(&self, device: Arc<D>) -> Result<(), VmError> {
        let endpoints = {
            let mut state = self.shared.lock();
            state.device = device;
            state
                .rings
                .iter()
                .map(|ring| host_endpoint(&self.shared, ring))
                .collect::<Result<Vec<_>, _>>()?
        };
        for (index, endpoint) in endpoints.into_iter().enumerate() {
            spawn_host(&self.shared, index as u16, endpoint)?;
        }
        Ok(())
    }
}

impl<D: VmbusDevice + ?Sized + 'static> Drop for StorvspVm<D> {
    fn drop(&mut self) {
        let _ = self.close_all();
    }
}

struct Opener<D: ?Sized>(Arc<Shared<D>>);

impl<D: VmbusDevice + ?Sized + 'static> ChannelOpener for Opener<D> {
    fn open_sub_channel(&self, index: u16) -> Result<Endpoint, String> {
        open_sub_channel(&self.0, index)
    }
}

fn spawn_host<D: VmbusDevice + ?Sized + 'static>(
    shared: &Arc<Shared<D>>,
    index: u16,
    endpoint: Endpoint,
) -> Result<(), VmError> {
    let device = shared.lock().device.clone();
    let request = OpenRequest {
        endpoint,
        memory: shared.memory.clone(),
        gpadls: shared.registry.clone(),
        sub_channels: Arc::new(Offer(Arc::downgrade(shared))),
    };
    let task = device.open(index, request)?;
    let task = match &shared.config.executor {
        Some(executor) => HostTask::Spawned(executor.spawn(task)),
        None => HostTask::Thread(
            std::thread::Builder::new()
                .name(format!("storvsp-{index}"))
                .spawn(move || futures_lite::future::block_on(task))
                .map_err(VmError::Thread)?,
        ),
    };
    shared.lock().threads.push((index, task));
    Ok(())
}

fn host_endpoint<D: ?Sized>(shared: &Shared<D>, ring: &ChannelRing) -> Result<Endpoint, RingError> {
    let local: Arc<dyn Doorbell> = ring.host_bell.clone();
    let remote: Arc<dyn Doorbell> = ring.guest_bell.clone();
    Endpoint::open_gpadl(
        Side::Host,
        &shared.memory,
        &shared.registry,
        ring.handle,
        ring.downstream_offset,
        local,
        remote,
    )
}

/// Opens sub-channel `index`: a new ring in guest memory, the host
/// side served on its own thread; returns the guest endpoint.
fn open_sub_channel<D: VmbusDevice + ?Sized + 'static>(
    shared: &Arc<Shared<D>>,
    index: u16,
) -> Result<Endpoint, String> {
    let (offered, expected) = {
        let state = shared.lock();
        (state.offered, state.rings.len() as u16)
    };
    if index == 0 || index > offered {
        return Err(format!(
            "sub-channel {index} was not offered ({offered} were)"
        ));
    }
    if index != expected {
        return Err(format!("sub-channel {index} opened out of order"));
    }
    let data = u64::from(shared.config.ring_pages);
    let pages = shared
        .pages
        .alloc(2 + 2 * data)
        .map_err(|e| e.to_string())?;
    // Ring pages start zeroed: the allocator never handed them out.
    let handle = {
        let mut state = shared.lock();
        let handle = state.next_gpadl;
        state.next_gpadl += 1;
        handle
    };
    shared
        .registry
        .register(&shared.memory, handle, pages)
        .map_err(|e| e.to_string())?;
    let pages = shared.registry.get(handle).map_err(|e| e.to_string())?;
    let ring = ChannelRing {
        handle,
        pages,
        downstream_offset: (1 + data) as u32,
        host_bell: Arc::new(EventDoorbell::new()),
        guest_bell: Arc::new(EventDoorbell::new()),
    };
    let host = host_endpoint(shared, &ring).map_err(|e| e.to_string())?;
    let guest_local: Arc<dyn Doorbell> = ring.guest_bell.clone();
    let guest_remote: Arc<dyn Doorbell> = ring.host_bell.clone();
    let guest = Endpoint::open(
        Side::Guest,
        &shared.memory,
        &ring.pages,
        ring.downstream_offset,
        guest_local,
        guest_remote,
    )
    .map_err(|e| e.to_string())?;
    shared.lock().rings.push(ring);
    spawn_host(shared, index, host).map_err(|e| e.to_string())?;
    Ok(guest)
}
