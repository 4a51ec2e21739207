//! A thread that owns a file system that is not `Send` (or needs `&mut`
//! access) and runs requests against it one at a time.
//!
//! The state is built on the thread itself, so it never crosses threads;
//! callers send closures and wait for the answer. Each request runs under
//! `catch_unwind`, so a panic in a crate becomes an error and the thread
//! keeps serving.

use std::marker::PhantomData;
use std::sync::{Mutex, mpsc};

use crate::contain_panic;
use crate::tree::TreeError;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A handle to the thread owning a state `S`; the thread ends when the
/// handle is dropped.
pub struct Worker<S> {
    jobs: Mutex<mpsc::Sender<Job<S>>>,
    name: &'static str,
    _state: PhantomData<fn(S)>,
}

/// Stack for file-system threads: directory walks in the crates recurse.
const STACK_BYTES: usize = 8 << 20;

impl<S: 'static> Worker<S> {
    /// Starts a thread named `name` and builds its state with `init`.
    pub fn spawn(
        name: &'static str,
        init: impl FnOnce() -> Result<S, TreeError> + Send + 'static,
    ) -> Result<Self, TreeError> {
        let (jobs, incoming) = mpsc::channel::<Job<S>>();
        let (ready, started) = mpsc::channel::<Result<(), TreeError>>();
        std::thread::Builder::new()
            .name(name.into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let mut state = match contain_panic(name, init) {
                    Ok(state) => {
                        let _ = ready.send(Ok(()));
                        state
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = incoming.recv() {
                    job(&mut state);
                }
            })
            .map_err(|e| TreeError::Io {
                path: "/".into(),
                message: format!("starting the {name} thread: {e}"),
            })?;
        started.recv().map_err(|_| dead(name))??;
        Ok(Self {
            jobs: Mutex::new(jobs),
            name,
            _state: PhantomData,
        })
    }

    /// Runs `f` on the state and returns its answer.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<R, TreeError> + Send + 'static,
    ) -> Result<R, TreeError> {
        let (reply, answer) = mpsc::channel();
        let name = self.name;
        let job: Job<S> = Box::new(move |state: &mut S| {
            let _ = reply.send(contain_panic(name, || f(state)));
        });
        self.jobs
            .lock()
            .map_err(|_| dead(name))?
            .send(job)
            .map_err(|_| dead(name))?;
        answer.recv().map_err(|_| dead(name))?
    }
}

fn dead(name: &str) -> TreeError {
    TreeError::Io {
        path: "/".into(),
        message: format!("the {name} thread has stopped"),
    }
}
