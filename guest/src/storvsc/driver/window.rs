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
    let mut requests = requests.into_iter().enumerate().fuse();
    // One boxed slot per unit of depth, refilled in place as requests end,
    // so a long batch allocates `depth` boxes, not one per request.
    let mut slots: Vec<(usize, Pin<Box<Option<F>>>)> = Vec::with_capacity(depth);
    std::future::poll_fn(|cx| {
        loop {
            let mut busy = 0;
            for (index, slot) in slots.iter_mut() {
                if slot.is_none() {
                    if let Some((next, request)) = requests.next() {
                        *index = next;
                        slot.set(Some(request));
                    }
                }
                busy += usize::from(slot.is_some());
            }
            while slots.len() < depth {
                let Some((index, request)) = requests.next() else {
                    break;
                };
                slots.push((index, Box::pin(Some(request))));
                busy += 1;
            }
            if busy == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut progressed = false;
            for (index, slot) in slots.iter_mut() {
                let Some(request) = slot.as_mut().as_pin_mut() else {
                    continue;
                };
                if let Poll::Ready(output) = request.poll(cx) {
                    slot.set(None);
                    finished(*index, output)?;
                    progressed = true;
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
