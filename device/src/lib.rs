//! VMBus host devices and the contract that plugs them into a VMM.
//!
//! This crate owns the device side only. A VMM still brings the VMBus
//! control plane and the SynIC: offering channels to the guest and
//! handling its open, close and GPADL messages, version negotiation,
//! routing the guest's HvSignalEvent to the channel's doorbell and
//! injecting the device's interrupts. What it hands a device per channel
//! is an [`OpenRequest`](bus::OpenRequest); what it may inject is where
//! blocking I/O runs ([`bus::IoSpawner`]), how violations are logged
//! ([`violation::ViolationLog`]) and how sub-channels are offered
//! ([`bus::SubChannelControl`]). See [`bus`] for the whole contract.
//!
//! # Plugging a device in
//!
//! Every device implements [`bus::VmbusDevice`]:
//!
//! 1. [`offer()`](bus::VmbusDevice::offer) says what to offer the guest:
//!    interface and instance GUIDs, pipe mode, ring sizes, sub-channels.
//! 2. When the guest opens a channel, build a [`bus::OpenRequest`]: the
//!    host-side ring [`Endpoint`](vmbdev_ring::Endpoint) (from the ring
//!    GPADL, split at the guest's downstream offset, with the two
//!    [`Doorbell`](vmbdev_ring::Doorbell)s), guest memory and the GPADL
//!    registry. [`OpenRequest::from_gpadl`](bus::OpenRequest::from_gpadl)
//!    does this for any transport: in process the memory is one mapping and
//!    the doorbells are events; out of process the memory is the guest's
//!    memfd mapped again and the doorbells wrap eventfds.
//! 3. [`open()`](bus::VmbusDevice::open) returns a [`bus::ChannelTask`],
//!    a `Send` future: run it on your executor. It ends `Ok` after
//!    [`close()`](bus::VmbusDevice::close), or with a
//!    [`bus::ChannelError`] if the guest broke the protocol (the device has
//!    already stopped the channel cleanly; reopen it when the guest does).
//! 4. To save: close the channels, await their tasks, call
//!    [`save()`](bus::VmbusDevice::save). To resume: call
//!    [`restore()`](bus::VmbusDevice::restore), then open the channels over
//!    the same rings.
//! 5. To tear a GPADL down, await
//!    [`GpadlRegistry::teardown`](vmbdev_ring::GpadlRegistry::teardown):
//!    it completes once no channel still uses the pages.
//! 6. A device that needs sub-channels asks through
//!    [`OpenRequest::sub_channels`](bus::OpenRequest::sub_channels); the VMM
//!    offers them and calls `open` with their indices.
//!
//! ```
//! use std::sync::Arc;
//! use vmbdev_fs::MemoryTree;
//! use vmbdev_device::bus::{OpenRequest, VmbusDevice};
//! use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
//! use vmbdev_ring::{LoopbackConfig, PipeMessage, loopback};
//!
//! let mut files = MemoryTree::builder();
//! files.add_file("EFI/BOOT/BOOTX64.EFI", vec![0x4d; 100]).unwrap();
//! let device = VmbfsDevice::new(VmbfsConfig { tree: Arc::new(files.build()), rdma_enabled: true });
//!
//! // A channel: ring GPADL registered, rings in guest memory, doorbells.
//! let lb = loopback(&LoopbackConfig::default()).unwrap();
//! let request = OpenRequest::from_gpadl(
//!     lb.memory.clone(), lb.registry.clone(), lb.gpadl_handle, lb.downstream_offset,
//!     lb.host_doorbell.clone(), lb.guest_doorbell.clone(),
//! ).unwrap();
//! let task = device.open(0, request).unwrap();
//! let vmm = std::thread::spawn(move || futures_lite::future::block_on(task));
//!
//! // The guest asks for version 0x00010000 and gets status 0.
//! let mut guest = lb.guest;
//! futures_lite::future::block_on(async {
//!     let mut version = 1u32.to_le_bytes().to_vec();
//!     version.extend([0; 4]);
//!     version.extend(0x0001_0000u32.to_le_bytes());
//!     guest.send_data(&version).await.unwrap();
//!     let reply = guest.recv_pipe(12288).await.unwrap();
//!     assert_eq!(reply, PipeMessage::Data([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].to_vec()));
//! });
//!
//! device.close(0).unwrap();
//! vmm.join().unwrap().unwrap();
//! let saved = device.save().unwrap(); // negotiated state, for a restore
//! # assert!(!saved.is_empty());
//! ```
#![forbid(unsafe_code)]
pub mod bus;
mod io_pool;
pub mod scsi_disk;
pub mod storvsp;
pub mod violation;
pub mod vmbfs;
