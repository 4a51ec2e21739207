//! The loopback "VM": one guest memory, a GPADL registry, a page allocator
//! and an executor thread pool running device channel tasks. It plays the
//! VMM's part of the bus contract ([`VmbusDevice`]) in process, so guest
//! drivers and devices can be run together by tests, the demo and
//! benchmarks.
//!
//! Each [`LoopbackVm::open_channel`] allocates fresh zeroed ring pages,
//! registers them as a GPADL, builds both endpoints over event doorbells
//! and spawns the device's task; [`GuestChannel::close`] undoes it all.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use vmbdev_device::bus::{BusError, ChannelError, OpenRequest, VmbusDevice};
use vmbdev_ring::StopSignal;
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, GpaError, GpadlRegistry, GuestMemory, LoopbackError,
    MemoryError, PAGE_SIZE, PageAllocator, RingError, Side,
};

/// An error of the loopback VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest memory could not be created or written.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// Guest pages ran out.
    #[error("guest pages: {0}")]
    Pages(#[from] LoopbackError),
    /// A GPADL could not be registered.
    #[error("GPADL: {0}")]
    Gpadl(#[from] GpaError),
    /// The ring could not be opened.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// The device refused the open.
    #[error("device: {0}")]
    Bus(#[from] BusError),
    /// An executor thread could not be started.
    #[error("cannot start an executor thread: {0}")]
    Thread(String),
}

/// Shape of the loopback VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest memory in pages.
    pub memory_pages: u64,
    /// Executor threads running device tasks. With 0 there are none: the
    /// caller runs [`LoopbackVm::executor`] (for example around the guest's
    /// work, so guest and device share its thread).
    pub executor_threads: usize,
    /// Runs the device tasks on this executor (whose scheduling allocates
    /// nothing) instead of [`LoopbackVm::executor`]; the caller runs it,
    /// e.g. around the guest's work on the same thread.
    pub task_executor: Option<Arc<vmbdev_ring::executor::Executor>>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            // 32 MiB: rings plus a 7 MiB RDMA buffer with room to spare.
            memory_pages: 8192,
            executor_threads: 1,
            task_executor: None,
        }
    }
}

/// Ring data pages of a channel, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingShape {
    /// Guest→host data pages.
    pub incoming_pages: u32,
    /// Host→guest data pages.
    pub outgoing_pages: u32,
}

impl RingShape {
    /// The ring sizes a device asks for in its offer.
    pub fn from_offer(device: &dyn VmbusDevice) -> Self {
        let offer = device.offer();
        Self {
            incoming_pages: offer.incoming_ring_pages.max(1),
            outgoing_pages: offer.outgoing_ring_pages.max(1),
        }
    }
}

struct VmInner {
    memory: GuestMemory,
    gpadls: GpadlRegistry,
    pages: PageAllocator,
    next_gpadl: AtomicU32,
    executor: Arc<async_executor::Executor<'static>>,
    task_executor: Option<Arc<vmbdev_ring::executor::Executor>>,
    shutdown: async_channel::Sender<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for VmInner {
    fn drop(&mut self) {
        self.shutdown.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// The loopback VM. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct LoopbackVm {
    inner: Arc<VmInner>,
}

impl std::fmt::Debug for LoopbackVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackVm")
            .field("memory_pages", &self.inner.memory.page_count())
            .finish_non_exhaustive()
    }
}

/// How a device task ended, published for the guest side: the result,
/// then the signal.
#[derive(Default)]
struct Exit {
    result: Mutex<Option<Result<(), ChannelError>>>,
    ended: Arc<StopSignal>,
}

impl Exit {
    fn lock(&self) -> MutexGuard<'_, Option<Result<(), ChannelError>>> {
        self.result.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, result: Result<(), ChannelError>) {
        *self.lock() = Some(result);
        self.ended.stop();
    }

    async fn wait(&self) {
        self.ended.wait().await;
    }
}

