//! The host side of the VMBus control plane: the channel-management
//! protocol a guest's VMBus driver speaks before (and beside) any ring.
//!
//! This crate owns version negotiation, channel offers for every registered
//! [`VmbusDevice`](vmbdev_device::bus::VmbusDevice), the assembly of guest
//! GPADLs into the [`GpadlRegistry`](vmbdev_ring::GpadlRegistry), opening
//! and closing channels through the device-bus contract, GPADL teardown
//! that waits until the device released the pages, hot-remove rescinds,
//! MODIFYCHANNEL, sub-channel offers a device asks for, and UNLOAD.
//!
//! - [`protocol`]: the message layouts and constants, no logic.
//! - [`server`]: the state machine. It is transport-independent and
//!   synchronous: guest message bytes go in through
//!   [`Server::post_message`](server::Server::post_message), host messages
//!   and actions come out through the [`VmbusHost`]
//!   trait the VMM implements (post into a vCPU's SINT slot, build and
//!   route a channel's doorbells, run a device task, drive a teardown
//!   wait). Work that has to wait (a teardown until the device lets go of
//!   its pages) is handed to the VMM as a future whose output goes back to
//!   the server, so the state machine never blocks and never owns a
//!   thread or an executor.
//!
//! - [`synic`]: a software SynIC (SIMP message slots, SIEFP event flags,
//!   SINT interrupts as doorbells) and [`SynicHost`], which posts the
//!   server's messages through it, for VMMs without an in-kernel one.
//!
//! - [`saved`]: the encoding of the bus's saved state
//!   ([`Server::save`](server::Server::save) /
//!   [`Server::restore`](server::Server::restore)), the devices' own
//!   saved bytes inside it.
//!
//! # Wiring it into a KVM-based VMM
//!
//! The server needs four things from the VMM, all through [`VmbusHost`]
//! and three calls into [`Server`]:
//!
//! 1. **Guest messages in.** The guest's HvPostMessage hypercall
//!    (call code 0x005c) names a guest-physical input page holding
//!    `connection_id`, a reserved word, `message_type`, `payload_size` and
//!    up to 240 payload bytes. With `KVM_CAP_HYPERV` enabled and the
//!    hypercall left to user space, KVM exits with `KVM_EXIT_HYPERV`
//!    (`KVM_EXIT_HYPERV_HCALL`); read the input page from guest memory and
//!    pass the connection id and the `payload_size` bytes to
//!    [`Server::post_message`]. Its `Err` is a
//!    [`Dropped`] reason to count, never a reason to stop the VM; answer
//!    the hypercall with success either way (the guest learns of refusals
//!    from the control plane's own replies).
//! 2. **Host messages out.** [`VmbusHost::post_message`] writes a message
//!    into the guest's SIMP page of the target vCPU at slot `sint`. With
//!    KVM's in-kernel SynIC (`KVM_CAP_HYPERV_SYNIC2`) the guest's SIMP,
//!    SIEFP and SINT MSR writes are reported as `KVM_EXIT_HYPERV`
//!    (`KVM_EXIT_HYPERV_SYNIC`) with the page addresses; keep them and write
//!    the slot the way [`Synic`] does (payload first, message type last,
//!    the message-pending flag when the slot is taken). Raise the SINT with
//!    an irqfd whose GSI is routed by a `KVM_IRQ_ROUTING_HV_SINT` entry
//!    (vCPU, SINT); give that irqfd a resample fd, which fires when the
//!    guest writes EOM, and call [`Server::slot_freed`] then. Return
//!    [`PostResult::Undeliverable`] when the vCPU or its SIMP does not
//!    exist, so the server drops the message instead of waiting for an EOM
//!    that cannot come. Without an in-kernel SynIC, [`SynicHost`] does all
//!    of this over guest memory, with doorbells as interrupts.
//! 3. **Channel doorbells.** For [`VmbusHost::open_doorbells`], create two
//!    eventfds. Register the guest-to-host one with `KVM_HYPERV_EVENTFD`
//!    for the channel's connection id, so the guest's HvSignalEvent
//!    (0x005d) wakes the device without an exit to user space; wrap both in
//!    the ring crate's eventfd doorbell. The host-to-guest one sets the
//!    relid's bit in the SIEFP page and then signals the SINT irqfd of
//!    `target_vp`. [`VmbusHost::retarget`] moves that routing;
//!    [`VmbusHost::close_doorbells`] unregisters the connection id.
//! 4. **Tasks.** [`VmbusHost::start_channel`] runs a device's channel task
//!    on any executor (a thread per channel blocked in the ring crate's
//!    `block_on` needs no reactor thread), and
//!    [`VmbusHost::wait_teardown`] polls a [`TeardownWait`] and hands its
//!    output to [`Server::teardown_complete`], which sends GPADL_TORNDOWN.
//!
//! Set [`ServerConfig::vp_count`] to the VM's vCPU count: opens and
//! retargets naming a vCPU beyond it are refused. Call
//! [`Server::suspend`]/[`Server::save`] with the vCPUs stopped, and
//! [`Server::restore`]/[`Server::resume`] before they run again.
//!
//! The host-to-guest doorbell of step 3 is [`Synic::event_doorbell`]
//! when the SynIC is this crate's: it sets the flag and raises the SINT
//! without a lock.
//!
//! A VMM that wants none of this in its own process runs the control
//! plane and the devices in a backend process instead (`vmbdev-remote`'s
//! `BusBackend`): it then forwards HvPostMessage, EOM and the SynIC page
//! addresses over a socket, hands over one SINT irqfd per vCPU, and
//! registers with `KVM_HYPERV_EVENTFD` the eventfd the backend gives for
//! each channel it opens.
//!
//! Not here yet: monitor pages (offers decline them) and the pre-5.0
//! interrupt page.
#![forbid(unsafe_code)]

pub mod protocol;
pub mod saved;
pub mod server;
pub mod synic;

pub use saved::SavedStateError;
pub use server::{
    ChannelDoorbells, ChannelSignal, ConfigError, DeviceId, Dropped, PostResult, Released, Server,
    ServerConfig, TeardownWait, VmbusHost,
};
pub use synic::{EventFlagDoorbell, Synic, SynicError, SynicHost};
