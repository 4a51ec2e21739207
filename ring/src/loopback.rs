//! The in-process loopback channel: one guest memory, a ring GPADL
//! registered in a [`GpadlRegistry`], a host and a guest [`Endpoint`] with
//! event doorbells, and a page allocator for the guest's data buffers.

use crate::doorbell::{Doorbell, EventDoorbell};
use crate::endpoint::{Endpoint, Side};
use crate::error::RingError;
use crate::gpa::{GpaError, GpaRange, GpadlRegistry};
use crate::memory::{GuestMemory, MemoryError, PAGE_SIZE};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// An error building a loopback channel or allocating guest pages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoopbackError {
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The GPADL could not be registered.
    #[error(transparent)]
    Gpa(#[from] GpaError),
    /// The ring could not be opened.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A ring half was asked for with no data pages.
    #[error("ring halves need at least one data page (asked for {incoming} in, {outgoing} out)")]
    NoDataPages {
        /// Guest→host data pages asked for.
        incoming: u32,
        /// Host→guest data pages asked for.
        outgoing: u32,
    },
    /// Not enough free guest pages.
    #[error("cannot allocate {requested} guest pages{}: {free} free", if *.contiguous { " contiguously" } else { "" })]
    OutOfPages {
        /// Pages asked for.
        requested: u64,
        /// Pages free.
        free: u64,
        /// Whether contiguous pages were asked for.
        contiguous: bool,
    },
}

/// Shape of a loopback channel.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    /// Data pages of the guest→host ring half (host incoming).
    pub incoming_pages: u32,
    /// Data pages of the host→guest ring half (host outgoing).
    pub outgoing_pages: u32,
    /// Extra guest pages for buffers, handed out by the [`PageAllocator`].
    pub buffer_pages: u64,
    /// Lay the ring's data pages out in reverse page order, so the ring
    /// code must handle non-contiguous pages.
    pub scatter_ring: bool,
    /// Make [`PageAllocator::alloc`] return non-contiguous pages.
    pub scatter_buffers: bool,
    /// Handle to register the ring GPADL under.
    pub gpadl_handle: u32,
}

impl Default for LoopbackConfig {
    fn default() -> Self {
        Self {
            incoming_pages: 4,
            outgoing_pages: 4,
            buffer_pages: 64,
            scatter_ring: false,
            scatter_buffers: false,
            gpadl_handle: 1,
        }
    }
}

/// A loopback channel and everything around it.
#[derive(Debug)]
pub struct Loopback {
    /// The device side.
    pub host: Endpoint,
    /// The guest side.
    pub guest: Endpoint,
    /// The shared guest memory.
    pub memory: GuestMemory,
    /// The registry holding the ring GPADL.
    pub registry: GpadlRegistry,
    /// Handle of the ring GPADL.
    pub gpadl_handle: u32,
    /// Downstream ring buffer page offset of the ring GPADL.
    pub downstream_offset: u32,
    /// Allocator for guest buffer pages.
    pub pages: PageAllocator,
    /// Doorbell the guest rings for the host.
    pub host_doorbell: Arc<EventDoorbell>,
    /// Doorbell the host rings for the guest.
    pub guest_doorbell: Arc<EventDoorbell>,
}

