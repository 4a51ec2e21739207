//! Random interleavings of writes, batched writes, reads, sleeps and mask
//! changes on both directions of a loopback channel, checked byte for byte
//! against a `VecDeque` model, with every doorbell signal predicted by the
//! model: a missing signal to a sleeping side (lost wake-up) or an extra
//! one fails the test.

use futures_lite::future::{block_on, poll_once};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use vmbdev_ring::control::INTERRUPT_MASK_OFFSET;
use vmbdev_ring::{Loopback, LoopbackConfig, OutgoingPacket, in_band_ring_len, loopback};

#[derive(Debug, Clone)]
enum Op {
    Write {
        to_host: bool,
        sizes: Vec<usize>,
        batched: bool,
        prefix: usize,
    },
    Read {
        to_host: bool,
        max: usize,
    },
    ReaderSleep {
        to_host: bool,
    },
    WriterSleep {
        to_host: bool,
        size: usize,
    },
    Mask {
        to_host: bool,
        masked: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), prop::collection::vec(0usize..1300, 1..6), any::<bool>(), 0usize..20)
            .prop_map(|(to_host, sizes, batched, prefix)| Op::Write { to_host, sizes, batched, prefix }),
        4 => (any::<bool>(), 1usize..8).prop_map(|(to_host, max)| Op::Read { to_host, max }),
        1 => any::<bool>().prop_map(|to_host| Op::ReaderSleep { to_host }),
        1 => (any::<bool>(), 0usize..1300).prop_map(|(to_host, size)| Op::WriterSleep { to_host, size }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(to_host, masked)| Op::Mask { to_host, masked }),
    ]
}

/// The model of one direction.
#[derive(Default)]
struct Direction {
    queue: VecDeque<(u64, Vec<u8>)>,
    used: u32,
    masked: bool,
    pending: u32,
    reader_sleeping: bool,
    writer_sleeping: bool,
    /// Expected signals to the reader's side and to the writer's side.
    reader_signals: u64,
    writer_signals: u64,
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (id as usize * 131 + j * 7) as u8)
        .collect()
}

/// Signals counted so far on the doorbells of the reader and writer of
/// direction `to_host`.
fn counts(lb: &Loopback, to_host: bool) -> (u64, u64) {
    let (h, g) = (
        lb.host_doorbell.signal_count(),
        lb.guest_doorbell.signal_count(),
    );
    if to_host { (h, g) } else { (g, h) }
}

struct Harness {
    lb: Loopback,
    size: u32,
    dirs: [Direction; 2],
    next_id: u64,
}

impl Harness {
    fn expected(&self) -> (u64, u64) {
        // Host doorbell: data to host + space freed for host's writes.
        let host = self.dirs[1].reader_signals + self.dirs[0].writer_signals;
        let guest = self.dirs[0].reader_signals + self.dirs[1].writer_signals;
        (host, guest)
    }

    fn check_signals(&self) {
        let (host, guest) = self.expected();
        assert_eq!(self.lb.host_doorbell.signal_count(), host, "host doorbell");
        assert_eq!(
            self.lb.guest_doorbell.signal_count(),
            guest,
            "guest doorbell"
        );
    }

    fn write(&mut self, to_host: bool, sizes: &[usize], batched: bool, prefix: usize) {
        let size = self.size;
        let (before, _) = counts(&self.lb, to_host);
        let d = &mut self.dirs[usize::from(to_host)];
        let writer = if to_host {
            &mut self.lb.guest.writer
        } else {
            &mut self.lb.host.writer
        };
        let was_empty = d.queue.is_empty();
        let mut wrote = false;
        let mut batch = writer.batch();
        for &len in sizes {
            let id = self.next_id;
            self.next_id += 1;
            let data = payload(id, len);
            let split = prefix.min(len);
            let packet = OutgoingPacket::request(id, &data[split..]).with_prefix(&data[..split]);
            let ring_len = in_band_ring_len(len) as u32;
            let fits = size - d.used > ring_len;
            let ok = batch.try_write(&packet).unwrap();
            assert_eq!(ok, fits, "write of {len} with {} used", d.used);
            if ok {
                d.queue.push_back((id, data));
                d.used += ring_len;
                wrote = true;
            }
            if !batched {
                batch.publish().unwrap();
                batch = writer.batch();
                if ok && !d.masked && d.queue.len() == 1 {
                    d.reader_signals += 1;
                }
            }
        }
        batch.publish().unwrap();
        if batched && wrote && was_empty && !d.masked {
            d.reader_signals += 1;
        }
        let (after, _) = counts(&self.lb, to_host);
        if wrote && d.reader_sleeping {
            assert!(
                after > before,
                "lost wake-up: reader asleep, data published, no signal"
            );
            d.reader_sleeping = false;
        }
    }

