//! The device-bus contract and the host devices: vmbfs, storvsp and the
//! read-only SCSI disk.
#![forbid(unsafe_code)]

pub mod scsi_disk;
pub mod storvsp;
pub mod vmbfs;