impl LoopbackVm {
    /// A VM with zeroed guest memory and running executor threads.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        let memory = GuestMemory::new(config.memory_pages * PAGE_SIZE as u64)?;
        let executor = Arc::new(async_executor::Executor::new());
        let (shutdown, stopped) = async_channel::bounded::<()>(1);
        let mut threads = Vec::new();
        for i in 0..config.executor_threads {
            let executor = executor.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vm-executor-{i}"))
                .spawn(move || {
                    let _ = futures_lite::future::block_on(executor.run(stopped.recv()));
                })
                .map_err(|e| VmError::Thread(e.to_string()))?;
            threads.push(thread);
        }
        Ok(Self {
            inner: Arc::new(VmInner {
                pages: PageAllocator::new(0..config.memory_pages, false),
                memory,
                gpadls: GpadlRegistry::new(),
                next_gpadl: AtomicU32::new(1),
                executor,
                task_executor: config.task_executor.clone(),
                shutdown,
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.inner.memory
    }

    /// The executor the device tasks run on (unless the configuration
    /// gave a [`task_executor`](Self::task_executor)).
    pub fn executor(&self) -> &Arc<async_executor::Executor<'static>> {
        &self.inner.executor
    }

    /// The executor the configuration gave for the device tasks, if any.
    pub fn task_executor(&self) -> Option<&Arc<vmbdev_ring::executor::Executor>> {
        self.inner.task_executor.as_ref()
    }

    /// The allocator of free guest pages (drivers take buffers here).
    pub fn pages(&self) -> &PageAllocator {
        &self.inner.pages
    }

    /// Opens channel `index` of `device` as a guest would: fresh zeroed
    /// ring pages registered as a new GPADL, then the device's `open`;
    /// its task runs on the executor.
    pub fn open_channel(
        &self,
        device: Arc<dyn VmbusDevice>,
        index: u16,
        shape: RingShape,
    ) -> Result<GuestChannel, VmError> {
        let inner = &self.inner;
        let ring_pages = 2 + u64::from(shape.incoming_pages) + u64::from(shape.outgoing_pages);
        let pages = inner.pages.alloc(ring_pages)?;
        let result = self.open_on_pages(device, index, shape, &pages);
        if result.is_err() {
            inner.pages.free(&pages);
        }
        result
    }

    fn open_on_pages(
        &self,
        device: Arc<dyn VmbusDevice>,
        index: u16,
        shape: RingShape,
        pages: &[u64],
    ) -> Result<GuestChannel, VmError> {
        let inner = &self.inner;
        for &page in pages {
            inner
                .memory
                .fill(page * PAGE_SIZE as u64, PAGE_SIZE as u64, 0)?;
        }
        let gpadl = inner.next_gpadl.fetch_add(1, Ordering::Relaxed);
        inner
            .gpadls
            .register(&inner.memory, gpadl, pages.to_vec())?;
        let downstream_offset = 1 + shape.incoming_pages;
        let host_bell: Arc<dyn Doorbell> = Arc::new(EventDoorbell::new());
        let guest_bell: Arc<dyn Doorbell> = Arc::new(EventDoorbell::new());
        let opened = (|| {
            let endpoint = Endpoint::open(
                Side::Guest,
                &inner.memory,
                pages,
                downstream_offset,
                guest_bell.clone(),
                host_bell.clone(),
            )?;
            let mut channel = GuestChannel {
                endpoint,
                vm: self.clone(),
                device: device.clone(),
                index,
                gpadl,
                downstream_offset,
                ring_pages: pages.to_vec(),
                host_bell: host_bell.clone(),
                guest_bell: guest_bell.clone(),
                exit: None,
            };
            channel.start_device(device)?;
            Ok(channel)
        })();
        if opened.is_err() {
            let _ = inner.gpadls.try_teardown(gpadl);
        }
        opened
    }
}

/// The guest side of an open channel, with the device task behind it.
pub struct GuestChannel {
    /// The guest's endpoint: writes guest→host, reads host→guest.
    pub endpoint: Endpoint,
    vm: LoopbackVm,
    device: Arc<dyn VmbusDevice>,
    index: u16,
    gpadl: u32,
    downstream_offset: u32,
    ring_pages: Vec<u64>,
    host_bell: Arc<dyn Doorbell>,
    guest_bell: Arc<dyn Doorbell>,
    exit: Option<Arc<Exit>>,
}

impl std::fmt::Debug for GuestChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestChannel")
            .field("index", &self.index)
            .field("gpadl", &self.gpadl)
            .finish_non_exhaustive()
    }
}

