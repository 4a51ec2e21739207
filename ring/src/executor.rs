//! A small executor for the tasks that share one thread (a guest driver
//! and the device channels it talks to, in the one-thread layouts): a
//! woken task goes into a run queue of fixed capacity, so scheduling it
//! allocates nothing. (A general-purpose executor's unbounded queue
//! allocates a block every few dozen wake-ups, which the allocation-free
//! request path cannot afford.) Past the capacity, woken tasks wait in an
//! overflow list, which only a burst of more tasks than that can reach.
//!
//! Tasks run while [`Executor::run`] is being polled, on the thread that
//! polls it; spawning allocates the task once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_task::Runnable;
use concurrent_queue::{ConcurrentQueue, PushError};

use crate::doorbell::{Doorbell, EventDoorbell, wait};

/// Tasks the run queue holds before the overflow list is used.
pub const RUN_QUEUE_CAPACITY: usize = 1024;
/// Tasks run before [`Executor::run`] lets its own future be polled again.
const BATCH: usize = 64;

/// A spawned task's handle: awaiting it gives the output; dropping it
/// cancels the task (use [`Task::detach`] to let it run on).
pub type Task<T> = async_task::Task<T>;

struct Queue {
    ready: ConcurrentQueue<Runnable>,
    overflow: Mutex<VecDeque<Runnable>>,
    overflowed: AtomicBool,
    /// Rung when a task is scheduled, so an idle [`Executor::run`] wakes.
    woken: EventDoorbell,
}

impl Queue {
    fn schedule(&self, runnable: Runnable) {
        if let Err(PushError::Full(runnable) | PushError::Closed(runnable)) =
            self.ready.push(runnable)
        {
            self.overflow
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(runnable);
            self.overflowed.store(true, Ordering::Release);
        }
        self.woken.signal();
    }

    fn pop(&self) -> Option<Runnable> {
        if let Ok(runnable) = self.ready.pop() {
            return Some(runnable);
        }
        if !self.overflowed.load(Ordering::Acquire) {
            return None;
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        let runnable = overflow.pop_front();
        if overflow.is_empty() {
            self.overflowed.store(false, Ordering::Release);
        }
        runnable
    }
}

/// The executor: spawn tasks on it, then poll [`run`](Self::run).
pub struct Executor {
    queue: Arc<Queue>,
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("ready", &self.queue.ready.len())
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor with no task.
    pub fn new() -> Self {
        Self {
            queue: Arc::new(Queue {
                ready: ConcurrentQueue::bounded(RUN_QUEUE_CAPACITY),
                overflow: Mutex::new(VecDeque::new()),
                overflowed: AtomicBool::new(false),
                woken: EventDoorbell::new(),
            }),
        }
    }

    /// Spawns `future` as a task; it first runs when [`run`](Self::run)
    /// is next polled.
    pub fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let queue = self.queue.clone();
        let (runnable, task) = async_task::spawn(future, move |r| queue.schedule(r));
        runnable.schedule();
        task
    }

    /// Runs the spawned tasks until `future` completes, and returns its
    /// output.
    pub async fn run<T>(&self, future: impl Future<Output = T>) -> T {
        futures_lite::future::or(future, self.run_tasks()).await
    }

    /// Runs tasks as they are woken; never completes.
    async fn run_tasks<T>(&self) -> T {
        loop {
            // Armed before the queue is looked at, so a task woken after
            // the last pop wakes this loop.
            let woken = wait(&self.queue.woken);
            let mut ran = 0;
            while let Some(runnable) = self.queue.pop() {
                runnable.run();
                ran += 1;
                if ran == BATCH {
                    // Lets the caller's future (polled first) see what the
                    // tasks did before more of them run.
                    futures_lite::future::yield_now().await;
                    ran = 0;
                }
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn spawned_tasks_run_while_run_is_polled_and_give_their_output() {
        let executor = Executor::new();
        let tasks: Vec<Task<usize>> = (0..3000)
            .map(|i| executor.spawn(async move { i * 2 }))
            .collect();
        let sum = futures_lite::future::block_on(executor.run(async {
            let mut sum = 0;
            for task in tasks {
                sum += task.await;
            }
            sum
        }));
        // More tasks than the run queue holds: the overflow list ran too.
        assert_eq!(sum, (0..3000).map(|i| i * 2).sum::<usize>());
    }

    #[test]
    fn a_task_woken_from_another_thread_runs_again() {
        let executor = Executor::new();
        let bell = Arc::new(EventDoorbell::new());
        let polls = Arc::new(AtomicUsize::new(0));
        let task = {
            let (bell, polls) = (bell.clone(), polls.clone());
            executor.spawn(async move {
                for _ in 0..100 {
                    polls.fetch_add(1, Ordering::Relaxed);
                    wait(&*bell).await;
                }
            })
        };
        let ringer = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    bell.signal();
                    std::thread::yield_now();
                }
            })
        };
        let ringing = async {
            while polls.load(Ordering::Relaxed) < 100 {
                futures_lite::future::yield_now().await;
                bell.signal();
            }
        };
        futures_lite::future::block_on(executor.run(async {
            ringing.await;
            task.await;
        }));
        ringer.join().unwrap();
        assert_eq!(polls.load(Ordering::Relaxed), 100);
    }
}
