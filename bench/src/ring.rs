//! Throughput measurement of the loopback ring against memcpy: packets/s
//! and GB/s for several payload sizes on one and two threads, each beside
//! a memcpy of the same bytes measured in the same run, with the host CPU
//! time of each per packet and per MB. Used by the `cargo bench` target and
//! by the command-line `bench`.

use crate::cpu::{CpuPerUnit, CpuUnit, Span, Stopwatch};
use futures_lite::future::block_on;
use std::hint::black_box;
use vmbdev_ring::{LoopbackConfig, OutgoingPacket, RingReader, RingWriter, loopback};

/// Payload sizes measured.
pub const PAYLOAD_SIZES: [usize; 4] = [64, 1024, 8192, 12288];
/// Data pages per ring half (256 KiB).
pub const RING_PAGES: u32 = 64;

/// One measurement beside its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// What was measured, e.g. `ring 2 threads 64 B packets/s`.
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
    /// The writer thread panicked.
    #[error("benchmark writer thread panicked")]
    WriterPanicked,
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
    let ring_bytes = RING_PAGES as usize * vmbdev_ring::PAGE_SIZE;
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
    let n = reader.try_read_batch(usize::MAX, |p| {
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
            read += reader
                .read_batch(batch, |p| {
                    black_box(p.payload);
                })
                .await? as u64;
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
        name: format!("ring {label} {payload} B packets/s"),
        value: pps,
        unit: "packets/s",
        baseline: base_pps,
        ratio: pps / base_pps,
        cpu: CpuPerUnit::of(CpuUnit::NsPerPacket, count as f64, ring, memcpy),
    });
    out.push(BenchResult {
        name: format!("ring {label} {payload} B GB/s"),
        value: gbps,
        unit: "GB/s",
        baseline: base_gbps,
        ratio: gbps / base_gbps,
        cpu: CpuPerUnit::of(CpuUnit::UsPerMb, mb, ring, memcpy),
    });
}

/// Runs every measurement; `quick` moves fewer bytes (for smoke runs).
pub fn run(quick: bool) -> Result<Vec<BenchResult>, BenchError> {
    let mut out = Vec::new();
    for payload in PAYLOAD_SIZES {
        let count = packet_count(payload, quick);
        let base = memcpy_span(payload, count);
        let one = one_thread_span(payload, count)?;
        push_pair(&mut out, "1 thread", payload, count, one, base);
        let two = two_thread_span(payload, count)?;
        push_pair(&mut out, "2 threads", payload, count, two, base);
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
        push_pair(&mut out, "x", 1000, 10, span(2000, 4), span(1000, 1));
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
        assert_eq!(results.len(), PAYLOAD_SIZES.len() * 4);
        for r in &results {
            let cpu = r.cpu;
            assert!(cpu.both_measured(), "{r:?}");
        }
    }
}
