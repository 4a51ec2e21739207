//! Wire formats of the VMBus devices: vmbfs messages, vstor packets and SRBs,
//! SCSI CDBs, sense data and VPD pages.
//!
//! Structs and constants only, no I/O and no logic beyond size checks.
#![forbid(unsafe_code)]

pub mod scsi;
pub mod vmbfs;
pub mod vstor;
