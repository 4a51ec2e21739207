//! A software SynIC: the guest-visible half of Hyper-V's synthetic interrupt
//! controller, for tests, the demo and any VMM without an in-kernel one.
//!
//! It owns, per vCPU, the guest-given addresses of the SIMP page (16
//! message slots of 256 bytes, one per SINT) and the SIEFP page (2048 event
//! flags per SINT), and a doorbell per SINT that stands for its interrupt.
//! It writes host messages into free slots, sets the message-pending flag
//! on a full one, and sets event flags; the queue of messages waiting for a
//! slot stays in the [`Server`], which [`SynicHost`] connects to it: the
//! host's message posting goes through the SynIC, and the guest's EOM
//! ([`SynicHost::eom`]) hands the freed slot back to the server.
//!
//! The guest side of the same pages ([`Synic::read_slot`],
//! [`Synic::clear_slot`], [`Synic::take_flag`]) is here too, so a guest
//! client in the same process reads them the way a guest kernel does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use vmbdev_device::bus::ChannelTask;
use vmbdev_ring::doorbell::DoorbellWait;
use vmbdev_ring::{Doorbell, GuestMemory, MemoryError, PAGE_SIZE};

use crate::server::{ChannelDoorbells, ChannelSignal, PostResult, Server, TeardownWait, VmbusHost};

/// SINTs per vCPU.
pub const SINT_COUNT: usize = 16;
/// Bytes of one SIMP message slot.
pub const SLOT_SIZE: u64 = 256;
/// Bytes of payload a slot holds.
pub const PAYLOAD_MAX: usize = 240;
/// Offset of the payload in a slot, after the 16-byte header.
pub const PAYLOAD_OFFSET: u64 = 16;
/// Event flags per SINT in the SIEFP page.
pub const FLAGS_PER_SINT: u32 = 2048;
/// The slot's message type for a VMBus channel message (0 is "none").
pub const VMBUS_MESSAGE_TYPE: u32 = 1;
/// The message-pending bit of the slot's flags byte, as a bit of the
/// slot's first 64-bit word (type u32, size u8, flags u8, reserved u16).
const PENDING_BIT: u64 = 1 << 40;

/// Why a SynIC register write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SynicError {
    /// No such vCPU.
    #[error("no vCPU {0}")]
    NoVp(u32),
    /// No such SINT.
    #[error("no SINT {0}")]
    NoSint(u8),
    /// The page address is not page-aligned.
    #[error("page address {0:#x} is not page-aligned")]
    Unaligned(u64),
    /// The page is not (wholly) guest memory.
    #[error("page at {gpa:#x}: {source}")]
    Memory {
        /// The address given.
        gpa: u64,
        /// What the memory said.
        source: MemoryError,
    },
}

#[derive(Default)]
struct Vp {
    simp: Option<u64>,
    siefp: Option<u64>,
    interrupts: [Option<Arc<dyn Doorbell>>; SINT_COUNT],
}

/// The SynIC state of every vCPU over one guest memory.
pub struct Synic {
    memory: GuestMemory,
    vps: Vec<Vp>,
}

impl std::fmt::Debug for Synic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pages: Vec<_> = self.vps.iter().map(|v| (v.simp, v.siefp)).collect();
        f.debug_struct("Synic").field("pages", &pages).finish()
    }
}

impl Synic {
    /// A SynIC for `vp_count` vCPUs, every page disabled.
    pub fn new(memory: GuestMemory, vp_count: u32) -> Self {
        let vps = (0..vp_count).map(|_| Vp::default()).collect();
        Self { memory, vps }
    }

    /// The guest set (or, with `None`, disabled) vCPU `vp`'s SIMP page.
    pub fn set_simp(&mut self, vp: u32, gpa: Option<u64>) -> Result<(), SynicError> {
        let page = self.check_page(gpa)?;
        self.vp_mut(vp)?.simp = page;
        Ok(())
    }

    /// The guest set (or disabled) vCPU `vp`'s SIEFP page.
    pub fn set_siefp(&mut self, vp: u32, gpa: Option<u64>) -> Result<(), SynicError> {
        let page = self.check_page(gpa)?;
        self.vp_mut(vp)?.siefp = page;
        Ok(())
    }

    /// The doorbell that raises `sint` on vCPU `vp` (its interrupt).
    pub fn connect_interrupt(
        &mut self,
        vp: u32,
        sint: u8,
        bell: Arc<dyn Doorbell>,
    ) -> Result<(), SynicError> {
        let index = sint_index(sint).ok_or(SynicError::NoSint(sint))?;
        self.vp_mut(vp)?.interrupts[index] = Some(bell);
        Ok(())
    }

