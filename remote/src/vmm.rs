//! A minimal VMM side of the bus as a real VMM wires it: guest memory in
//! a sealed memfd, eventfd doorbells, ring GPADLs from a page allocator,
//! each device channel task on a thread of its own, and sub-channels
//! offered when the device asks. Works with any
//! [`VmbusDevice`]: a local one, or a [`RemoteDevice`](crate::RemoteDevice)
//! whose tasks then run in the device process and whose eventfds are
//! passed as they are. Tests, benchmarks and the examples drive guest
//! drivers over the guest endpoints it returns.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmbdev_device::bus::{BusError, ChannelError, OpenRequest, SubChannelControl, VmbusDevice};
use vmbdev_ring::{
    Endpoint, EventfdDoorbell, GpaError, GpadlRegistry, GuestMemory, LoopbackError, MemoryError,
    PAGE_SIZE, PageAllocator, RingError, Side,
};

/// An error of the VMM side.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Guest memory could not be created or written.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// Guest pages ran out.
    #[error("guest pages: {0}")]
    Pages(#[from] LoopbackError),
    /// A ring GPADL could not be registered.
    #[error("ring GPADL: {0}")]
    Gpadl(#[from] GpaError),
    /// The guest side of a ring could not be opened.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// The device refused the open.
    #[error("device: {0}")]
    Bus(#[from] BusError),
    /// An eventfd or a thread could not be created.
    #[error("{0}")]
    Os(#[from] std::io::Error),
    /// A sub-channel the device did not ask for.
    #[error("sub-channel {index} was not offered ({offered} are)")]
    NotOffered {
        /// Index asked for.
        index: u16,
        /// Sub-channels offered.
        offered: u16,
    },
}

/// One channel's ring and doorbells, kept to reopen the device side.
struct Ring {
    index: u16,
    gpadl: u32,
    downstream_offset: u32,
    /// Rung by the guest for the device.
    host_bell: EventfdDoorbell,
    /// Rung by the device for the guest.
    guest_bell: EventfdDoorbell,
    task: Option<JoinHandle<Result<(), ChannelError>>>,
}

struct State {
    device: Arc<dyn VmbusDevice>,
    rings: Vec<Ring>,
}

/// What the device asked for, as the VMM records it.
struct Offered {
    count: AtomicU16,
    most: u16,
}

impl SubChannelControl for Offered {
    fn enable_sub_channels(&self, count: u16) -> Result<(), BusError> {
        if count > self.most {
            return Err(BusError::SubChannelsUnsupported { requested: count });
        }
        self.count.store(count, Ordering::Release);
        Ok(())
    }
}

/// The VMM side: memory, GPADLs, rings and device channel threads.
pub struct EventfdVm {
    memory: GuestMemory,
    gpadls: GpadlRegistry,
    pages: PageAllocator,
    ring_pages: u32,
    next_gpadl: AtomicU32,
    offered: Arc<Offered>,
    state: Mutex<State>,
}

impl std::fmt::Debug for EventfdVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventfdVm")
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl EventfdVm {
    /// A VM of `memory_pages` zeroed pages (guest data buffers come from
    /// the same pages as rings; `scatter` hands them out non-contiguous)
    /// for `device`, rings of `ring_pages` data pages per direction, and at
    /// most `max_sub_channels` sub-channels.
    pub fn new(
        device: Arc<dyn VmbusDevice>,
        memory_pages: u64,
        ring_pages: u32,
        max_sub_channels: u16,
        scatter: bool,
    ) -> Result<Self, VmmError> {
        Ok(Self {
            memory: GuestMemory::new(memory_pages * PAGE_SIZE as u64)?,
            gpadls: GpadlRegistry::new(),
            pages: PageAllocator::new(0..memory_pages, scatter),
            ring_pages: ring_pages.max(1),
            next_gpadl: AtomicU32::new(1),
            offered: Arc::new(Offered {
                count: AtomicU16::new(0),
                most: max_sub_channels,
            }),
            state: Mutex::new(State {
                device,
                rings: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The allocator of free guest pages.
    pub fn pages(&self) -> &PageAllocator {
        &self.pages
    }

    /// Sub-channels the device asked the VMM to offer.
    pub fn offered_sub_channels(&self) -> u16 {
        self.offered.count.load(Ordering::Acquire)
    }

    /// Opens channel `index` as a guest would (sub-channels only once
    /// offered): fresh zeroed ring pages as a new GPADL, the device's open
    /// on its thread, and the guest's endpoint returned.
    pub fn open_channel(&self, index: u16) -> Result<Endpoint, VmmError> {
        let offered = self.offered_sub_channels();
        if index > offered {
            return Err(VmmError::NotOffered { index, offered });
        }
        let count = 2 + 2 * u64::from(self.ring_pages);
        let pages = self.pages.alloc(count)?;
        for &page in &pages {
            self.memory
                .fill(page * PAGE_SIZE as u64, PAGE_SIZE as u64, 0)?;
        }
        let gpadl = self.next_gpadl.fetch_add(1, Ordering::Relaxed);
        self.gpadls.register(&self.memory, gpadl, pages.clone())?;
        let downstream_offset = 1 + self.ring_pages;
        let mut ring = Ring {
            index,
            gpadl,
            downstream_offset,
            host_bell: EventfdDoorbell::new()?,
            guest_bell: EventfdDoorbell::new()?,
            task: None,
        };
        let guest = Endpoint::open(
            Side::Guest,
            &self.memory,
            &pages,
            downstream_offset,
            Arc::new(ring.guest_bell.clone()),
            Arc::new(ring.host_bell.clone()),
        )?;
        let mut state = self.lock();
        self.start(&state.device.clone(), &mut ring)?;
        state.rings.push(ring);
        Ok(guest)
    }

    fn start(&self, device: &Arc<dyn VmbusDevice>, ring: &mut Ring) -> Result<(), VmmError> {
        let mut request = OpenRequest::from_gpadl(
            self.memory.clone(),
            self.gpadls.clone(),
            ring.gpadl,
            ring.downstream_offset,
            Arc::new(ring.host_bell.clone()),
            Arc::new(ring.guest_bell.clone()),
        )?;
        request.sub_channels = self.offered.clone();
        let task = device.open(ring.index, request)?;
        ring.task = Some(
            std::thread::Builder::new()
                .name(format!("vmm-channel-{}", ring.index))
                .spawn(move || vmbdev_ring::block_on(task))?,
        );
        Ok(())
    }

    /// Whether the device task of every channel has ended.
    pub fn all_ended(&self) -> bool {
        self.lock()
            .rings
            .iter()
            .all(|r| r.task.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Waits for every device task that has ended and returns how each
    /// ended, by channel index (running ones are left alone).
    pub fn finished(&self) -> Vec<(u16, Result<(), ChannelError>)> {
        let mut state = self.lock();
        let mut done = Vec::new();
        for ring in &mut state.rings {
            if ring.task.as_ref().is_some_and(|t| t.is_finished()) {
                if let Some(task) = ring.task.take() {
                    done.push((ring.index, join(ring.index, task)));
                }
            }
        }
        done
    }

    /// Closes every channel's device task (keeping rings and guest sides)
    /// and returns how each ended: the step before saving.
    pub fn suspend(&self) -> Vec<(u16, Result<(), ChannelError>)> {
        let (device, tasks) = {
            let mut state = self.lock();
            let tasks: Vec<_> = state
                .rings
                .iter_mut()
                .filter_map(|r| r.task.take().map(|t| (r.index, t)))
                .collect();
            (state.device.clone(), tasks)
        };
        for (index, _) in &tasks {
            if let Err(e) = device.close(*index) {
                tracing::debug!(index, error = %e, "vmm: close failed");
            }
        }
        tasks
            .into_iter()
            .map(|(index, task)| (index, join(index, task)))
            .collect()
    }

    /// Serves every ring with `device` (e.g. restored from saved state,
    /// possibly in a new process). Call [`suspend`](Self::suspend) first.
    pub fn resume(&self, device: Arc<dyn VmbusDevice>) -> Result<(), VmmError> {
        let mut state = self.lock();
        state.device = device.clone();
        for ring in &mut state.rings {
            self.start(&device, ring)?;
        }
        Ok(())
    }

    /// The device serving the rings.
    pub fn device(&self) -> Arc<dyn VmbusDevice> {
        self.lock().device.clone()
    }
}

impl Drop for EventfdVm {
    fn drop(&mut self) {
        self.suspend();
    }
}

fn join(index: u16, task: JoinHandle<Result<(), ChannelError>>) -> Result<(), ChannelError> {
    task.join().unwrap_or_else(|_| {
        Err(ChannelError::Protocol {
            channel: index,
            source: "the channel thread panicked".into(),
        })
    })
}
