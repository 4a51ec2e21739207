//! Guest-side drivers that behave like real guests: a vmbfs client modelled
//! on the Hyper-V UEFI firmware and a storvsc modelled on Linux, and the
//! loopback VM ([`vm`]) that runs them against devices in process.
#![forbid(unsafe_code)]
pub mod storvsc;
pub mod vm;
pub mod vmbfs;
