//! Cost of the sound guest-memory copy against the former racing
//! `copy_nonoverlapping` one and a volatile one: packets/s and GB/s through
//! a loopback ring with a writer and a reader thread, for 12 KiB and 64 B
//! packets, all methods interleaved in the same run.
//!
//! `cargo run --release -p vmbdev-ring --features copy-baseline --example copy_cost [rounds]`

use futures_lite::future::block_on;
use std::hint::black_box;
use std::time::Instant;
use vmbdev_ring::memory::CopyMethod;
use vmbdev_ring::{LoopbackConfig, OutgoingPacket, in_band_ring_len, loopback};

const RING_PAGES: u32 = 64;

/// Seconds for a writer and a reader thread to move `count` packets of
/// `payload` bytes with guest-memory copies done by `method`.
fn two_threads(method: CopyMethod, payload: usize, count: u64) -> f64 {
    let lb = loopback(&LoopbackConfig {
        incoming_pages: RING_PAGES,
        outgoing_pages: 1,
        buffer_pages: 1,
        ..LoopbackConfig::default()
    })
    .expect("loopback");
    lb.memory.set_copy_method(method);
    let (mut reader, _) = lb.host.split();
    let (_, mut writer) = lb.guest.split();
    let batch = (32 * 1024 / in_band_ring_len(payload) as u64).max(1);
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let data = vec![0x5Au8; payload];
        let packet = OutgoingPacket::in_band(&data);
        let ready = packet.ring_len().expect("ring len") as usize * batch as usize;
        let mut left = count;
        block_on(async {
            while left > 0 {
                let mut n = 0;
                while n < batch && left > 0 && writer.try_write_unpublished(&packet).expect("write")
                {
                    left -= 1;
                    n += 1;
                }
                writer.publish().expect("publish");
                if left > 0 {
                    writer.wait_write_ready(ready).await.expect("wait");
                }
            }
        });
    });
    let mut read = 0u64;
    block_on(async {
        while read < count {
            read += reader
                .read_batch(batch as usize, |p| {
                    black_box(p.payload);
                })
                .await
                .expect("read") as u64;
        }
    });
    sender.join().expect("writer thread");
    start.elapsed().as_secs_f64()
}

/// Seconds for one thread to copy `payload` bytes `count` times out of and
/// back into guest memory (no ring, no other thread): the copy alone.
fn copy_only(method: CopyMethod, payload: usize, count: u64) -> f64 {
    let memory = vmbdev_ring::GuestMemory::new(2 * 16 * 4096).expect("memory");
    memory.set_copy_method(method);
    let mut buf = vec![0x5Au8; payload];
    let start = Instant::now();
    for i in 0..count {
        let gpa = (i % 16) * 8;
        memory.read(gpa, black_box(&mut buf)).expect("read");
        memory.write(gpa + 65536, black_box(&buf)).expect("write");
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let methods = [
        ("copy_nonoverlapping (old)", CopyMethod::Baseline),
        ("sound, rep movsb bulk (new)", CopyMethod::Atomic),
        ("read/write_volatile u64", CopyMethod::Volatile),
    ];
    println!("| payload | copy | packets/s | GB/s |");
    println!("|---|---|---|---|");
    for (payload, count) in [(12288usize, 100_000u64), (64, 2_000_000)] {
        let mut secs = vec![Vec::new(); methods.len()];
        for _ in 0..rounds {
            for (i, (_, method)) in methods.iter().enumerate() {
                secs[i].push(two_threads(*method, payload, count));
            }
        }
        for (i, (name, _)) in methods.iter().enumerate() {
            let s = median(secs[i].clone());
            let pps = count as f64 / s;
            println!(
                "| {payload} B, ring, 2 threads | {name} | {pps:.0} | {:.2} |",
                pps * payload as f64 / 1e9
            );
        }
    }
    // The copy alone: one read and one write of each payload per packet.
    for (payload, count) in [(12288usize, 200_000u64), (64, 5_000_000)] {
        let mut secs = vec![Vec::new(); methods.len()];
        for _ in 0..rounds {
            for (i, (_, method)) in methods.iter().enumerate() {
                secs[i].push(copy_only(*method, payload, count));
            }
        }
        for (i, (name, _)) in methods.iter().enumerate() {
            let s = median(secs[i].clone());
            let pps = count as f64 / s;
            println!(
                "| {payload} B, copy in + out, 1 thread | {name} | {pps:.0} | {:.2} |",
                pps * payload as f64 / 1e9
            );
        }
    }
}
