//! SRB jobs too large to run on the channel task: each runs on the I/O
//! spawner the VMM gave the device, and its completion comes back to the
//! channel loop over a queue, tagged with the request's pending-table key.

use std::sync::Arc;

use super::PendingKey;
use crate::bus::IoSpawner;
use crate::storvsp::{Completion, SrbJob};
use vmbdev_ring::GuestMemory;

/// A job handed to the spawner. If the spawner drops it unrun (its pool
/// is gone), it runs where it is dropped: a request the guest issued is
/// answered exactly once, never lost.
struct PoolJob {
    key: PendingKey,
    /// The job and the guest memory it runs on.
    job: Option<(SrbJob<'static>, GuestMemory)>,
    done: async_channel::Sender<(PendingKey, Completion)>,
}

impl PoolJob {
    fn run(&mut self) {
        if let Some((job, memory)) = self.job.take() {
            let _ = self.done.send_blocking((self.key, job.run(&memory)));
        }
    }
}

impl Drop for PoolJob {
    fn drop(&mut self) {
        self.run();
    }
}

/// The jobs a channel has on the pool.
pub(super) struct JobPool {
    io: Arc<dyn IoSpawner>,
    done_tx: async_channel::Sender<(PendingKey, Completion)>,
    done_rx: async_channel::Receiver<(PendingKey, Completion)>,
    running: usize,
}

impl JobPool {
    pub(super) fn new(io: Arc<dyn IoSpawner>) -> Self {
        let (done_tx, done_rx) = async_channel::unbounded();
        Self {
            io,
            done_tx,
            done_rx,
            running: 0,
        }
    }

    /// Where finished jobs' completions arrive.
    pub(super) fn done(&self) -> &async_channel::Receiver<(PendingKey, Completion)> {
        &self.done_rx
    }

    /// Jobs started and not yet reported finished.
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// Counts one completion received from [`done`](Self::done).
    pub(super) fn finished(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Runs `job` on the I/O spawner.
    pub(super) fn spawn(&mut self, key: PendingKey, job: SrbJob<'static>, memory: GuestMemory) {
        self.running += 1;
        let mut job = PoolJob {
            key,
            job: Some((job, memory)),
            done: self.done_tx.clone(),
        };
        self.io.spawn_blocking(Box::new(move || job.run()));
    }
}
