//! The eventfd doorbell over real eventfds: a signal from another thread
//! wakes an async waiter, signals coalesce, every listener wakes, a signal
//! written by another process through a handed-over fd is seen, and two
//! endpoints move packets with eventfd doorbells as a drop-in.

use async_io::Timer;
use futures_lite::future::{block_on, or, poll_once, zip};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use vmbdev_ring::{
    Doorbell, Endpoint, EventfdDoorbell, GuestMemory, OutgoingPacket, PAGE_SIZE, Side,
};

/// Runs `f` to completion or gives up after 10 s (`None`).
fn within<F: Future>(f: F) -> Option<F::Output> {
    block_on(or(async { Some(f.await) }, async {
        Timer::after(Duration::from_secs(10)).await;
        None
    }))
}

/// Whether the eventfd has a signal pending, consuming it.
fn take_pending(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 8];
    rustix::io::read(fd, &mut buf).is_ok()
}

#[test]
fn a_signal_from_another_thread_wakes_an_async_waiter() {
    let bell = EventfdDoorbell::new().unwrap();
    let wait = bell.listen();
    let ringer = bell.clone();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        ringer.signal();
    });
    assert_eq!(within(wait), Some(()));
    thread.join().unwrap();
    assert_eq!(bell.signal_count(), 1);
}

#[test]
fn signals_coalesce_into_one_wake_up() {
    let bell = EventfdDoorbell::new().unwrap();
    let probe = bell.try_clone_fd().unwrap();
    for _ in 0..3 {
        bell.signal();
    }
    // One wait consumes all three.
    assert_eq!(within(bell.listen()), Some(()));
    let mut next = bell.listen();
    assert!(block_on(poll_once(&mut next)).is_none());
    assert!(!take_pending(&probe));
    bell.signal();
    assert_eq!(within(next), Some(()));
    assert_eq!(bell.signal_count(), 4);
}

#[test]
fn every_listener_wakes_on_one_signal() {
    let bell = EventfdDoorbell::new().unwrap();
    let (a, b) = (bell.listen(), bell.listen());
    let ringer = bell.clone();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        ringer.signal();
    });
    assert_eq!(within(zip(a, b)), Some(((), ())));
    thread.join().unwrap();
}

#[test]
fn a_handed_over_fd_carries_signals_both_ways() {
    let bell = EventfdDoorbell::new().unwrap();
    // The peer side adopts a duplicate, as a process receiving it would.
    let peer = EventfdDoorbell::from_fd(bell.try_clone_fd().unwrap()).unwrap();
    let wait = bell.listen();
    peer.signal();
    assert_eq!(within(wait), Some(()));
    let wait = peer.listen();
    bell.signal();
    assert_eq!(within(wait), Some(()));
}

#[test]
fn a_signal_written_by_another_process_is_seen() {
    let bell = EventfdDoorbell::new().unwrap();
    let wait = bell.listen();
    // The child gets the eventfd as its stdout and writes one 8-byte
    // counter increment (native-endian 1) with a single write.
    let one: String = 1u64
        .to_ne_bytes()
        .iter()
        .map(|b| format!("\\{b:03o}"))
        .collect();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '{one}'"))
        .stdout(Stdio::from(bell.try_clone_fd().unwrap()))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(within(wait), Some(()));
    assert_eq!(bell.signal_count(), 0);
}

#[test]
fn endpoints_over_eventfd_doorbells_move_packets_between_threads() {
    const DATA_PAGES: u64 = 2;
    const PACKETS: u64 = 20_000;
    let memory = GuestMemory::new(2 * (1 + DATA_PAGES) * PAGE_SIZE as u64).unwrap();
    let pages: Vec<u64> = (0..2 * (1 + DATA_PAGES)).collect();
    let downstream = (1 + DATA_PAGES) as u32;
    let host_bell = EventfdDoorbell::new().unwrap();
    let guest_bell = EventfdDoorbell::new().unwrap();
    let bell = |b: &EventfdDoorbell| -> Arc<dyn Doorbell> { Arc::new(b.clone()) };
    let mut host = Endpoint::open(
        Side::Host,
        &memory,
        &pages,
        downstream,
        bell(&host_bell),
        bell(&guest_bell),
    )
    .unwrap();
    let mut guest = Endpoint::open(
        Side::Guest,
        &memory,
        &pages,
        downstream,
        bell(&guest_bell),
        bell(&host_bell),
    )
    .unwrap();
    let sender = std::thread::spawn(move || {
        block_on(async {
            for id in 0..PACKETS {
                let payload = vec![id as u8; (id % 700) as usize];
                guest
                    .write(&OutgoingPacket::request(id, &payload))
                    .await
                    .unwrap();
            }
            // Wait for the host's reply to the last packet.
            let reply = guest.read().await.unwrap();
            assert_eq!(reply.transaction_id, PACKETS - 1);
        })
    });
    let done = within(async {
        for id in 0..PACKETS {
            let p = host.read().await.unwrap();
            assert_eq!(p.transaction_id, id);
            let len = (id % 700) as usize;
            assert!(p.payload[..len].iter().all(|&b| b == id as u8));
        }
        host.write(&OutgoingPacket::completion(PACKETS - 1, b"done"))
            .await
            .unwrap();
    });
    assert!(done.is_some(), "timed out");
    sender.join().unwrap();
    assert!(host_bell.signal_count() > 0);
}

#[test]
fn an_endpoint_exposes_its_eventfds_and_ring_pages() {
    use std::os::fd::{AsFd, AsRawFd};
    let memory = GuestMemory::new(16 * PAGE_SIZE as u64).unwrap();
    let local = EventfdDoorbell::new().unwrap();
    let remote: Arc<dyn Doorbell> = Arc::new(vmbdev_ring::EventDoorbell::new());
    let pages = [3, 4, 5, 9, 10, 11];
    let host = Endpoint::open(
        Side::Host,
        &memory,
        &pages,
        3,
        Arc::new(local.clone()),
        remote,
    )
    .unwrap();
    let (incoming, outgoing) = host.reader.doorbells();
    assert_eq!(
        incoming.eventfd().map(|fd| fd.as_raw_fd()),
        Some(local.as_fd().as_raw_fd())
    );
    assert!(outgoing.eventfd().is_none());
    assert_eq!(host.reader.half().page_numbers(), [3, 4, 5]);
    assert_eq!(host.writer.half().page_numbers(), [9, 10, 11]);
}
