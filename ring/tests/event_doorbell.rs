//! The in-process doorbell beyond its waker slots: waits past the slots
//! and `listen` futures (both on the doorbell's event) wake on a signal,
//! however many come and go, and no wake-up is lost between two threads
//! that only ever wait through `listen`.

use async_io::Timer;
use futures_lite::future::{block_on, or, poll_once};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vmbdev_ring::{Doorbell, EventDoorbell, wait};

/// Waits of one doorbell armed at once; more than its waker slots.
const WAITS: usize = 7;

#[test]
fn every_armed_wait_wakes_on_one_signal_even_past_the_slots() {
    let bell = EventDoorbell::new();
    let mut waits: Vec<_> = (0..WAITS).map(|_| Box::pin(wait(&bell))).collect();
    for w in &mut waits {
        assert!(
            block_on(poll_once(w.as_mut())).is_none(),
            "woke unsignalled"
        );
    }
    bell.signal();
    for (i, w) in waits.iter_mut().enumerate() {
        assert!(
            block_on(poll_once(w.as_mut())).is_some(),
            "wait {i} of {WAITS} missed the signal"
        );
    }
    assert_eq!(bell.signal_count(), 1);
}

#[test]
fn a_listener_made_after_others_were_dropped_still_wakes() {
    let bell = EventDoorbell::new();
    for _ in 0..3 {
        let gone = bell.listen();
        drop(gone);
    }
    let mut done = bell.listen();
    bell.signal();
    let mut woken = bell.listen();
    assert!(block_on(poll_once(&mut done)).is_some());
    // Listened after the signal: not woken by it, but by the next.
    assert!(block_on(poll_once(&mut woken)).is_none());
    bell.signal();
    assert!(block_on(poll_once(&mut woken)).is_some());
    assert_eq!(bell.signal_count(), 2);
}

/// Waits on `bell` through `listen` until `turn` holds `want`; `false` if
/// a wait took 10 s (a lost wake-up).
fn wait_for_turn(bell: &EventDoorbell, turn: &AtomicU64, want: u64) -> bool {
    loop {
        // Listen first, then look, as a ring reader arms then re-checks.
        let woken = bell.listen();
        if turn.load(Ordering::SeqCst) == want {
            return true;
        }
        let timed_out = block_on(or(
            async {
                woken.await;
                false
            },
            async {
                Timer::after(Duration::from_secs(10)).await;
                true
            },
        ));
        if timed_out {
            return false;
        }
    }
}

#[test]
fn listeners_on_two_threads_lose_no_wake_up() {
    const ROUNDS: u64 = 20_000;
    let (ping, pong) = (
        Arc::new(EventDoorbell::new()),
        Arc::new(EventDoorbell::new()),
    );
    let turn = Arc::new(AtomicU64::new(0));
    let other = {
        let (ping, pong, turn) = (ping.clone(), pong.clone(), turn.clone());
        std::thread::spawn(move || {
            for round in 0..ROUNDS {
                if !wait_for_turn(&ping, &turn, 2 * round + 1) {
                    return false;
                }
                turn.store(2 * round + 2, Ordering::SeqCst);
                pong.signal();
            }
            true
        })
    };
    let mut ok = true;
    for round in 0..ROUNDS {
        turn.store(2 * round + 1, Ordering::SeqCst);
        ping.signal();
        if !wait_for_turn(&pong, &turn, 2 * round + 2) {
            ok = false;
            break;
        }
    }
    // On a lost wake-up the other thread gives up within its own 10 s.
    let other_ok = other.join().unwrap();
    assert!(ok && other_ok, "a wake-up was lost");
}
