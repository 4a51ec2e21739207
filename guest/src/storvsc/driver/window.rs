//! Keeps up to a fixed number of requests in flight, the way a guest's
//! block layer keeps its queue depth: one future per request, polled
//! together on the caller's task, each result handed back as it finishes.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Runs the futures `requests` yields with at most `depth` in flight,
/// calling `finished(i, output)` as the `i`-th one ends.
/// Stops at the first `Err` from `finished` (futures still in flight are
/// dropped, as a guest aborting a batch would).
pub(super) async fn run_windowed<F, T, E>(
    requests: impl IntoIterator<Item = F>,
    depth: usize,
    mut finished: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<(), E>
where
    F: Future<Output = T>,
{
    let depth = depth.max(1);
    let mut requests = requests.into_iter().enumerate();
    let mut in_flight: Vec<(usize, Pin<Box<F>>)> = Vec::with_capacity(depth);
    std::future::poll_fn(|cx| {
        loop {
            while in_flight.len() < depth {
                match requests.next() {
                    Some((index, request)) => in_flight.push((index, Box::pin(request))),
                    None => break,
                }
            }
            if in_flight.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let mut progressed = false;
            let mut slot = 0;
            while slot < in_flight.len() {
                if let Poll::Ready(output) = in_flight[slot].1.as_mut().poll(cx) {
                    let (index, _) = in_flight.swap_remove(slot);
                    finished(index, output)?;
                    progressed = true;
                } else {
                    slot += 1;
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A future that is pending `polls` times before it yields `value`.
    struct Delayed {
        polls: usize,
        value: usize,
    }

    impl Future for Delayed {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
            if self.polls == 0 {
                Poll::Ready(self.value)
            } else {
                self.polls -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[test]
    fn never_exceeds_depth_and_finishes_everything() {
        let running = Cell::new(0usize);
        let peak = Cell::new(0usize);
        let mut seen = [false; 20];
        futures_lite::future::block_on(run_windowed(
            (0..20).map(|i| {
                running.set(running.get() + 1);
                peak.set(peak.get().max(running.get()));
                Delayed {
                    polls: (i * 7) % 5,
                    value: i * 10,
                }
            }),
            4,
            |i, value| {
                running.set(running.get() - 1);
                assert_eq!(value, i * 10);
                assert!(!seen[i], "request {i} finished twice");
                seen[i] = true;
                Ok::<_, ()>(())
            },
        ))
        .unwrap();
        assert_eq!(peak.get(), 4);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn first_error_stops_the_batch() {
        let mut started = 0;
        let result = futures_lite::future::block_on(run_windowed(
            (0..100).map(|i| {
                started += 1;
                Delayed { polls: 0, value: i }
            }),
            2,
            |i, _| if i == 3 { Err(i) } else { Ok(()) },
        ));
        assert_eq!(result, Err(3));
        assert!(started < 100, "started {started} after the error");
    }
}
