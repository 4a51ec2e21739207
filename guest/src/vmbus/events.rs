//! The guest's side of channel interrupts: before it raises the VMBus
//! SINT for a channel, the host sets the channel's bit (its relid) in that
//! SINT's event flags in the SIEFP page. The guest's interrupt handler
//! takes every set bit (clearing it) and runs the channel's callback, as
//! Linux's `vmbus_chan_sched` does; a bit that stays set is seen on the
//! next interrupt, so none is lost.

use std::sync::atomic::Ordering;

use vmbdev_protocol::vmbus::EVENT_FLAGS_PER_SINT;
use vmbdev_ring::{GuestMemory, MemoryError, PAGE_SIZE};

/// The event flags of one SINT in a vCPU's SIEFP page.
#[derive(Debug, Clone)]
pub struct EventFlags {
    memory: GuestMemory,
    /// Address of the SINT's first flag word.
    base: u64,
}

/// Bytes of one SINT's flags.
const SINT_FLAG_BYTES: u64 = EVENT_FLAGS_PER_SINT as u64 / 8;

impl EventFlags {
    /// The flags of `sint` in the SIEFP page at `siefp` (a page address).
    pub fn new(memory: GuestMemory, siefp: u64, sint: u8) -> Self {
        debug_assert!(siefp % PAGE_SIZE as u64 == 0);
        Self {
            memory,
            base: siefp + u64::from(sint) * SINT_FLAG_BYTES,
        }
    }

    /// Tests and clears the flag of `relid`; `false` for a relid past the
    /// flags.
    pub fn take(&self, relid: u32) -> Result<bool, MemoryError> {
        if relid >= EVENT_FLAGS_PER_SINT {
            return Ok(false);
        }
        let word = self.base + u64::from(relid / 64) * 8;
        let bit = 1u64 << (relid % 64);
        let old = self.memory.fetch_and_u64(word, !bit, Ordering::SeqCst)?;
        Ok(old & bit != 0)
    }

    /// Takes every set flag below `relid_limit` (clearing it), lowest
    /// relid first, and calls `on_set` for each. Words with no flag set
    /// are only read.
    pub fn take_all(
        &self,
        relid_limit: u32,
        mut on_set: impl FnMut(u32),
    ) -> Result<(), MemoryError> {
        let limit = relid_limit.min(EVENT_FLAGS_PER_SINT);
        for word_index in 0..limit.div_ceil(64) {
            let word = self.base + u64::from(word_index) * 8;
            if self.memory.load_u64(word, Ordering::Acquire)? == 0 {
                continue;
            }
            let first = word_index * 64;
            let mask = match limit - first {
                n if n >= 64 => u64::MAX,
                n => (1u64 << n) - 1,
            };
            let mut set = self.memory.fetch_and_u64(word, !mask, Ordering::SeqCst)? & mask;
            while set != 0 {
                let bit = set.trailing_zeros();
                on_set(first + bit);
                set &= set - 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets flags the way the host does: bit `relid % 64` of word
    /// `relid / 64` of the SINT's 256 bytes.
    fn set(memory: &GuestMemory, siefp: u64, sint: u8, relid: u32) {
        let word = siefp + u64::from(sint) * 256 + u64::from(relid / 64) * 8;
        memory
            .fetch_or_u64(word, 1 << (relid % 64), Ordering::SeqCst)
            .unwrap();
    }

    #[test]
    fn set_flags_are_taken_once_lowest_first_and_others_left_alone() {
        let memory = GuestMemory::new(4 * PAGE_SIZE as u64).unwrap();
        let siefp = PAGE_SIZE as u64;
        let flags = EventFlags::new(memory.clone(), siefp, 2);
        for relid in [1, 63, 64, 130, 2047] {
            set(&memory, siefp, 2, relid);
        }
        // Another SINT's flag and a relid past the limit stay set.
        set(&memory, siefp, 3, 1);
        let mut seen = Vec::new();
        flags.take_all(131, |relid| seen.push(relid)).unwrap();
        assert_eq!(seen, [1, 63, 64, 130]);
        seen.clear();
        flags.take_all(131, |relid| seen.push(relid)).unwrap();
        assert!(seen.is_empty(), "each flag is taken once");
        assert!(flags.take(2047).unwrap());
        assert!(!flags.take(2047).unwrap());
        assert!(!flags.take(5000).unwrap());
        assert!(EventFlags::new(memory.clone(), siefp, 3).take(1).unwrap());
    }
}
