//! The VMM side of an out-of-process bus: [`RemoteBus`] forwards what the
//! guest's vCPUs do to a [bus backend](crate::bus) and keeps the routes of
//! the channels' events, so a VMM that hosts every device this way wires
//! up only its SynIC:
//!
//! - guest memory: [`RemoteBus::set_memory`], once (a memfd);
//! - the guest wrote a vCPU's SIMP or SIEFP MSR (`KVM_EXIT_HYPERV_SYNIC`):
//!   [`RemoteBus::set_synic_pages`];
//! - the SINTs' interrupts: [`RemoteBus::route_sint`] with the eventfd
//!   that raises the SINT (registered as an irqfd with
//!   `KVM_IRQ_ROUTING_HV_SINT`);
//! - HvPostMessage (`KVM_EXIT_HYPERV_HCALL`): [`RemoteBus::post_message`],
//!   whose answer is the hypercall's status;
//! - EOM (the irqfd's resample fd): [`RemoteBus::eom`];
//! - HvSignalEvent: the backend hands over one eventfd per open channel
//!   before the guest learns the channel is open. The VMM registers it
//!   with `KVM_HYPERV_EVENTFD` ([`RemoteBus::on_route`] says when), or
//!   rings it itself on the hypercall exit ([`RemoteBus::signal_event`]).
//!
//! Save and restore of the whole bus, the devices' state included, are
//! [`RemoteBus::save`] and [`RemoteBus::restore`]: a new backend process
//! is given the memory, the SynIC pages and SINT routes first, then the
//! saved bytes, and the guest goes on as if nothing happened.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vmbdev_ring::{Doorbell, EventfdDoorbell, GuestMemory};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use crate::error::RemoteError;
use crate::link::Link;
use crate::memory::set_memory_message;
use crate::proxy::{DEFAULT_REQUEST_TIMEOUT, hello};
use crate::transport::{self, Malformed, Message, fixed};
use crate::wire::{
    EventRoute, GuestMessage, PostReply, SintRoute, SynicPages, VpRef, code, kind, synic_enabled,
};

