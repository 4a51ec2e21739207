//! The host side of the VMBus control plane: the channel-management
//! protocol a guest's VMBus driver speaks before (and beside) any ring.
//!
//! This crate owns version negotiation, channel offers for every registered
//! [`VmbusDevice`](vmbdev_device::bus::VmbusDevice), the assembly of guest
//! GPADLs into the [`GpadlRegistry`](vmbdev_ring::GpadlRegistry), opening
//! and closing channels through the device-bus contract, GPADL teardown
//! that waits until the device released the pages, hot-remove rescinds,
//! MODIFYCHANNEL, sub-channel offers a device asks for, and UNLOAD.
//!
//! - [`protocol`]: the message layouts and constants, no logic.
//! - [`server`]: the state machine. It is transport-independent and
//!   synchronous: guest message bytes go in through
//!   [`Server::post_message`](server::Server::post_message), host messages
//!   and actions come out through the [`VmbusHost`]
//!   trait the VMM implements (post into a vCPU's SINT slot, build and
//!   route a channel's doorbells, run a device task, drive a teardown
//!   wait). Work that has to wait (a teardown until the device lets go of
//!   its pages) is handed to the VMM as a future whose output goes back to
//!   the server, so the state machine never blocks and never owns a
//!   thread or an executor.
//!
//! - [`synic`]: a software SynIC (SIMP message slots, SIEFP event flags,
//!   SINT interrupts as doorbells) and [`SynicHost`], which posts the
//!   server's messages through it, for VMMs without an in-kernel one.
//!
//! - [`saved`]: the encoding of the bus's saved state
//!   ([`Server::save`](server::Server::save) /
//!   [`Server::restore`](server::Server::restore)), the devices' own
//!   saved bytes inside it.
//!
//! Not here yet: monitor pages (offers decline them) and the pre-5.0
//! interrupt page.
#![forbid(unsafe_code)]

pub mod protocol;
pub mod saved;
pub mod server;
pub mod synic;

pub use saved::SavedStateError;
pub use server::{
    ChannelDoorbells, ChannelSignal, ConfigError, DeviceId, Dropped, PostResult, Released, Server,
    ServerConfig, TeardownWait, VmbusHost,
};
pub use synic::{Synic, SynicError, SynicHost};