    fn check_page(&self, gpa: Option<u64>) -> Result<Option<u64>, SynicError> {
        let Some(gpa) = gpa else { return Ok(None) };
        if gpa % PAGE_SIZE as u64 != 0 {
            return Err(SynicError::Unaligned(gpa));
        }
        self.memory
            .check_range(gpa, PAGE_SIZE as u64)
            .map_err(|source| SynicError::Memory { gpa, source })?;
        Ok(Some(gpa))
    }

    fn vp_mut(&mut self, vp: u32) -> Result<&mut Vp, SynicError> {
        self.vps.get_mut(vp as usize).ok_or(SynicError::NoVp(vp))
    }

    /// Where the slot of `sint` on `vp` is, if the SIMP is enabled.
    fn slot(&self, vp: u32, sint: u8) -> Option<u64> {
        let index = sint_index(sint)?;
        let simp = self.vps.get(vp as usize)?.simp?;
        Some(simp + index as u64 * SLOT_SIZE)
    }

    /// Where the event flags of `sint` on `vp` are, if the SIEFP is enabled.
    fn flags(&self, vp: u32, sint: u8) -> Option<u64> {
        let index = sint_index(sint)?;
        let siefp = self.vps.get(vp as usize)?.siefp?;
        Some(siefp + index as u64 * u64::from(FLAGS_PER_SINT / 8))
    }

    fn interrupt(&self, vp: u32, sint: u8) {
        let bell = sint_index(sint).and_then(|i| self.vps.get(vp as usize)?.interrupts[i].as_ref());
        if let Some(bell) = bell {
            bell.signal();
        }
    }

    /// Writes `payload` as a VMBus message into the slot of `sint` on `vp`
    /// and raises the SINT. If the slot still holds a message, sets its
    /// message-pending flag instead and returns [`PostResult::SlotFull`]:
    /// the guest's EOM says when to try again. A message that no EOM will
    /// ever make room for (no such vCPU or SINT, the SIMP disabled, a
    /// payload longer than a slot) is [`PostResult::Undeliverable`].
    pub fn post_message(&self, vp: u32, sint: u8, payload: &[u8]) -> PostResult {
        let Some(slot) = self.slot(vp, sint) else {
            return PostResult::Undeliverable;
        };
        if payload.len() > PAYLOAD_MAX {
            return PostResult::Undeliverable;
        }
        // Setting the pending bit and seeing whether the slot is taken is
        // one atomic step: a guest that clears the slot after it sees the
        // bit and writes EOM, one that cleared it before leaves type 0.
        let Ok(old) = self
            .memory
            .fetch_or_u64(slot, PENDING_BIT, Ordering::SeqCst)
        else {
            return PostResult::Undeliverable;
        };
        if old as u32 != 0 {
            return PostResult::SlotFull;
        }
        if self.memory.write(slot + 8, &[0; 8]).is_err()
            || self.memory.write(slot + PAYLOAD_OFFSET, payload).is_err()
        {
            return PostResult::Undeliverable;
        }
        // The type goes last (with the size, flags cleared): the guest
        // reads a slot once its type is not 0.
        let head = u64::from(VMBUS_MESSAGE_TYPE) | (payload.len() as u64) << 32;
        if self
            .memory
            .store_u64(slot, head, Ordering::Release)
            .is_err()
        {
            return PostResult::Undeliverable;
        }
        self.interrupt(vp, sint);
        PostResult::Posted
    }

