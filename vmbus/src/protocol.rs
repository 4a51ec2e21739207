//! The VMBus channel-management message layouts the server speaks.
//!
//! They live in [`vmbdev_protocol::vmbus`], shared with the guest client;
//! this module re-exports them so the server and its users name them in
//! one place. What the host does with them is in [`crate::server`].

pub use vmbdev_protocol::vmbus::*;
