//! Two threads move 1,000,000 packets of random sizes through a 16 KiB
//! ring, sleeping on the doorbells when empty or full; every byte checked.

use futures_lite::future::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use vmbdev_ring::{LoopbackConfig, OutgoingPacket, loopback};

const PACKETS: u64 = 1_000_000;
const MAX_LEN: usize = 600;

/// Payload of packet `id`: a window of a shared random pattern, so making
/// and checking it is one memcpy/memcmp.
fn window(pattern: &[u8], id: u64, len: usize) -> &[u8] {
    let start = (id as usize * 7919) % (pattern.len() - MAX_LEN);
    &pattern[start..start + len]
}

#[test]
fn a_million_packets_through_a_16k_ring() {
    let lb = loopback(&LoopbackConfig {
        incoming_pages: 4,
        outgoing_pages: 4,
        buffer_pages: 1,
        scatter_ring: true,
        ..LoopbackConfig::default()
    })
    .unwrap();
    let mut pattern = vec![0u8; 1 << 16];
    SmallRng::seed_from_u64(1).fill_bytes(&mut pattern);
    let pattern = std::sync::Arc::new(pattern);
    let (mut reader, _host_writer) = lb.host.split();
    let (_guest_reader, mut writer) = lb.guest.split();
    let send_pattern = pattern.clone();
    let sender = std::thread::spawn(move || {
        let mut rng = SmallRng::seed_from_u64(2);
        block_on(async {
            for id in 0..PACKETS {
                let len = rng.random_range(0..=MAX_LEN);
                let packet = OutgoingPacket::request(id, window(&send_pattern, id, len));
                // Publish in small batches; a full ring publishes and sleeps.
                while !writer.try_write_unpublished(&packet).unwrap() {
                    writer
                        .wait_write_ready(packet.ring_len().unwrap() as usize)
                        .await
                        .unwrap();
                }
                if id % 8 == 7 {
                    writer.publish().unwrap();
                }
            }
            writer.publish().unwrap();
        });
    });
    let mut lens = SmallRng::seed_from_u64(2);
    let mut next = 0u64;
    block_on(async {
        while next < PACKETS {
            reader
                .read_batch(64, |p| {
                    let len = lens.random_range(0..=MAX_LEN);
                    assert_eq!(p.transaction_id, next);
                    assert_eq!(p.payload.len(), len.next_multiple_of(8));
                    assert!(
                        &p.payload[..len] == window(&pattern, next, len),
                        "packet {next}"
                    );
                    assert!(p.payload[len..].iter().all(|&b| b == 0));
                    next += 1;
                })
                .await
                .unwrap();
        }
    });
    sender.join().unwrap();
    assert_eq!(reader.try_read().unwrap(), None);
}
