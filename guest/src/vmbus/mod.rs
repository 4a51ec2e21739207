//! A guest VMBus client that behaves like Linux's `hv_vmbus`: the
//! channel-management protocol a guest speaks before (and beside) any ring.
//!
//! [`VmbusClient`] negotiates the version (INITIATE_CONTACT walking down
//! Linux's order, [`LINUX_VERSIONS`], on connection id 4 from 5.0 and 1
//! before, then the message connection id the host hands back), collects
//! offers until ALLOFFERS_DELIVERED and any that arrive later (sub-channels,
//! hot-added devices), creates GPADLs split as Linux splits them (26 page
//! numbers in GPADL_HEADER, 28 in each GPADL_BODY, handles counting up from
//! [`FIRST_GPADL_HANDLE`]), opens and closes channels, tears GPADLs down,
//! answers rescinds with RELID_RELEASED, and unloads.
//!
//! It is transport-independent: a [`VmbusTransport`] posts its messages
//! (HvPostMessage with a connection id) and tells it when the VMBus SINT
//! was raised. Host messages are read by the client itself out of the SIMP
//! slot of SINT 2 in guest memory, at the offsets of Linux's
//! `struct hv_message`: it copies the payload, clears the slot's message
//! type and, if the message-pending flag was set, asks the transport to
//! signal EOM. Channel interrupts are taken from the SIEFP page's event
//! flags with [`EventFlags`], by whoever handles the guest's SINT
//! interrupt and rings the channels' doorbells.
//!
//! Every host message is copied out of the slot once and parsed from that
//! copy; a short, unknown or unexpected message is an error or is logged
//! and skipped, never a panic.

mod client;
mod events;
mod trace;

pub use client::{
    ClientConfig, FIRST_GPADL_HANDLE, LINUX_VERSIONS, OfferedChannel, TransportError, VmbusClient,
    VmbusError, VmbusTransport,
};
pub use events::EventFlags;
pub use trace::{Direction, TraceEntry, describe, type_name};
