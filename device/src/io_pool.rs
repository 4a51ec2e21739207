//! [`ThreadPool`], the default [`IoSpawner`]: a fixed number of worker
//! threads, started on first use, fed from one queue. A device makes one
//! of its own when the VMM injects no spawner; a VMM that hosts many
//! devices builds one, sizes it, and hands the same pool to all of them.

use std::sync::{Mutex, OnceLock};

use crate::bus::IoSpawner;

type Job = Box<dyn FnOnce() + Send>;

/// A pool of `threads` worker threads running blocking jobs in arrival
/// order. Dropping the pool lets the workers finish the queued jobs and
/// exit.
pub struct ThreadPool {
    threads: usize,
    name: String,
    queue: OnceLock<Option<async_channel::Sender<Job>>>,
    started: Mutex<usize>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// A pool of `threads` workers (at least one), none started yet.
    pub fn new(threads: usize) -> Self {
        Self::named(threads, "vmbdev-io")
    }

    /// [`new`](Self::new) with the workers' thread name.
    pub fn named(threads: usize, name: &str) -> Self {
        Self {
            threads: threads.max(1),
            name: name.to_owned(),
            queue: OnceLock::new(),
            started: Mutex::new(0),
        }
    }

    /// Workers running.
    pub fn started_threads(&self) -> usize {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue, starting the workers the first time; `None` if not one
    /// thread could be started.
    fn queue(&self) -> Option<&async_channel::Sender<Job>> {
        self.queue
            .get_or_init(|| {
                let (send, receive) = async_channel::unbounded::<Job>();
                let mut started = 0;
                for i in 0..self.threads {
                    let receive = receive.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("{}-{i}", self.name))
                        .spawn(move || work(&receive));
                    match spawned {
                        Ok(_) => started += 1,
                        Err(error) => {
                            tracing::warn!(%error, "cannot start an I/O pool thread");
                        }
                    }
                }
                *self.started.lock().unwrap_or_else(|e| e.into_inner()) = started;
                (started > 0).then_some(send)
            })
            .as_ref()
    }
}

/// A worker: runs jobs until the pool is dropped and the queue is empty.
/// A panicking job is contained so the worker survives it; the job's
/// caller sees its result channel close.
fn work(queue: &async_channel::Receiver<Job>) {
    while let Ok(job) = queue.recv_blocking() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("an I/O job panicked");
        }
    }
}

impl IoSpawner for ThreadPool {
    fn spawn_blocking(&self, job: Job) {
        match self.queue() {
            Some(queue) => {
                // The receivers live as long as the workers, which only
                // exit once this sender is dropped: the send cannot fail.
                let _ = queue.send_blocking(job);
            }
            None => {
                // No thread at all: running here is slower but never
                // loses the job.
                job();
            }
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        if let Some(Some(queue)) = self.queue.get() {
            queue.close();
        }
    }
}