    fn read(&mut self, to_host: bool, max: usize) {
        let size = self.size;
        let (_, before) = counts(&self.lb, to_host);
        let d = &mut self.dirs[usize::from(to_host)];
        let reader = if to_host {
            &mut self.lb.host.reader
        } else {
            &mut self.lb.guest.reader
        };
        let free_before = size - d.used;
        let mut expected = Vec::new();
        for _ in 0..max.min(d.queue.len()) {
            let (id, data) = d.queue.pop_front().unwrap();
            d.used -= in_band_ring_len(data.len()) as u32;
            expected.push((id, data));
        }
        let mut got = Vec::new();
        let n = reader
            .try_read_batch(max, |p| {
                assert!(p.completion_requested);
                got.push((p.transaction_id, p.payload.to_vec()));
            })
            .unwrap();
        assert_eq!(n, expected.len());
        for ((id, data), (got_id, got_payload)) in expected.iter().zip(&got) {
            assert_eq!(id, got_id);
            assert_eq!(got_payload.len(), data.len().next_multiple_of(8));
            assert_eq!(&got_payload[..data.len()], &data[..], "packet {id}");
            assert!(
                got_payload[data.len()..].iter().all(|&b| b == 0),
                "padding of {id}"
            );
        }
        let free_after = size - d.used;
        let threshold = d.pending & !7;
        if n > 0 && threshold != 0 && free_before < threshold && free_after >= threshold {
            d.writer_signals += 1;
        }
        let (_, after) = counts(&self.lb, to_host);
        if d.writer_sleeping && free_after >= threshold {
            assert!(
                after > before,
                "lost wake-up: writer asleep, space freed, no signal"
            );
            d.writer_sleeping = false;
        }
    }

    fn reader_sleep(&mut self, to_host: bool) {
        let d = &mut self.dirs[usize::from(to_host)];
        let reader = if to_host {
            &mut self.lb.host.reader
        } else {
            &mut self.lb.guest.reader
        };
        let ready = block_on(poll_once(reader.wait_readable()));
        if d.queue.is_empty() {
            assert!(ready.is_none(), "reader woke with nothing to read");
            d.masked = false;
            d.reader_sleeping = true;
        } else {
            assert!(
                ready.unwrap().is_ok(),
                "reader would sleep with data pending"
            );
        }
    }

    fn writer_sleep(&mut self, to_host: bool, len: usize) {
        let size = self.size;
        let d = &mut self.dirs[usize::from(to_host)];
        let writer = if to_host {
            &mut self.lb.guest.writer
        } else {
            &mut self.lb.host.writer
        };
        let ring_len = in_band_ring_len(len) as u32;
        let ready = block_on(poll_once(writer.wait_write_ready(ring_len as usize)));
        if size - d.used > ring_len {
            assert!(ready.unwrap().is_ok(), "writer would sleep with space free");
        } else {
            assert!(ready.is_none(), "writer woke without space");
            d.pending = ring_len + 8;
            d.writer_sleeping = true;
        }
    }

    fn mask(&mut self, to_host: bool, masked: bool) {
        // The reader's own control page: guest→host is page 0, host→guest
        // starts after the first half.
        let control = if to_host {
            0
        } else {
            u64::from(self.size / 4096 + 1) * 4096
        };
        self.lb
            .memory
            .store_u32(
                control + INTERRUPT_MASK_OFFSET,
                u32::from(masked),
                Ordering::SeqCst,
            )
            .unwrap();
        let d = &mut self.dirs[usize::from(to_host)];
        d.masked = masked;
        // A reader changing its mask is awake.
        d.reader_sleeping = false;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(
        pages in 1u32..3,
        scatter in any::<bool>(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let lb = loopback(&LoopbackConfig {
            incoming_pages: pages,
            outgoing_pages: pages,
            buffer_pages: 1,
            scatter_ring: scatter,
            ..LoopbackConfig::default()
        })
        .unwrap();
        let mut h = Harness {
            lb,
            size: pages * 4096,
            dirs: [Direction::default(), Direction::default()],
            next_id: 0,
        };
        for op in &ops {
            match *op {
                Op::Write { to_host, ref sizes, batched, prefix } => h.write(to_host, sizes, batched, prefix),
                Op::Read { to_host, max } => h.read(to_host, max),
                Op::ReaderSleep { to_host } => h.reader_sleep(to_host),
                Op::WriterSleep { to_host, size } => h.writer_sleep(to_host, size),
                Op::Mask { to_host, masked } => h.mask(to_host, masked),
            }
            h.check_signals();
        }
        // Drain both directions: everything written comes out.
        h.read(true, usize::MAX);
        h.read(false, usize::MAX);
        h.check_signals();
        prop_assert!(h.dirs.iter().all(|d| d.queue.is_empty() && d.used == 0));
    }
}
