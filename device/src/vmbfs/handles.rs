//! The GPA-direct buffers a guest has registered, by handle, and the
//! buffers it tore down kept for reuse.
//!
//! The UEFI client registers and tears down one buffer per RDMA chunk, so
//! a table that built each buffer afresh would allocate on every read.
//! Torn-down buffers go to a spare list instead (both lists bounded by
//! [`MAX_GPA_DIRECT_BUFFERS`]) and the next setup parses its ranges into
//! one of them, reusing its range and page lists.

use super::buffer::GpaDirectBuffer;
use super::host::MAX_GPA_DIRECT_BUFFERS;
use std::sync::Arc;
use vmbdev_ring::GpaRange;

/// Registered buffers and spares.
#[derive(Debug, Default)]
pub(super) struct GpaDirectTable {
    /// Registered buffers, in registration order (at most
    /// [`MAX_GPA_DIRECT_BUFFERS`], so a linear search is cheapest).
    registered: Vec<(u32, Arc<GpaDirectBuffer>)>,
    /// Torn-down buffers no job holds any more, ready for reuse.
    spares: Vec<Arc<GpaDirectBuffer>>,
}

impl GpaDirectTable {
    /// Number of registered buffers.
    pub(super) fn len(&self) -> usize {
        self.registered.len()
    }

    /// The buffer registered under `handle`.
    pub(super) fn get(&self, handle: u32) -> Option<&Arc<GpaDirectBuffer>> {
        self.registered
            .iter()
            .find(|(h, _)| *h == handle)
            .map(|(_, buffer)| buffer)
    }

    /// Whether `handle` is registered.
    pub(super) fn contains(&self, handle: u32) -> bool {
        self.get(handle).is_some()
    }

    /// Registered handles with their buffers, by ascending handle.
    pub(super) fn sorted(&self) -> Vec<(u32, &GpaDirectBuffer)> {
        let mut entries: Vec<_> = self
            .registered
            .iter()
            .map(|(handle, buffer)| (*handle, &**buffer))
            .collect();
        entries.sort_by_key(|(handle, _)| *handle);
        entries
    }

    /// Registers `handle` (not yet registered, checked by the caller) with
    /// the ranges `fill` writes into a reused range list. A fill that
    /// leaves the list empty registers nothing and returns `false`.
    pub(super) fn insert_with(
        &mut self,
        handle: u32,
        writable: bool,
        fill: impl FnOnce(&mut Vec<GpaRange>),
    ) -> bool {
        let mut buffer = self.spares.pop().unwrap_or_default();
        // Spares are held by nobody else (see `recycle`), so this never
        // copies.
        let inner = Arc::make_mut(&mut buffer);
        inner.writable = writable;
        fill(&mut inner.ranges);
        if inner.ranges.is_empty() {
            self.spares.push(buffer);
            return false;
        }
        self.registered.push((handle, buffer));
        true
    }

    /// Forgets `handle`; whether it was registered.
    pub(super) fn remove(&mut self, handle: u32) -> bool {
        match self.registered.iter().position(|(h, _)| *h == handle) {
            Some(at) => {
                let (_, buffer) = self.registered.swap_remove(at);
                self.recycle(buffer);
                true
            }
            None => false,
        }
    }

    /// Forgets every handle.
    pub(super) fn clear(&mut self) {
        while let Some((_, buffer)) = self.registered.pop() {
            self.recycle(buffer);
        }
    }

    /// Replaces every registration with `buffers` (from saved state).
    pub(super) fn replace(&mut self, buffers: Vec<(u32, GpaDirectBuffer)>) {
        self.clear();
        self.registered = buffers
            .into_iter()
            .map(|(handle, buffer)| (handle, Arc::new(buffer)))
            .collect();
    }

    /// Keeps `buffer` for reuse if no job still holds it and the spare
    /// list has room; drops it otherwise.
    fn recycle(&mut self, buffer: Arc<GpaDirectBuffer>) {
        if Arc::strong_count(&buffer) == 1 && self.spares.len() < MAX_GPA_DIRECT_BUFFERS {
            self.spares.push(buffer);
        }
    }
}
