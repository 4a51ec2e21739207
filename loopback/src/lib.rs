//! In-process loopback VMs that run the guest drivers of `vmbdev-guest`
//! against the host devices of `vmbdev-device`, for tests, the demo and
//! benchmarks.
//!
//! - [`bus`]: a VM with the real control plane: devices behind the
//!   `vmbdev-vmbus` server and software SynIC, found and opened by the
//!   Linux-like VMBus client of `vmbdev-guest`, their channels handed to
//!   the storvsc driver and the vmbfs client.
//! - [`vm`]: one guest memory, a GPADL registry, a page allocator and an
//!   executor playing the VMM's part of the bus contract for any
//!   [`VmbusDevice`](vmbdev_device::bus::VmbusDevice).
//! - [`vmbfs`]: that VM as the bus of the vmbfs client
//!   ([`VmbfsBus`](vmbdev_guest::vmbfs::VmbfsBus)).
//! - [`storvsp`]: a multi-channel VM for a storvsp device (or any
//!   [`VmbusDevice`](vmbdev_device::bus::VmbusDevice)) and the storvsc
//!   driver, with sub-channels, save and restore, driving the device
//!   through the bus contract only.
//!
//! This crate owns the wiring between drivers and devices and nothing
//! else: it must not hold driver logic (what a guest sends) or device logic
//! (how a host answers); those stay in `vmbdev-guest` and `vmbdev-device`,
//! which must not depend on it.
#![forbid(unsafe_code)]

pub mod bus;
pub mod storvsp;
pub mod vm;
pub mod vmbfs;