impl GuestChannel {
    /// The VM the channel belongs to.
    pub fn vm(&self) -> &LoopbackVm {
        &self.vm
    }

    /// The device serving the channel.
    pub fn device(&self) -> &Arc<dyn VmbusDevice> {
        &self.device
    }

    fn start_device(&mut self, device: Arc<dyn VmbusDevice>) -> Result<(), VmError> {
        let inner = &self.vm.inner;
        let request = OpenRequest::from_gpadl(
            inner.memory.clone(),
            inner.gpadls.clone(),
            self.gpadl,
            self.downstream_offset,
            self.host_bell.clone(),
            self.guest_bell.clone(),
        )?;
        let task = device.open(self.index, request)?;
        let exit = Arc::new(Exit::default());
        let published = exit.clone();
        let run = async move {
            let result = task.await;
            if let Err(error) = &result {
                tracing::debug!(%error, "loopback VM: device task ended");
            }
            published.publish(result);
        };
        match &inner.task_executor {
            Some(executor) => executor.spawn(run).detach(),
            None => inner.executor.spawn(run).detach(),
        }
        self.device = device;
        self.exit = Some(exit);
        Ok(())
    }

    /// Whether the device task has ended.
    pub fn device_ended(&self) -> bool {
        self.exit.as_ref().is_none_or(|e| e.lock().is_some())
    }

    /// Waits until the device task ends on its own (e.g. after a protocol
    /// violation) and returns how.
    pub async fn wait_device_end(&mut self) -> Result<(), ChannelError> {
        let Some(exit) = self.exit.take() else {
            return Ok(());
        };
        exit.wait().await;
        exit.lock().take().unwrap_or(Ok(()))
    }

    /// A handle that tells when the device task ends.
    pub fn exit_handle(&self) -> ExitHandle {
        ExitHandle(self.exit.clone().unwrap_or_else(|| {
            let ended = Exit::default();
            ended.publish(Ok(()));
            Arc::new(ended)
        }))
    }

    /// Stops the device task (keeping the rings and the guest side) and
    /// returns how it ended: the step before saving device state.
    pub async fn suspend_device(&mut self) -> Result<(), ChannelError> {
        match self.device.close(self.index) {
            Ok(()) | Err(BusError::NotOpen(_)) => {}
            Err(e) => tracing::warn!(error = %e, "loopback VM: close failed"),
        }
        self.wait_device_end().await
    }

    /// Starts `device` (possibly a new instance after a restore) on the
    /// same rings.
    pub fn resume_device(&mut self, device: Arc<dyn VmbusDevice>) -> Result<(), VmError> {
        self.start_device(device)
    }

    /// Closes the channel: stops the device task, unregisters the ring
    /// GPADL and frees its pages. Returns how the task ended.
    pub async fn close(mut self) -> Result<(), ChannelError> {
        let result = self.suspend_device().await;
        self.release_ring();
        result
    }

    fn release_ring(&mut self) {
        let inner = &self.vm.inner;
        if inner.gpadls.try_teardown(self.gpadl).is_ok() {
            inner.pages.free(&self.ring_pages);
        }
    }
}

impl Drop for GuestChannel {
    /// A channel dropped without [`GuestChannel::close`] still stops its
    /// device task; its ring pages are given back only if the task has
    /// already ended (otherwise they stay allocated, never reused under a
    /// running device).
    fn drop(&mut self) {
        if self.exit.is_some() {
            let _ = self.device.close(self.index);
        }
        if self.device_ended() {
            self.release_ring();
        }
    }
}

/// Tells when a device task has ended.
#[derive(Clone)]
pub struct ExitHandle(Arc<Exit>);

impl std::fmt::Debug for ExitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitHandle").finish_non_exhaustive()
    }
}

impl ExitHandle {
    /// Whether the task has ended.
    pub fn ended(&self) -> bool {
        self.0.lock().is_some()
    }

    /// Waits for the task to end.
    pub async fn wait(&self) {
        self.0.wait().await;
    }

    /// Runs `fut` unless the task ends first (then `None`).
    pub async fn race<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        self.0.ended.race(fut).await
    }

    /// The signal raised when the task ends.
    pub fn signal(&self) -> Arc<StopSignal> {
        self.0.ended.clone()
    }
}
