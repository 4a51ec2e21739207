//! The control page at the start of each ring half: field offsets and
//! atomic accessors. Values loaded here are raw and untrusted; the ring
//! validates indices on every load.

use crate::memory::{AtomicPage, GuestMemory, MemoryError};
use std::sync::atomic::Ordering;

/// Offset of the write index ("in"), written by the writer.
pub const WRITE_INDEX_OFFSET: u64 = 0x00;
/// Offset of the read index ("out"), written by the reader.
pub const READ_INDEX_OFFSET: u64 = 0x04;
/// Offset of the interrupt mask, written by the reader.
pub const INTERRUPT_MASK_OFFSET: u64 = 0x08;
/// Offset of the pending send size, written by the writer.
pub const PENDING_SEND_SIZE_OFFSET: u64 = 0x0C;
/// Offset of the feature bits, set by the host.
pub const FEATURE_BITS_OFFSET: u64 = 0x40;
/// Feature bit 0: the host honours `pending_send_size`.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// Atomic access to one ring half's control page.
#[derive(Debug, Clone)]
pub struct ControlPage {
    /// Resolved once: every index load and store of the ring goes here.
    page: AtomicPage,
}

impl ControlPage {
    /// The control page at page-aligned `gpa` of `memory`; fails if the page
    /// is not inside guest memory.
    pub fn new(memory: GuestMemory, gpa: u64) -> Result<Self, MemoryError> {
        Ok(Self {
            page: AtomicPage::new(memory, gpa)?,
        })
    }

    /// Guest physical address of the page.
    pub fn gpa(&self) -> u64 {
        self.page.gpa()
    }

    // Every offset is a 4-aligned constant below 0x44, so the field is
    // always inside the page.
    fn load(&self, offset: u64, order: Ordering) -> u32 {
        u32::from_le(self.page.u32_at(offset as usize).load(order))
    }

    fn store(&self, offset: u64, value: u32, order: Ordering) {
        self.page
            .u32_at(offset as usize)
            .store(value.to_le(), order);
    }

    /// Raw write index.
    pub fn write_index(&self, order: Ordering) -> u32 {
        self.load(WRITE_INDEX_OFFSET, order)
    }
    /// Stores the write index.
    pub fn set_write_index(&self, value: u32, order: Ordering) {
        self.store(WRITE_INDEX_OFFSET, value, order)
    }
    /// Raw read index.
    pub fn read_index(&self, order: Ordering) -> u32 {
        self.load(READ_INDEX_OFFSET, order)
    }
    /// Stores the read index.
    pub fn set_read_index(&self, value: u32, order: Ordering) {
        self.store(READ_INDEX_OFFSET, value, order)
    }
    /// Raw interrupt mask (non-zero: the reader wants no signal).
    pub fn interrupt_mask(&self, order: Ordering) -> u32 {
        self.load(INTERRUPT_MASK_OFFSET, order)
    }
    /// Stores the interrupt mask.
    pub fn set_interrupt_mask(&self, value: u32, order: Ordering) {
        self.store(INTERRUPT_MASK_OFFSET, value, order)
    }
    /// Raw pending send size (non-zero: the writer wants a signal once this
    /// much is free).
    pub fn pending_send_size(&self, order: Ordering) -> u32 {
        self.load(PENDING_SEND_SIZE_OFFSET, order)
    }
    /// Stores the pending send size.
    pub fn set_pending_send_size(&self, value: u32, order: Ordering) {
        self.store(PENDING_SEND_SIZE_OFFSET, value, order)
    }
    /// Raw feature bits.
    pub fn feature_bits(&self) -> u32 {
        self.load(FEATURE_BITS_OFFSET, Ordering::Relaxed)
    }
    /// Stores the feature bits.
    pub fn set_feature_bits(&self, value: u32) {
        self.store(FEATURE_BITS_OFFSET, value, Ordering::Relaxed)
    }
}
