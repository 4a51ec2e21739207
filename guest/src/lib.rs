//! Guest-side drivers that behave like real guests: a vmbfs client modelled
//! on the Hyper-V UEFI firmware and a storvsc modelled on Linux.
#![forbid(unsafe_code)]

pub mod storvsc;
pub mod vmbfs;
