//! SRB jobs too large to run on the channel task: each runs on the
//! `blocking` pool and its completion comes back to the channel loop over
//! a queue, tagged with the request's pending-table key.

use super::PendingKey;
use crate::storvsp::{Completion, SrbJob};

/// The jobs a channel has on the pool.
pub(super) struct JobPool {
    done_tx: async_channel::Sender<(PendingKey, Completion)>,
    done_rx: async_channel::Receiver<(PendingKey, Completion)>,
    running: usize,
}

impl JobPool {
    pub(super) fn new() -> Self {
        let (done_tx, done_rx) = async_channel::unbounded();
        Self {
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

    /// Runs `job` on a pool thread.
    pub(super) fn spawn(&mut self, key: PendingKey, job: SrbJob) {
        self.running += 1;
        let done = self.done_tx.clone();
        blocking::unblock(move || {
            let _ = done.send_blocking((key, job.run()));
        })
        .detach();
    }
}