    /// Sets event flag `flag` of `sint` on `vp` and raises the SINT.
    /// `false` when the SIEFP is disabled or the flag is out of range.
    pub fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> bool {
        let Some((word, bit)) = self.flag_word(vp, sint, flag) else {
            return false;
        };
        if self
            .memory
            .fetch_or_u64(word, bit, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        self.interrupt(vp, sint);
        true
    }

    /// A doorbell that does what [`signal_event`](Self::signal_event)
    /// does for `flag` of `sint` on `vp`, with the page address and the
    /// SINT's interrupt read now: ringing it takes no lock. `None` while
    /// the SIEFP page is disabled, the SINT has no interrupt or the flag is
    /// out of range. A page or interrupt the guest moves later is not
    /// followed: build the doorbell again.
    pub fn event_doorbell(&self, vp: u32, sint: u8, flag: u32) -> Option<EventFlagDoorbell> {
        let (word, bit) = self.flag_word(vp, sint, flag)?;
        let interrupt = self.vps.get(vp as usize)?.interrupts[sint_index(sint)?].clone()?;
        Some(EventFlagDoorbell {
            memory: self.memory.clone(),
            word,
            bit,
            interrupt,
        })
    }

    fn flag_word(&self, vp: u32, sint: u8, flag: u32) -> Option<(u64, u64)> {
        if flag >= FLAGS_PER_SINT {
            return None;
        }
        let base = self.flags(vp, sint)?;
        Some((base + u64::from(flag / 64) * 8, 1 << (flag % 64)))
    }

    /// Guest side: copies the message in the slot of `sint` on `vp` into
    /// `buf`; returns its payload length, or `None` if the slot is empty
    /// (or the SIMP disabled). A size past the slot is cut to the slot.
    pub fn read_slot(&self, vp: u32, sint: u8, buf: &mut [u8; PAYLOAD_MAX]) -> Option<usize> {
        let slot = self.slot(vp, sint)?;
        let head = self.memory.load_u64(slot, Ordering::Acquire).ok()?;
        if head as u32 == 0 {
            return None;
        }
        let len = ((head >> 32) as u8 as usize).min(PAYLOAD_MAX);
        self.memory
            .read(slot + PAYLOAD_OFFSET, &mut buf[..len])
            .ok()?;
        Some(len)
    }

    /// Guest side: empties the slot of `sint` on `vp`; returns whether the
    /// message-pending flag was set (the guest then writes EOM).
    pub fn clear_slot(&self, vp: u32, sint: u8) -> bool {
        let Some(slot) = self.slot(vp, sint) else {
            return false;
        };
        // Clearing the type and reading the flag in one step, so a pending
        // bit set just before is never missed.
        let mask = !u64::from(u32::MAX);
        self.memory
            .fetch_and_u64(slot, mask, Ordering::SeqCst)
            .is_ok_and(|old| old & PENDING_BIT != 0)
    }

    /// Guest side: tests and clears event flag `flag` of `sint` on `vp`.
    pub fn take_flag(&self, vp: u32, sint: u8, flag: u32) -> bool {
        let Some((word, bit)) = self.flag_word(vp, sint, flag) else {
            return false;
        };
        self.memory
            .fetch_and_u64(word, !bit, Ordering::SeqCst)
            .is_ok_and(|old| old & bit != 0)
    }
}

/// A channel's host→guest doorbell as Hyper-V rings it: sets the
/// channel's event flag in the target vCPU's SIEFP page, then raises the
/// SINT. Made by [`Synic::event_doorbell`].
pub struct EventFlagDoorbell {
    memory: GuestMemory,
    word: u64,
    bit: u64,
    interrupt: Arc<dyn Doorbell>,
}

impl std::fmt::Debug for EventFlagDoorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFlagDoorbell")
            .field("word", &format_args!("{:#x}", self.word))
            .field("bit", &self.bit.trailing_zeros())
            .finish_non_exhaustive()
    }
}

impl Doorbell for EventFlagDoorbell {
    fn signal(&self) {
        // The flag is set before the interrupt, so the guest's handler
        // finds it; a flag word outside guest memory was refused when the
        // page was set, so this cannot fail short of the memory shrinking.
        if self
            .memory
            .fetch_or_u64(self.word, self.bit, Ordering::SeqCst)
            .is_ok()
        {
            self.interrupt.signal();
        }
    }

    /// Completes on the SINT's next interrupt (the device side never
    /// waits on this doorbell; a guest in the same process may).
    fn listen(&self) -> DoorbellWait {
        self.interrupt.listen()
    }
}

fn sint_index(sint: u8) -> Option<usize> {
    let index = usize::from(sint);
    (index < SINT_COUNT).then_some(index)
}

/// A [`VmbusHost`] whose message posting goes through a software SynIC;
/// everything else is the wrapped host's.
#[derive(Debug)]
pub struct SynicHost<H> {
    /// The SynIC messages are posted to.
    pub synic: Synic,
    /// What handles doorbells, device tasks and teardown waits.
    pub inner: H,
}

impl<H: VmbusHost> SynicHost<H> {
    /// Posts through `synic`, the rest through `inner`.
    pub fn new(synic: Synic, inner: H) -> Self {
        Self { synic, inner }
    }

    /// The guest wrote EOM (on any vCPU): the server posts what waits for
    /// a slot, oldest first, until a slot is full again. The queue is the
    /// server's, bounded by its
    /// [`ServerConfig::queue_limit`](crate::ServerConfig::queue_limit).
    pub fn eom(&mut self, server: &mut Server) {
        server.slot_freed(self);
    }
}

impl<H: VmbusHost> VmbusHost for SynicHost<H> {
    fn post_message(&mut self, vp: u32, sint: u8, message: &[u8]) -> PostResult {
        self.synic.post_message(vp, sint, message)
    }

    fn open_doorbells(&mut self, signal: &ChannelSignal) -> ChannelDoorbells {
        self.inner.open_doorbells(signal)
    }

    fn retarget(&mut self, signal: &ChannelSignal) {
        self.inner.retarget(signal);
    }

    fn close_doorbells(&mut self, relid: u32) {
        self.inner.close_doorbells(relid);
    }

    fn start_channel(&mut self, relid: u32, task: ChannelTask) {
        self.inner.start_channel(relid, task);
    }

    fn wait_teardown(&mut self, wait: TeardownWait) {
        self.inner.wait_teardown(wait);
    }
}