/// Called when a channel's connection id gets a route (`Some`, the eventfd
/// HvSignalEvent must ring) or loses it (`None`).
pub type RouteCallback = dyn Fn(u32, Option<BorrowedFd<'_>>) + Send + Sync;

struct Shared {
    link: Link,
    routes: Mutex<HashMap<u32, Arc<EventfdDoorbell>>>,
    on_route: Mutex<Option<Arc<RouteCallback>>>,
    bad_messages: AtomicU64,
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, HashMap<u32, Arc<EventfdDoorbell>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn callback(&self) -> Option<Arc<RouteCallback>> {
        self.on_route
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A bus backend in another process, as the VMM sees it.
pub struct RemoteBus {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RemoteBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBus")
            .field("connected", &self.is_connected())
            .field("routes", &self.shared.routes().len())
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteBus {
    fn drop(&mut self) {
        transport::shut_down(self.shared.link.socket());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl RemoteBus {
    /// Connects to the bus backend listening at `path`.
    pub fn connect_path(path: &Path) -> Result<Self, RemoteError> {
        Self::connect(transport::connect(path)?)
    }

    /// Speaks to a bus backend over the connected socket `socket`.
    pub fn connect(socket: OwnedFd) -> Result<Self, RemoteError> {
        Self::connect_with_timeout(socket, DEFAULT_REQUEST_TIMEOUT)
    }

    /// [`connect`](Self::connect) with another request timeout.
    pub fn connect_with_timeout(socket: OwnedFd, timeout: Duration) -> Result<Self, RemoteError> {
        let shared = Arc::new(Shared {
            link: Link::new(socket, timeout),
            routes: Mutex::new(HashMap::new()),
            on_route: Mutex::new(None),
            bad_messages: AtomicU64::new(0),
        });
        let reading = shared.clone();
        let reader = std::thread::Builder::new()
            .name("remote-bus-reader".into())
            .spawn(move || read_loop(&reading))
            .map_err(RemoteError::Thread)?;
        let bus = Self {
            shared,
            reader: Some(reader),
        };
        hello(&bus.shared.link)?;
        Ok(bus)
    }

    /// Whether the connection to the backend is still up.
    pub fn is_connected(&self) -> bool {
        !self.shared.link.is_closed()
    }

    /// Messages from the backend that were refused as malformed.
    pub fn bad_messages(&self) -> u64 {
        self.shared.bad_messages.load(Ordering::Relaxed)
    }

    /// Calls `callback` for every route the backend gives or takes back
    /// from now on (routes already given are not repeated:
    /// [`route`](Self::route) has them).
    pub fn on_route(&self, callback: Arc<RouteCallback>) {
        *self
            .shared
            .on_route
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(callback);
    }

    /// The eventfd HvSignalEvent on `connection_id` rings, if it is routed.
    pub fn route(&self, connection_id: u32) -> Option<Arc<EventfdDoorbell>> {
        self.shared.routes().get(&connection_id).cloned()
    }

    /// HvSignalEvent on `connection_id`, for a VMM that takes the
    /// hypercall's exit itself: `false` (HV_STATUS_INVALID_CONNECTION_ID
    /// to the guest) when nothing is routed there.
    pub fn signal_event(&self, connection_id: u32) -> bool {
        match self.route(connection_id) {
            Some(bell) => {
                bell.signal();
                true
            }
            None => false,
        }
    }

    /// Hands the backend the guest memory (a memfd-backed one).
    pub fn set_memory(&self, memory: &GuestMemory) -> Result<(), RemoteError> {
        let (payload, fd, _) = set_memory_message(memory)?;
        self.shared
            .link
            .request("set memory", kind::SET_MEMORY, &payload, &[fd])?;
        Ok(())
    }

    /// The guest set (or, with `None`, disabled) vCPU `vp`'s SIMP and
    /// SIEFP pages.
    pub fn set_synic_pages(
        &self,
        vp: u32,
        simp: Option<u64>,
        siefp: Option<u64>,
    ) -> Result<(), RemoteError> {
        let mut enabled = 0;
        if simp.is_some() {
            enabled |= synic_enabled::SIMP;
        }
        if siefp.is_some() {
            enabled |= synic_enabled::SIEFP;
        }
        let pages = SynicPages {
            vp: U32::new(vp),
            enabled: U32::new(enabled),
            simp: U64::new(simp.unwrap_or(0)),
            siefp: U64::new(siefp.unwrap_or(0)),
        };
        self.shared
            .link
            .request("synic pages", kind::SYNIC_PAGES, pages.as_bytes(), &[])?;
        Ok(())
    }

    /// The eventfd whose signal raises `sint` on vCPU `vp`.
    pub fn route_sint(
        &self,
        vp: u32,
        sint: u8,
        interrupt: BorrowedFd<'_>,
    ) -> Result<(), RemoteError> {
        let route = SintRoute {
            vp: U32::new(vp),
            sint,
            reserved: [0; 3],
        };
        self.shared.link.request(
            "sint route",
            kind::SINT_ROUTE,
            route.as_bytes(),
            &[interrupt],
        )?;
        Ok(())
    }

    /// HvPostMessage of `message` on `connection_id`: the hypercall status
    /// to return to the guest ([`HV_STATUS_SUCCESS`](crate::wire::HV_STATUS_SUCCESS)
    /// or [`HV_STATUS_INVALID_CONNECTION_ID`](crate::wire::HV_STATUS_INVALID_CONNECTION_ID)).
    pub fn post_message(&self, connection_id: u32, message: &[u8]) -> Result<u16, RemoteError> {
        let mut payload = GuestMessage {
            connection_id: U32::new(connection_id),
            reserved: U32::new(0),
        }
        .as_bytes()
        .to_vec();
        payload.extend_from_slice(message);
        let reply = self
            .shared
            .link
            .request("post message", kind::GUEST_MESSAGE, &payload, &[])?;
        let bad = |reason: String| RemoteError::BadReply {
            what: "post message",
            reason,
        };
        if reply.kind != kind::POST_REPLY {
            return Err(bad(format!("reply kind {}", reply.kind)));
        }
        let (answer, _) =
            fixed::<PostReply>(&reply.payload, "post reply").map_err(|e| bad(e.text))?;
        Ok(answer.status.get())
    }

    /// The guest wrote EOM on vCPU `vp`.
    pub fn eom(&self, vp: u32) -> Result<(), RemoteError> {
        let eom = VpRef {
            vp: U32::new(vp),
            reserved: U32::new(0),
        };
        self.shared
            .link
            .request("eom", kind::EOM, eom.as_bytes(), &[])?;
        Ok(())
    }

    /// The whole bus's saved state (the backend stops and restarts its
    /// device tasks around it).
    pub fn save(&self) -> Result<Vec<u8>, RemoteError> {
        let reply = self.shared.link.request("save", kind::SAVE, &[], &[])?;
        if reply.kind != kind::SAVED_REPLY {
            return Err(RemoteError::BadReply {
                what: "save",
                reason: format!("reply kind {}", reply.kind),
            });
        }
        Ok(reply.payload)
    }

    /// Restores a backend the guest has not connected to from
    /// [`save`](Self::save) bytes; its open channels start again (and are
    /// routed anew).
    pub fn restore(&self, saved: &[u8]) -> Result<(), RemoteError> {
        self.shared
            .link
            .request("restore", kind::RESTORE, saved, &[])?;
        Ok(())
    }
}

fn read_loop(shared: &Shared) {
    shared
        .link
        .read_messages("remote bus", &shared.bad_messages, |message| {
            let (id, notification) = (message.id, message.kind == kind::UNROUTE_EVENT);
            match handle_backend_message(shared, message) {
                Ok(()) if !notification => {
                    if let Err(e) = shared.link.send(kind::OK, id, &[], &[]) {
                        tracing::debug!(error = %e, "remote bus: cannot answer");
                    }
                }
                Ok(()) => {}
                Err(error) => {
                    shared.bad_messages.fetch_add(1, Ordering::Relaxed);
                    if !notification {
                        shared.link.send_error(id, &error);
                    }
                }
            }
        });
    shared.link.close();
    shared.routes().clear();
}

fn handle_backend_message(shared: &Shared, message: Message) -> Result<(), Malformed> {
    let wanted = usize::from(message.kind == kind::ROUTE_EVENT);
    if message.fds.len() != wanted {
        return Err(Malformed::new(
            if message.fds.len() < wanted {
                code::MISSING_FDS
            } else {
                code::UNEXPECTED_FDS
            },
            format!(
                "kind {} takes {wanted} fds, {} came",
                message.kind,
                message.fds.len()
            ),
        ));
    }
    let (route, _) = fixed::<EventRoute>(&message.payload, "event route")?;
    let connection_id = route.connection_id.get();
    match message.kind {
        kind::ROUTE_EVENT => {
            let Some(fd) = message.fds.into_iter().next() else {
                return Err(Malformed::new(code::MISSING_FDS, "route without its fd"));
            };
            let bell = EventfdDoorbell::from_fd(fd)
                .map_err(|e| Malformed::new(code::BAD_FIELD, format!("route eventfd: {e}")))?;
            if let Some(callback) = shared.callback() {
                callback(connection_id, Some(bell.as_fd()));
            }
            shared.routes().insert(connection_id, Arc::new(bell));
            Ok(())
        }
        kind::UNROUTE_EVENT => {
            if shared.routes().remove(&connection_id).is_some() {
                if let Some(callback) = shared.callback() {
                    callback(connection_id, None);
                }
            }
            Ok(())
        }
        other => Err(Malformed::new(
            code::UNKNOWN_COMMAND,
            format!("message kind {other} is not one a bus backend sends"),
        )),
    }
}
