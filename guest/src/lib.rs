//! Guest-side drivers that behave like real guests: a vmbfs client modelled
//! on the Hyper-V UEFI firmware ([`vmbfs`]), a storvsc modelled on Linux
//! and the firmware ([`storvsc`]), and a VMBus control-plane client
//! modelled on Linux's `hv_vmbus` ([`vmbus`]) that finds and opens their
//! channels.
//!
//! This crate owns what a guest sends and how it reacts to what it gets
//! back: request builders, reply parsers, handshakes, scans and the async
//! drivers over [`vmbdev_ring`] endpoints. It depends on the wire formats
//! ([`vmbdev_protocol`]) and the ring only, and must not depend on the
//! device or backing crates: the drivers see a host through a ring and
//! through small bus traits ([`storvsc::ChannelOpener`],
//! [`vmbfs::VmbfsBus`]) that whoever runs them implements. A LUN is
//! addressed by the guest's own [`storvsc::LunAddress`] (what an SRB
//! carries); the stop flag is the ring's
//! [`StopSignal`](vmbdev_ring::StopSignal), shared with the host. Running
//! drivers against the devices in process is `vmbdev-loopback`'s job.
#![forbid(unsafe_code)]
pub mod storvsc;
pub mod vmbfs;
pub mod vmbus;