/// Builds a loopback channel per `config`.
pub fn loopback(config: &LoopbackConfig) -> Result<Loopback, LoopbackError> {
    let (incoming, outgoing) = (
        u64::from(config.incoming_pages),
        u64::from(config.outgoing_pages),
    );
    if incoming == 0 || outgoing == 0 {
        return Err(LoopbackError::NoDataPages {
            incoming: config.incoming_pages,
            outgoing: config.outgoing_pages,
        });
    }
    let ring_pages = 2 + incoming + outgoing;
    let total = ring_pages
        .checked_add(config.buffer_pages)
        .and_then(|p| p.checked_mul(PAGE_SIZE as u64))
        .ok_or(MemoryError::BadSize(u64::MAX))?;
    let memory = GuestMemory::new(total)?;
    let half = |first: u64, data: u64| -> Vec<u64> {
        let mut pages: Vec<u64> = (first..first + 1 + data).collect();
        if config.scatter_ring {
            pages[1..].reverse();
        }
        pages
    };
    let mut gpadl = half(0, incoming);
    gpadl.extend(half(1 + incoming, outgoing));
    let registry = GpadlRegistry::new();
    registry.register(&memory, config.gpadl_handle, gpadl)?;
    let downstream_offset = (1 + incoming) as u32;
    let host_doorbell = Arc::new(EventDoorbell::new());
    let guest_doorbell = Arc::new(EventDoorbell::new());
    let host_bell: Arc<dyn Doorbell> = host_doorbell.clone();
    let guest_bell: Arc<dyn Doorbell> = guest_doorbell.clone();
    let host = Endpoint::open_gpadl(
        Side::Host,
        &memory,
        &registry,
        config.gpadl_handle,
        downstream_offset,
        host_bell.clone(),
        guest_bell.clone(),
    )?;
    let guest = Endpoint::open_gpadl(
        Side::Guest,
        &memory,
        &registry,
        config.gpadl_handle,
        downstream_offset,
        guest_bell,
        host_bell,
    )?;
    Ok(Loopback {
        host,
        guest,
        pages: PageAllocator::new(
            ring_pages..ring_pages + config.buffer_pages,
            config.scatter_buffers,
        ),
        memory,
        registry,
        gpadl_handle: config.gpadl_handle,
        downstream_offset,
        host_doorbell,
        guest_doorbell,
    })
}

/// Hands out free guest pages for buffers. Cheap to clone; clones share
/// the free list.
#[derive(Debug, Clone)]
pub struct PageAllocator {
    free: Arc<Mutex<BTreeSet<u64>>>,
    scatter: bool,
}

impl PageAllocator {
    /// An allocator over the page numbers in `pages`. With `scatter`,
    /// [`alloc`](Self::alloc) returns pages in descending order (never
    /// contiguous in ring order).
    pub fn new(pages: std::ops::Range<u64>, scatter: bool) -> Self {
        Self {
            free: Arc::new(Mutex::new(pages.collect())),
            scatter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of free pages.
    pub fn free_pages(&self) -> u64 {
        self.lock().len() as u64
    }

    /// Allocates `count` pages (contiguous unless the allocator scatters or
    /// the free list is fragmented).
    pub fn alloc(&self, count: u64) -> Result<Vec<u64>, LoopbackError> {
        let mut free = self.lock();
        if count > free.len() as u64 {
            return Err(LoopbackError::OutOfPages {
                requested: count,
                free: free.len() as u64,
                contiguous: false,
            });
        }
        let pages: Vec<u64> = if self.scatter {
            free.iter().rev().take(count as usize).copied().collect()
        } else {
            free.iter().take(count as usize).copied().collect()
        };
        for page in &pages {
            free.remove(page);
        }
        Ok(pages)
    }

    /// Allocates `count` consecutive pages.
    pub fn alloc_contiguous(&self, count: u64) -> Result<Vec<u64>, LoopbackError> {
        let mut free = self.lock();
        let mut run_start = None;
        let mut run_len = 0u64;
        let mut prev: Option<u64> = None;
        for &page in free.iter() {
            if prev.is_some_and(|p| p + 1 == page) {
                run_len += 1;
            } else {
                run_start = Some(page);
                run_len = 1;
            }
            prev = Some(page);
            if run_len == count {
                break;
            }
        }
        match run_start {
            Some(start) if count > 0 && run_len == count => {
                let pages: Vec<u64> = (start..start + count).collect();
                for page in &pages {
                    free.remove(page);
                }
                Ok(pages)
            }
            _ if count == 0 => Ok(Vec::new()),
            _ => Err(LoopbackError::OutOfPages {
                requested: count,
                free: free.len() as u64,
                contiguous: true,
            }),
        }
    }

    /// Allocates pages for a `byte_count`-byte buffer at offset 0 and
    /// returns it as a [`GpaRange`].
    pub fn alloc_range(&self, byte_count: u32) -> Result<GpaRange, LoopbackError> {
        let pages = self.alloc(u64::from(byte_count).div_ceil(PAGE_SIZE as u64))?;
        GpaRange::new(byte_count, 0, pages.clone()).map_err(|e| {
            self.free(&pages);
            e.into()
        })
    }

    /// Returns pages to the free list.
    pub fn free(&self, pages: &[u64]) {
        self.lock().extend(pages.iter().copied());
    }
}
