//! One end of a control connection, shared by the threads of a side:
//! serialised sends, request ids, and the table of requests waiting for
//! their reply. The side's reader thread hands replies in with
//! [`Link::deliver`] and fails every waiter with [`Link::close`] when the
//! connection ends, so no request waits past the end of its peer.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use crate::error::RemoteError;
use crate::transport::{self, Malformed, Message};
use crate::wire::kind;

/// A reply to a request: its kind and payload.
#[derive(Debug)]
pub(crate) struct Reply {
    pub kind: u16,
    pub payload: Vec<u8>,
}

pub(crate) struct Link {
    socket: OwnedFd,
    send_lock: Mutex<()>,
    pending: Mutex<HashMap<u32, mpsc::Sender<Reply>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    pub fn new(socket: OwnedFd, timeout: Duration) -> Self {
        Self {
            socket,
            send_lock: Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            timeout,
        }
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends one message; sends from several threads never interleave.
    pub fn send(
        &self,
        kind: u16,
        id: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), RemoteError> {
        if self.is_closed() {
            return Err(RemoteError::ConnectionLost);
        }
        let _guard = lock(&self.send_lock);
        transport::send(self.socket(), kind, id, payload, fds)
    }

    /// Sends an error reply to request `id`.
    pub fn send_error(&self, id: u32, error: &Malformed) {
        if let Err(e) = self.send(kind::ERROR, id, &transport::error_payload(error), &[]) {
            tracing::debug!(error = %e, "cannot send an error reply");
        }
    }

    /// Sends a request and waits for its reply (an error reply becomes
    /// [`RemoteError::Refused`]).
    pub fn request(
        &self,
        what: &'static str,
        kind: u16,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, RemoteError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, tx);
        // Checked after registering: a close from now on drops the sender.
        if self.is_closed() {
            lock(&self.pending).remove(&id);
            return Err(RemoteError::ConnectionLost);
        }
        if let Err(e) = self.send(kind, id, payload, fds) {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        let reply = match rx.recv_timeout(self.timeout) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(RemoteError::ConnectionLost),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&id);
                return Err(RemoteError::Timeout {
                    what,
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        if reply.kind == kind::ERROR {
            let error = transport::parse_error(&reply.payload);
            return Err(RemoteError::Refused {
                what,
                code: error.code,
                text: error.text,
                bus: error.bus,
            });
        }
        Ok(reply)
    }

    /// Reads the socket until the peer closes it (or a receive fails):
    /// replies go to their waiters, a datagram that fails the checks gets
    /// an error reply, and every other message goes to `on_message`.
    /// Refusals and stray replies are counted in `bad`. `side` names this
    /// side in the logs.
    pub fn read_messages(&self, side: &str, bad: &AtomicU64, mut on_message: impl FnMut(Message)) {
        loop {
            let datagram = match transport::recv(self.socket()) {
                Ok(Some(datagram)) => datagram,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "{side}: receive failed");
                    break;
                }
            };
            match transport::check(datagram) {
                Err((id, error)) => {
                    bad.fetch_add(1, Ordering::Relaxed);
                    self.send_error(id, &error);
                }
                Ok(message) if is_reply(message.kind) => {
                    if !self.deliver(message) {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(message) => on_message(message),
            }
        }
        tracing::debug!("{side}: connection ended");
    }

    /// Routes a reply to its waiter; `false` if no request waits for it.
    pub fn deliver(&self, message: Message) -> bool {
        match lock(&self.pending).remove(&message.id) {
            Some(tx) => tx
                .send(Reply {
                    kind: message.kind,
                    payload: message.payload,
                })
                .is_ok(),
            None => false,
        }
    }

    /// Marks the connection ended, fails every waiting request and wakes
    /// the reader thread.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.pending).clear();
        transport::shut_down(self.socket());
    }
}

/// Whether a kind is a reply (routed by request id).
pub(crate) fn is_reply(kind: u16) -> bool {
    kind >= kind::OK
}
