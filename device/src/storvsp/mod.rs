//! The storvsp host: the vstor protocol state machine of one channel, the
//! LUN map shared by a controller's channels, and the SRB jobs that move
//! data between the disks and guest pages.
//!
//! Nothing here touches a ring. The glue feeds one received packet to
//! [`StorvspChannel::handle`] (payload bytes, the GPA ranges of a GPA-direct
//! packet, the transaction id) and gets an [`Outcome`]: a completion to
//! send, a request to offer sub-channels, an [`SrbJob`] to run, or a
//! protocol violation. [`SrbJob::run`] is the only function that does
//! blocking I/O, so an async layer can run jobs on a blocking pool and
//! complete them out of order on the channel they came from.
//!
//! # Protocol violations
//!
//! storvsp **fails the packet**: a packet that is not a vstor request (a
//! payload shorter than the 12-byte vstor header, a transfer-page packet,
//! a completion sent by the guest, a request that does not ask for a
//! completion) is counted under its kind in the device's
//! [`ViolationLog`](crate::violation::ViolationLog) (see
//! [`StorvspStats::violation_log`]), logged at the shared rate limit, and
//! dropped without a completion; the channel keeps serving. The ring
//! frames every packet, so one bad packet cannot desynchronise the
//! stream, and stopping would also abandon the other requests in flight
//! on the channel. A request that is a valid vstor packet but asks for
//! something wrong is not a violation: it is answered with an error
//! status. Only a ring the reader cannot frame any more (bad indices, a
//! malformed descriptor) **stops the channel**, counted as
//! `ring failure`, and the task ends with
//! [`ChannelError::Ring`](crate::bus::ChannelError::Ring): after that no
//! packet boundary can be trusted.
//!
//! The parts: `config` (controller settings and the LUN map), `packet`
//! (requests, completions and notifications), `channel` (the init/version
//! state machine), `srb` (checking and running SRBs), [`saved`] (saved
//! state and its encoding), `runner` (serving a channel's rings),
//! `device` (a controller's channels, [`StorvspDevice`]) and [`vmbus`]
//! (its [`VmbusDevice`](crate::bus::VmbusDevice) implementation, the only
//! way a VMM drives it).

mod channel;
mod config;
mod packet;
mod srb;

mod device;
mod runner;
pub mod saved;
pub mod vmbus;

pub use channel::{InitState, Outcome, StorvspChannel};
pub use config::{
    ConfigError, Controller, DEFAULT_MAX_TRANSFER_BYTES, LunAddress, MAX_MAX_TRANSFER_BYTES,
    StorvspConfig,
};
pub use device::{SavedDevice, StorvspDevice};
pub use packet::{Completion, CompletionBytes, Notification, ProtocolViolation, Request};
pub use runner::{
    DEFAULT_QUEUE_DEPTH, PendingRequest, PendingTable, StopSignal, StorvspStats,
    WORST_COMPLETION_RING_LEN,
};
pub use saved::{RestoreError, SavedState, StorvspSavedStateError};
pub use srb::{Attempted, SrbJob};

#[cfg(test)]
mod tests;
