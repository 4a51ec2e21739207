//! An out-of-process VMBus device backend: a device process serves any
//! [`VmbusDevice`](vmbdev_device::bus::VmbusDevice) ([`serve`]), and the
//! VMM talks to it through [`RemoteDevice`], a `VmbusDevice` that forwards
//! every call, so a VMM (or the loopback VM) uses a remote device exactly
//! like a local one.
//!
//! This crate owns the control protocol ([`wire`]: structs only;
//! [`transport`]: datagrams, fd passing and the checks on receipt), the
//! server ([`server`]) and the proxy ([`proxy`]). It holds no device logic
//! and no guest driver.
//!
//! # What crosses the socket
//!
//! One Unix `SOCK_SEQPACKET` connection per device, one datagram per
//! message, each a 16-byte header (magic, version, kind, request id,
//! payload length) and a payload bounded by
//! [`MAX_MESSAGE_BYTES`](wire::MAX_MESSAGE_BYTES). File descriptors go
//! beside it as `SCM_RIGHTS` (through `rustix::net`'s safe `sendmsg` and
//! `recvmsg`):
//!
//! - VMM → device: hello (versions), get-offer, set-memory (the guest
//!   memfd and its region layout `(gpa, len, fd_offset)`), open (channel
//!   index, ring GPADL page list, downstream offset, and two eventfds: the
//!   one the guest rings for the device and the one the device rings for
//!   the guest), close, save (the reply carries the device's bytes),
//!   restore.
//! - device → VMM: sub-channel creation requests (the device's
//!   [`SubChannelControl`](vmbdev_device::bus::SubChannelControl) calls
//!   reach the VMM's) and channel-ended notifications (clean, or the
//!   device's error as text).
//!
//! Ring contents, packets and data never cross the socket: both processes
//! map the same memfd and ring the same eventfds, so the data path is the
//! in-process one.
//!
//! # Versioning
//!
//! Every header carries [`PROTOCOL_VERSION`](wire::PROTOCOL_VERSION); the
//! VMM's hello names the range it speaks and the device answers with the
//! version chosen, or an error if it speaks none of them. A header with
//! another magic or version is refused.
//!
//! # Failure model
//!
//! - A malformed message (truncated, wrong version, unknown kind, missing
//!   or extra fds, page lists outside guest memory, counts above the
//!   bounds, an unsealed or short memfd) gets an error reply with a code
//!   from [`wire::code`] and a text naming the field and value, and is
//!   counted ([`server::ServerStats`]); the connection goes on. Nothing
//!   received is trusted before it is checked.
//! - When the device process dies, the VMM's reader thread sees the end of
//!   the socket at once: every waiting request fails with
//!   [`RemoteError::ConnectionLost`] and every open channel task ends with
//!   that error, so no guest request waits on a dead device. A request to
//!   a live but stuck server gives up after a timeout.
//! - A new device process can be given the state saved from the old one
//!   ([`VmbusDevice::save`](vmbdev_device::bus::VmbusDevice::save) before
//!   the failure) and reopened on the same rings and memory.
//! - When the VMM goes away, the server closes every channel and waits for
//!   its task.
//!
//! What stays with the VMM in this mode: the VMBus control plane (offers
//! to the guest, GPADL assembly, interrupts), the guest memory and the
//! eventfds. GPADLs other than the ring's are not forwarded.
//!
//! # The whole bus out of process
//!
//! [`BusBackend`] goes further: the backend process runs the control plane
//! itself (the `vmbdev-vmbus` server and a SynIC over the shared memory)
//! with every device, and the VMM's [`RemoteBus`] only forwards what its
//! vCPUs do: HvPostMessage (connection id and bytes), EOM, the SIMP and
//! SIEFP addresses, and one eventfd per SINT. The backend writes host
//! messages into the SIMP slots and sets channel event flags in the SIEFP
//! page itself, and hands the VMM, before each OPENCHANNEL_RESULT, the
//! eventfd that HvSignalEvent on the channel's connection id must ring.
//! [`bus`] and [`bus_client`] say what crosses the socket.
#![forbid(unsafe_code)]

pub mod bus;
pub mod bus_client;
pub mod devices;
pub mod error;
mod link;
mod memory;
pub mod proxy;
pub mod server;
pub mod transport;
pub mod vmm;
pub mod wire;

pub use bus::{BusBackend, listen_and_serve_bus, serve_bus};
pub use bus_client::RemoteBus;
pub use error::RemoteError;
pub use proxy::RemoteDevice;
pub use server::{Server, ServerStats, listen_and_serve, serve};
