//! The VMBus ring buffer over guest memory.
//!
//! This crate owns the guest-memory model (the only `unsafe` code in the
//! workspace), GPADLs, the two ring halves of a channel, the packet reader
//! and writer, GPA ranges, pipe framing, doorbells, and the loopback channel
//! pair used by tests, the demo and benchmarks.
#![deny(unsafe_code)]

pub mod gpa;
pub mod memory;

pub use gpa::{GpaError, GpaRange, GpadlRegistry};
pub use memory::{GuestMemory, MemoryError, PAGE_SIZE};
