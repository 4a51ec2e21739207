//! The VMBus ring buffer over guest memory.
//!
//! This crate owns the guest-memory model (the one module of the workspace
//! allowed raw memory access), GPADLs, the two ring halves of a channel, the packet reader
//! and writer, GPA ranges, pipe framing, doorbells, and the loopback channel
//! pair used by tests, the demo and benchmarks.
//!
//! It knows no device protocol and must not depend on the other workspace
//! crates; benchmarks of it live in `vmbdev-bench`.
//!
//! Layering: [`control`] (control page fields) → [`ring`] (one half: index
//! validation, free/available math, wrapped copies) → [`packet`] (wire
//! format) → [`reader`]/[`writer`] (packet I/O, signalling rules, async
//! waits) → [`endpoint`] (a channel side) → [`pipe`] and [`mod@loopback`].
//!
//! ```
//! use futures_lite::future::block_on;
//! use vmbdev_ring::{LoopbackConfig, OutgoingPacket, PacketKind, in_band_ring_len, loopback};
//!
//! let mut lb = loopback(&LoopbackConfig::default()).unwrap();
//! block_on(async {
//!     // Guest driver: send a request.
//!     lb.guest.write(&OutgoingPacket::request(7, b"ping")).await.unwrap();
//!     // Device: reserve room for the worst-case reply, then consume.
//!     lb.host.wait_write_ready(in_band_ring_len(64)).await.unwrap();
//!     let request = lb.host.read().await.unwrap();
//!     assert_eq!(&request.payload[..4], b"ping");
//!     lb.host
//!         .write(&OutgoingPacket::completion(request.transaction_id, b"pong"))
//!         .await
//!         .unwrap();
//!     let reply = lb.guest.read().await.unwrap();
//!     assert_eq!(reply.kind, PacketKind::Completion);
//!     assert_eq!(reply.transaction_id, 7);
//! });
//! ```
#![deny(unsafe_code)]

pub mod control;
mod counted_event;
pub mod doorbell;
pub mod endpoint;
pub mod error;
pub mod executor;
pub mod gpa;
pub mod loopback;
mod mailbox;
pub mod memory;
pub mod packet;
pub mod pipe;
pub mod reader;
pub mod ring;
mod stop;
pub mod writer;

pub use counted_event::{CountedEvent, CountedListener};
pub use doorbell::{Armed, Doorbell, EventDoorbell, EventfdDoorbell, Wait, block_on, wait};
pub use endpoint::{Endpoint, Side, split_gpadl};
pub use error::RingError;
pub use gpa::{GpaError, GpaRange, GpadlGuard, GpadlRegistry, INLINE_PAGES};
pub use loopback::{Loopback, LoopbackConfig, LoopbackError, PageAllocator, loopback};
pub use mailbox::{Mailbox, MailboxConsumer};
pub use memory::{GuestMemory, MemoryError, MemoryRegion, PAGE_SIZE};
pub use packet::{
    BorrowedKind, BorrowedPacket, GpaRangeList, IncomingPacket, OutgoingKind, OutgoingPacket,
    PacketKind, PacketView, TransferPageList, TransferPageRange, gpa_direct_ring_len,
    in_band_ring_len, pipe_data_ring_len,
};
pub use pipe::{PipeError, PipeMessage, PipeMessageRef, WireRanges};
pub use reader::RingReader;
pub use ring::RingHalf;
pub use stop::{StopSignal, StopWait};
pub use writer::{RingWriter, WriteBatch};
