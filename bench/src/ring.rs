//! Throughput measurement of the loopback ring against memcpy: packets/s
//! and GB/s for several payload sizes on one and two threads, each beside
//! a memcpy of the same bytes measured in the same run, with the host CPU
//! time of each per packet and per MB. Used by the `cargo bench` target and
//! by the command-line `bench`.
//!
//! Two threads cannot beat what the machine takes to move bytes from one
//! core's cache to another's, which one-thread memcpy never pays (on a
//! machine whose two cores share no cache it is a tenth of memcpy or
//! less). So the suite also measures a bare two-thread handoff: the same
//! bytes through a shared buffer the ring's size, with the ring's own
//! copies and nothing else. The ring's two-thread rows are read beside it.

use crate::cpu::{CpuPerUnit, CpuUnit, Span, Stopwatch};
use futures_lite::future::block_on;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vmbdev_ring::{
    GuestMemory, LoopbackConfig, OutgoingPacket, PAGE_SIZE, RingReader, RingWriter, loopback,
};

/// Payload sizes measured.
pub const PAYLOAD_SIZES: [usize; 4] = [64, 1024, 8192, 12288];
/// Data pages per ring half (256 KiB).
pub const RING_PAGES: u32 = 64;

/// One measurement beside its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// What was measured, e.g. `ring 2 threads 64 B packets/s` or
    /// `handoff 2 threads 64 B packets/s`.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// Unit of `value` and `baseline`.
    pub unit: &'static str,
    /// The same quantity for a plain memcpy of the same bytes.
    pub baseline: f64,
    /// `value / baseline`.
    pub ratio: f64,
    /// Process CPU time per packet (for a packets/s figure) or per MB
    /// (for GB/s), of the ring and of the memcpy.
    pub cpu: CpuPerUnit,
}

