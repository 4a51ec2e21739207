//! Wire formats of VMBus: the channel-management messages of the bus
//! itself, and of its devices: vmbfs messages, vstor packets and SRBs, SCSI
//! CDBs, sense data and VPD pages.
//!
//! Structs and constants only, no I/O and no logic beyond size checks.
#![forbid(unsafe_code)]

pub mod scsi;
pub mod vmbfs;
pub mod vmbus;
pub mod vstor;
