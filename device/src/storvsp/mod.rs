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
//! The parts: `config` (controller settings and the LUN map), `packet`
//! (requests, completions and notifications), `channel` (the init/version
//! state machine), `srb` (checking and running SRBs), [`saved`] (saved
//! state and its encoding), [`runner`] (serving a channel's rings),
//! [`device`] (a controller's channels) and [`vmbus`] (the bus glue).

mod channel;
mod config;
mod packet;
mod srb;

pub mod device;
pub mod runner;
pub mod saved;
pub mod vmbus;

pub use channel::{InitState, Outcome, StorvspChannel};
pub use config::{
    ConfigError, Controller, DEFAULT_MAX_TRANSFER_BYTES, LunAddress, MAX_MAX_TRANSFER_BYTES,
    StorvspConfig,
};
pub use device::{DeviceError, NoSubChannelOffer, SavedDevice, StorvspDevice, SubChannelOffer};
pub use packet::{Completion, CompletionBytes, Notification, ProtocolViolation, Request};
pub use runner::{
    DEFAULT_QUEUE_DEPTH, PendingRequest, RunError, StopSignal, StorvspStats,
    WORST_COMPLETION_RING_LEN,
};
pub use saved::{RestoreError, SavedState};
pub use srb::SrbJob;

#[cfg(test)]
mod tests;
