//! Running SRB jobs on the `blocking` pool: small jobs of one ring batch
//! are grouped onto one pool thread, larger ones get a thread each, and
//! every completion goes to the writer as soon as its job ends.

use crate::storvsp::{Completion, SrbJob};

/// What the reader hands the writer.
pub(super) enum ToWriter {
    /// A completion ready to send.
    Ready(u64, Completion),
    /// This many jobs were started; their completions arrive on the done
    /// queue.
    Started(usize),
}

/// Largest transfer run together with other jobs on one pool thread;
/// bigger ones get a thread each.
const SMALL_JOB_BYTES: u32 = 64 * 1024;
/// Most small jobs run in sequence on one pool thread.
const SMALL_JOBS_PER_THREAD: usize = 8;

/// Jobs taken from one ring batch, submitted together.
pub(super) struct JobBatch {
    small: Vec<(u64, SrbJob)>,
    done: async_channel::Sender<(u64, Completion)>,
    started: usize,
}

impl JobBatch {
    /// An empty batch whose completions go to `done`.
    pub(super) fn new(done: async_channel::Sender<(u64, Completion)>) -> Self {
        Self {
            small: Vec::new(),
            done,
            started: 0,
        }
    }

    pub(super) fn push(&mut self, seq: u64, job: SrbJob) {
        self.started += 1;
        if job.data_length() > SMALL_JOB_BYTES {
            spawn_jobs(vec![(seq, job)], self.done.clone());
        } else {
            self.small.push((seq, job));
            if self.small.len() == SMALL_JOBS_PER_THREAD {
                self.flush_small();
            }
        }
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            spawn_jobs(std::mem::take(&mut self.small), self.done.clone());
        }
    }

    /// Starts what is left and tells the writer how many were started.
    pub(super) async fn finish(&mut self, work: &async_channel::Sender<ToWriter>) {
        self.flush_small();
        if self.started > 0 {
            let _ = work.send(ToWriter::Started(self.started)).await;
            self.started = 0;
        }
    }
}

/// Runs `jobs` in order on one blocking-pool thread; each completion is
/// sent as soon as its job ends, so the writer answers while later jobs
/// still run.
fn spawn_jobs(jobs: Vec<(u64, SrbJob)>, done: async_channel::Sender<(u64, Completion)>) {
    blocking::unblock(move || {
        for (seq, job) in jobs {
            let _ = done.send_blocking((seq, job.run()));
        }
    })
    .detach();
}