/// An error setting up the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The loopback channel could not be built.
    #[error(transparent)]
    Loopback(#[from] vmbdev_ring::LoopbackError),
    /// A ring operation failed.
    #[error(transparent)]
    Ring(#[from] vmbdev_ring::RingError),
    /// The handoff's shared buffer failed.
    #[error(transparent)]
    Memory(#[from] vmbdev_ring::MemoryError),
    /// The writer thread panicked.
    #[error("benchmark writer thread panicked")]
    WriterPanicked,
    /// The handoff's reader found another payload than the one it expected.
    #[error("handoff payload {0} read before it was written")]
    HandoffOutOfOrder(u64),
    /// The other side of the handoff stopped on an error.
    #[error("the other handoff thread failed")]
    PeerFailed,
}

/// Packets to move for `payload` bytes each.
fn packet_count(payload: usize, quick: bool) -> u64 {
    let (min, bytes) = if quick {
        (50_000u64, 64u64 << 20)
    } else {
        (2_000_000, 2u64 << 30)
    };
    (bytes / payload as u64).max(min)
}

/// Time to memcpy `payload` bytes `count` times from a source buffer
/// into a destination cycling through a buffer the size of the ring's data
/// area: the same bytes over the same memory footprint as the ring.
fn memcpy_span(payload: usize, count: u64) -> Span {
    let src = vec![0x5Au8; payload];
    let ring_bytes = RING_PAGES as usize * PAGE_SIZE;
    let mut dst = vec![0u8; ring_bytes + payload];
    let stride = payload.next_multiple_of(8) + 24;
    let mut at = 0usize;
    let watch = Stopwatch::start();
    for _ in 0..count {
        dst[at..at + payload].copy_from_slice(black_box(&src));
        black_box(&mut dst);
        at += stride;
        if at >= ring_bytes {
            at -= ring_bytes;
        }
    }
    watch.stop()
}

/// Where the handoff's writer publishes how many payloads it wrote.
const HANDOFF_HEAD: u64 = 0;
/// Where its reader publishes how many it read (another cache line).
const HANDOFF_TAIL: u64 = 128;
/// Its payload slots start at the second page.
const HANDOFF_DATA: u64 = PAGE_SIZE as u64;

/// The shared state of a handoff: the buffer and a flag either side sets
/// when it stops on an error, so the other never spins forever.
struct Handoff {
    memory: GuestMemory,
    failed: AtomicBool,
    slots: u64,
    stride: u64,
}

impl Handoff {
    fn slot(&self, i: u64) -> u64 {
        HANDOFF_DATA + i % self.slots * self.stride
    }

    /// Spins (yielding now and then, so a busy machine still makes
    /// progress) until the index at `gpa` satisfies `ready`.
    fn wait(&self, gpa: u64, ready: impl Fn(u64) -> bool) -> Result<u64, BenchError> {
        let mut spins = 0u32;
        loop {
            spins = spins.wrapping_add(1);
            let value = self.memory.load_u64(gpa, Ordering::Acquire)?;
            if ready(value) {
                return Ok(value);
            }
            if self.failed.load(Ordering::Relaxed) {
                return Err(BenchError::PeerFailed);
            }
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Runs `side`, raising the failure flag if it fails.
    fn flagging(&self, side: impl FnOnce() -> Result<(), BenchError>) -> Result<(), BenchError> {
        let result = side();
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }
}

/// Time for a writer thread to copy `count` payloads into a shared buffer
/// the size of the ring's data area (slots spaced as ring packets are) and
/// a reader thread to copy them out, with the copies the ring itself uses,
/// indices published once a batch as the ring's benchmark does, and no
/// headers, validation or doorbells: both sides spin. The cost of moving
/// the bytes between the two cores, which bounds the ring's two-thread
/// figures.
fn handoff_span(payload: usize, count: u64) -> Result<Span, BenchError> {
    let ring_bytes = RING_PAGES as u64 * PAGE_SIZE as u64;
    let stride = (payload.next_multiple_of(8) + 24) as u64;
    let shared = Arc::new(Handoff {
        memory: GuestMemory::new(HANDOFF_DATA + ring_bytes)?,
        failed: AtomicBool::new(false),
        slots: ring_bytes / stride,
        stride,
    });
    let batch = batch_packets(payload).min(shared.slots);
    let watch = Stopwatch::start();
    let writer = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            shared.flagging(|| {
                let mut data = vec![0x5Au8; payload];
                let mut written = 0;
                while written < count {
                    let end = (written + batch).min(count);
                    shared.wait(HANDOFF_TAIL, |read| end - read <= shared.slots)?;
                    for i in written..end {
                        // Each payload carries its number, which the
                        // reader checks: the handoff really moves them.
                        data[0] = i as u8;
                        shared.memory.write(shared.slot(i), &data)?;
                    }
                    shared
                        .memory
                        .store_u64(HANDOFF_HEAD, end, Ordering::Release)?;
                    written = end;
                }
                Ok(())
            })
        })
    };
    let read = shared.flagging(|| {
        let mut out = vec![0u8; payload];
        let mut read = 0;
        while read < count {
            let written = shared.wait(HANDOFF_HEAD, |written| written > read)?;
            for i in read..written {
                shared
                    .memory
                    .read(shared.slot(i), &mut black_box(&mut out)[..])?;
                if out[0] != i as u8 {
                    return Err(BenchError::HandoffOutOfOrder(i));
                }
            }
            shared
                .memory
                .store_u64(HANDOFF_TAIL, written, Ordering::Release)?;
            read = written;
        }
        Ok(())
    });
    let wrote = writer.join().map_err(|_| BenchError::WriterPanicked)?;
    // The side that failed first says why; the other only saw it stop.
    match (read, wrote) {
        (Err(BenchError::PeerFailed), Err(e)) | (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(watch.stop()),
    }
}

/// Packets per published batch: about 32 KiB of ring, so the other side
/// works on one batch while this side fills the next.
fn batch_packets(payload: usize) -> u64 {
    let ring_len = vmbdev_ring::in_band_ring_len(payload) as u64;
    (32 * 1024 / ring_len).max(1)
}

/// Writes up to `batch` packets (fewer if the ring fills or `left` runs
/// out) and publishes them once.
fn write_batch(
    writer: &mut RingWriter,
    packet: &OutgoingPacket<'_>,
    left: &mut u64,
    batch: u64,
) -> Result<(), BenchError> {
    let mut n = 0;
    while n < batch && *left > 0 && writer.try_write_unpublished(packet)? {
        *left -= 1;
        n += 1;
    }
    writer.publish()?;
    Ok(())
}

fn drain(reader: &mut RingReader) -> Result<u64, BenchError> {
    // The borrowed read, as the devices read their rings.
    let n = reader.try_read_batch_borrowed(usize::MAX, |p| {
        black_box(p.payload);
    })?;
    Ok(n as u64)
}

/// Time for one thread to write and read `count` packets, alternating
/// fill and drain.
fn one_thread_span(payload: usize, count: u64) -> Result<Span, BenchError> {
    let lb = loopback(&LoopbackConfig {
        incoming_pages: RING_PAGES,
        outgoing_pages: 1,
        buffer_pages: 1,
        ..LoopbackConfig::default()
    })?;
    let (mut reader, _) = lb.host.split();
    let (_, mut writer) = lb.guest.split();
    let data = vec![0x5Au8; payload];
    let packet = OutgoingPacket::in_band(&data);
    let watch = Stopwatch::start();
    let (mut to_write, mut read) = (count, 0u64);
    while read < count {
        write_batch(&mut writer, &packet, &mut to_write, u64::MAX)?;
        read += drain(&mut reader)?;
    }
    Ok(watch.stop())
}

/// Time for a writer thread and a reader thread to move `count`
/// packets, sleeping on the doorbells (the CPU time is both threads').
fn two_thread_span(payload: usize, count: u64) -> Result<Span, BenchError> {
    let lb = loopback(&LoopbackConfig {
        incoming_pages: RING_PAGES,
        outgoing_pages: 1,
        buffer_pages: 1,
        ..LoopbackConfig::default()
    })?;
    let (mut reader, _) = lb.host.split();
    let (_, mut writer) = lb.guest.split();
    let watch = Stopwatch::start();
    let sender = std::thread::spawn(move || -> Result<(), BenchError> {
        let data = vec![0x5Au8; payload];
        let packet = OutgoingPacket::in_band(&data);
        let mut left = count;
        let batch = batch_packets(payload);
        // When full, sleep until a whole batch fits rather than one packet,
        // so each wake-up is worth a batch.
        let ring_len = packet.ring_len()? as usize * batch as usize;
        block_on(async {
            while left > 0 {
                write_batch(&mut writer, &packet, &mut left, batch)?;
                if left > 0 {
                    writer.wait_write_ready(ring_len).await?;
                }
            }
            Ok(())
        })
    });
    let mut read = 0u64;
    let batch = batch_packets(payload) as usize;
    let result = block_on(async {
        while read < count {
            reader.wait_readable().await?;
            read += reader.try_read_batch_borrowed(batch, |p| {
                black_box(p.payload);
            })? as u64;
        }
        Ok::<_, BenchError>(())
    });
    let sent = sender.join().map_err(|_| BenchError::WriterPanicked)?;
    result?;
    sent?;
    Ok(watch.stop())
}

fn push_pair(
    out: &mut Vec<BenchResult>,
    label: &str,
    payload: usize,
    count: u64,
    ring: Span,
    memcpy: Span,
) {
    let pps = count as f64 / ring.secs();
    let base_pps = count as f64 / memcpy.secs();
    let gbps = pps * payload as f64 / 1e9;
    let base_gbps = base_pps * payload as f64 / 1e9;
    let mb = count as f64 * payload as f64 / 1e6;
    out.push(BenchResult {
        name: format!("{label} {payload} B packets/s"),
        value: pps,
        unit: "packets/s",
        baseline: base_pps,
        ratio: pps / base_pps,
        cpu: CpuPerUnit::of(CpuUnit::NsPerPacket, count as f64, ring, memcpy),
    });
    out.push(BenchResult {
        name: format!("{label} {payload} B GB/s"),
        value: gbps,
        unit: "GB/s",
        baseline: base_gbps,
        ratio: gbps / base_gbps,
        cpu: CpuPerUnit::of(CpuUnit::UsPerMb, mb, ring, memcpy),
    });
}

/// Runs every measurement; `quick` moves fewer bytes (for smoke runs).
pub fn run(quick: bool) -> Result<Vec<BenchResult>, BenchError> {
    run_payloads(&PAYLOAD_SIZES, quick)
}

/// [`run`] for the given payload sizes only (a profile wants one).
pub fn run_payloads(payloads: &[usize], quick: bool) -> Result<Vec<BenchResult>, BenchError> {
    let mut out = Vec::new();
    for &payload in payloads {
        let count = packet_count(payload, quick);
        let base = memcpy_span(payload, count);
        let one = one_thread_span(payload, count)?;
        push_pair(&mut out, "ring 1 thread", payload, count, one, base);
        let two = two_thread_span(payload, count)?;
        push_pair(&mut out, "ring 2 threads", payload, count, two, base);
        let handoff = handoff_span(payload, count)?;
        push_pair(&mut out, "handoff 2 threads", payload, count, handoff, base);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_measurement_moves_all_packets_and_terminates() {
        // Small counts: this checks the harness (no hang, no error on
        // wrap-around or a full ring), not the speed.
        for payload in PAYLOAD_SIZES {
            for span in [
                one_thread_span(payload, 500).unwrap(),
                two_thread_span(payload, 500).unwrap(),
                handoff_span(payload, 500).unwrap(),
            ] {
                assert!(span.wall > Duration::ZERO, "{span:?}");
                assert!(span.cpu > Duration::ZERO, "{span:?}");
            }
        }
        let span = |wall_ms, cpu_ms| Span {
            wall: Duration::from_millis(wall_ms),
            cpu: Duration::from_millis(cpu_ms),
        };
        let mut out = Vec::new();
        push_pair(&mut out, "ring x", 1000, 10, span(2000, 4), span(1000, 1));
        assert_eq!(out[0].name, "ring x 1000 B packets/s");
        assert_eq!(out[0].value, 5.0);
        assert_eq!(out[0].ratio, 0.5);
        assert_eq!(out[1].value, 5.0 * 1000.0 / 1e9);
        // 4 ms over 10 packets; over 10 * 1000 bytes = 0.01 MB.
        assert_eq!(out[0].cpu.value, 400_000.0);
        assert_eq!(out[0].cpu.baseline, 100_000.0);
        assert_eq!(out[1].cpu.value, 400_000.0);
        assert_eq!(out[1].cpu.unit, CpuUnit::UsPerMb);
    }

    #[test]
    fn a_quick_run_reports_positive_cpu_per_unit_for_ring_and_memcpy() {
        let results = run(true).unwrap();
        assert_eq!(results.len(), PAYLOAD_SIZES.len() * 6);
        for r in &results {
            let cpu = r.cpu;
            assert!(cpu.both_measured(), "{r:?}");
        }
    }
}
