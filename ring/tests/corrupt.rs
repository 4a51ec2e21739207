//! One test per reader check and per known pitfall: a hand-built corrupt
//! control page or descriptor in the guest→host ring, and the specific
//! error the host must return (never a panic, hang or huge allocation).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use vmbdev_ring::control::{INTERRUPT_MASK_OFFSET, PENDING_SEND_SIZE_OFFSET, READ_INDEX_OFFSET};
use vmbdev_ring::{
    Doorbell, Endpoint, EventDoorbell, GpaError, GuestMemory, Loopback, LoopbackConfig,
    OutgoingPacket, RingError, Side, loopback,
};

/// Guest→host control page and data area of a 1-page-per-half loopback.
const CONTROL: u64 = 0;
const DATA: u64 = 4096;
/// Host→guest control page.
const DOWN_CONTROL: u64 = 2 * 4096;

fn channel() -> Loopback {
    loopback(&LoopbackConfig {
        incoming_pages: 1,
        outgoing_pages: 1,
        buffer_pages: 4,
        ..LoopbackConfig::default()
    })
    .unwrap()
}

/// A descriptor: type, data_offset8, length8, flags, transaction id.
fn descriptor(packet_type: u16, data_offset8: u16, length8: u16, flags: u16) -> Vec<u8> {
    let mut d = Vec::new();
    for v in [packet_type, data_offset8, length8, flags] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d.extend_from_slice(&7u64.to_le_bytes());
    d
}

/// Places `packet` at data offset 0 followed by a trailer, and publishes a
/// write index of `write_index` (normally packet + trailer).
fn inject(lb: &Loopback, packet: &[u8], write_index: u32) {
    lb.memory.write(DATA, packet).unwrap();
    lb.memory
        .write(DATA + packet.len() as u64, &0u64.to_le_bytes())
        .unwrap();
    lb.memory
        .store_u32(CONTROL, write_index, Ordering::Release)
        .unwrap();
}

fn read_error(packet: &[u8], write_index: u32) -> RingError {
    let mut lb = channel();
    inject(&lb, packet, write_index);
    let err = lb.host.try_read().unwrap_err();
    // The reader stays at the bad packet: the error repeats, nothing is
    // consumed.
    assert_eq!(lb.host.try_read().unwrap_err(), err);
    assert_eq!(
        lb.memory
            .load_u32(CONTROL + READ_INDEX_OFFSET, Ordering::Relaxed)
            .unwrap(),
        0
    );
    err
}

fn packet_len(p: &[u8]) -> u32 {
    p.len() as u32 + 8
}

#[test]
fn check_1_available_below_a_descriptor() {
    assert_eq!(
        read_error(&[0; 8], 8),
        RingError::AvailableTooSmall {
            available: 8,
            offset: 0
        }
    );
}

#[test]
fn check_2a_data_offset_below_two() {
    let p = [descriptor(6, 1, 2, 0), vec![0; 0]].concat();
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::DataOffsetTooSmall {
            data_offset8: 1,
            offset: 0
        }
    );
}

#[test]
fn check_2b_data_offset_beyond_length() {
    let p = [descriptor(6, 3, 2, 0)].concat();
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::DataOffsetBeyondLength {
            data_offset8: 3,
            length8: 2,
            offset: 0
        }
    );
}

#[test]
fn check_3_packet_beyond_available() {
    let p = [descriptor(6, 2, 4, 0), vec![1; 16]].concat();
    assert_eq!(
        read_error(&p, 24),
        RingError::PacketBeyondAvailable {
            length8: 4,
            available: 24,
            offset: 0
        }
    );
}

#[test]
fn pitfall_trailer_must_be_counted_in_available() {
    // Exactly the packet is published, without its trailer: a reader that
    // forgets the trailer would accept it and later parse stale bytes.
    let p = [descriptor(6, 2, 3, 0), vec![1; 8]].concat();
    assert_eq!(
        read_error(&p, p.len() as u32),
        RingError::PacketBeyondAvailable {
            length8: 3,
            available: 24,
            offset: 0
        }
    );
}

#[test]
fn check_4_flags_other_than_completion_requested() {
    let p = descriptor(6, 2, 2, 0x8001);
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::BadFlags {
            flags: 0x8001,
            offset: 0
        }
    );
}

#[test]
fn check_5_unknown_type() {
    for bad in [0u16, 5, 8, 0xA, 0xC, 0xFFFF] {
        let p = descriptor(bad, 2, 2, 0);
        assert_eq!(
            read_error(&p, packet_len(&p)),
            RingError::BadType {
                packet_type: bad,
                offset: 0
            }
        );
    }
}

#[test]
fn check_6_gpa_direct_header_below_24_bytes() {
    // Pitfall: 8*data_offset8 - 24 underflows into a huge allocation.
    let p = [descriptor(9, 2, 3, 0), vec![0; 8]].concat();
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::ExtensionHeaderTooShort {
            packet_type: 9,
            data_offset8: 2,
            offset: 0
        }
    );
}

#[test]
fn check_6_transfer_page_header_below_24_bytes() {
    let p = descriptor(7, 2, 2, 0);
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::ExtensionHeaderTooShort {
            packet_type: 7,
            data_offset8: 2,
            offset: 0
        }
    );
}

/// A GPA-direct packet with `range_count` and the given range bytes.
fn gpa_direct(range_count: u32, ranges: &[u8]) -> Vec<u8> {
    let header_len = 24 + ranges.len();
    assert_eq!(header_len % 8, 0);
    let d8 = (header_len / 8) as u16;
    [
        descriptor(9, d8, d8, 1),
        0u32.to_le_bytes().to_vec(),
        range_count.to_le_bytes().to_vec(),
        ranges.to_vec(),
    ]
    .concat()
}

fn range_bytes(byte_count: u32, byte_offset: u32, gpns: &[u64]) -> Vec<u8> {
    let mut r = [byte_count.to_le_bytes(), byte_offset.to_le_bytes()].concat();
    for g in gpns {
        r.extend_from_slice(&g.to_le_bytes());
    }
    r
}

#[test]
fn check_7_gpa_direct_without_ranges() {
    let p = gpa_direct(0, &range_bytes(8, 0, &[1]));
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::NoRanges {
            packet_type: 9,
            offset: 0
        }
    );
}

#[test]
fn pitfall_empty_range_is_an_error_not_a_panic() {
    let p = gpa_direct(1, &range_bytes(0, 0, &[1]));
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::BadRanges {
            offset: 0,
            source: GpaError::EmptyRange
        }
    );
}

#[test]
fn pitfall_byte_offset_is_rejected_not_masked() {
    let p = gpa_direct(1, &range_bytes(8, 0x1004, &[1, 2]));
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::BadRanges {
            offset: 0,
            source: GpaError::OffsetTooLarge(0x1004)
        }
    );
}

#[test]
fn gpa_direct_needs_every_gpn_inside_the_header() {
    // 4096 bytes at offset 2 span two pages; only one GPN fits the header.
    let p = gpa_direct(1, &range_bytes(4096, 2, &[1]));
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::BadRanges {
            offset: 0,
            source: GpaError::PageCount {
                needed: 2,
                present: 1
            }
        }
    );
}

#[test]
fn gpa_direct_huge_range_count_is_bounded_by_the_header() {
    let p = gpa_direct(u32::MAX, &range_bytes(8, 0, &[1]));
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::BadRanges {
            offset: 0,
            source: GpaError::Truncated(16)
        }
    );
}

#[test]
fn gpa_direct_huge_byte_count_needs_its_pages() {
    // u32::MAX bytes would span ~1M pages: arithmetic is checked, no
    // allocation of that size happens.
    let p = gpa_direct(1, &range_bytes(u32::MAX, 0xFFE, &[1]));
    assert!(matches!(
        read_error(&p, packet_len(&p)),
        RingError::BadRanges {
            source: GpaError::PageCount { .. },
            ..
        }
    ));
}

#[test]
fn transfer_page_ranges_must_fit_the_header() {
    let p = [
        descriptor(7, 4, 4, 0),
        vec![1, 0, 0, 0],
        3u32.to_le_bytes().to_vec(),
        vec![0; 8],
    ]
    .concat();
    assert_eq!(
        read_error(&p, packet_len(&p)),
        RingError::TransferRangesTruncated {
            range_count: 3,
            header_len: 32,
            offset: 0
        }
    );
}

#[test]
fn transfer_page_range_checked_against_its_buffer() {
    let mut lb = channel();
    let p = [
        descriptor(7, 4, 4, 0),
        vec![1, 0, 0, 0],
        1u32.to_le_bytes().to_vec(),
        range_bytes(100, 4000, &[]),
    ]
    .concat();
    inject(&lb, &p, packet_len(&p));
    let got = lb.host.try_read().unwrap().unwrap();
    let vmbdev_ring::PacketKind::TransferPages { set_id, ranges } = got.kind else {
        panic!("wrong kind {:?}", got.kind);
    };
    assert_eq!(set_id, 1);
    assert!(ranges[0].check_within(4100).is_ok());
    assert_eq!(
        ranges[0].check_within(4099),
        Err(RingError::TransferRangeOutside {
            byte_offset: 4000,
            byte_count: 100,
            buffer_len: 4099
        })
    );
}

#[test]
fn write_index_out_of_range_or_unaligned() {
    let mut lb = channel();
    lb.memory
        .store_u32(CONTROL, 4096, Ordering::Release)
        .unwrap();
    assert_eq!(
        lb.host.try_read().unwrap_err(),
        RingError::IndexOutOfRange {
            which: "write",
            value: 4096,
            size: 4096
        }
    );
    lb.memory.store_u32(CONTROL, 20, Ordering::Release).unwrap();
    assert_eq!(
        lb.host.try_read().unwrap_err(),
        RingError::IndexUnaligned {
            which: "write",
            value: 20
        }
    );
}

#[test]
fn index_is_revalidated_on_every_load() {
    // A good packet is read, then the guest corrupts its write index: the
    // next load must catch it, not reuse the earlier valid value.
    let mut lb = channel();
    assert!(lb.guest.try_write(&OutgoingPacket::in_band(b"ok")).unwrap());
    assert!(lb.host.try_read().unwrap().is_some());
    lb.memory
        .store_u32(CONTROL, 0xFFFF_FFF8, Ordering::Release)
        .unwrap();
    assert!(matches!(
        lb.host.try_read(),
        Err(RingError::IndexOutOfRange {
            value: 0xFFFF_FFF8,
            ..
        })
    ));
}

#[test]
fn hostile_read_index_of_the_outgoing_ring() {
    let mut lb = channel();
    lb.memory
        .store_u32(DOWN_CONTROL + READ_INDEX_OFFSET, 4100, Ordering::Release)
        .unwrap();
    assert!(matches!(
        lb.host.try_write(&OutgoingPacket::in_band(b"x")),
        Err(RingError::IndexOutOfRange { which: "read", .. })
    ));
    lb.memory
        .store_u32(DOWN_CONTROL + READ_INDEX_OFFSET, 4, Ordering::Release)
        .unwrap();
    assert!(matches!(
        lb.host.try_write(&OutgoingPacket::in_band(b"x")),
        Err(RingError::IndexUnaligned { which: "read", .. })
    ));
}

fn doorbells() -> (Arc<dyn Doorbell>, Arc<dyn Doorbell>) {
    (
        Arc::new(EventDoorbell::new()),
        Arc::new(EventDoorbell::new()),
    )
}

#[test]
fn pitfall_zero_data_page_half_is_rejected() {
    let mem = GuestMemory::new(8 * 4096).unwrap();
    let (a, b) = doorbells();
    // Offset 1: the guest→host half would be a lone control page.
    assert_eq!(
        Endpoint::open(Side::Host, &mem, &[0, 1, 2, 3], 1, a.clone(), b.clone()).unwrap_err(),
        RingError::BadDownstreamOffset {
            offset: 1,
            pages: 4
        }
    );
    // Offset 3 of 4 pages: the host→guest half has no data page.
    assert_eq!(
        Endpoint::open(Side::Host, &mem, &[0, 1, 2, 3], 3, a.clone(), b.clone()).unwrap_err(),
        RingError::BadDownstreamOffset {
            offset: 3,
            pages: 4
        }
    );
    assert!(Endpoint::open(Side::Host, &mem, &[0, 1, 2, 3], 2, a, b).is_ok());
}

#[test]
fn ring_page_outside_guest_memory_is_rejected() {
    let mem = GuestMemory::new(8 * 4096).unwrap();
    let (a, b) = doorbells();
    assert_eq!(
        Endpoint::open(Side::Guest, &mem, &[0, 1, 2, 99], 2, a, b).unwrap_err(),
        RingError::Gpa(GpaError::PageOutOfRange { gpn: 99, pages: 8 })
    );
}

#[test]
fn pitfall_host_lengths_are_never_narrowed_to_u16() {
    // A 600 KiB payload would wrap length8 (u16) if narrowed unchecked.
    let lb = loopback(&LoopbackConfig {
        incoming_pages: 200,
        outgoing_pages: 200,
        buffer_pages: 1,
        ..LoopbackConfig::default()
    })
    .unwrap();
    let mut host = lb.host;
    let payload = vec![0u8; 600 * 1024];
    assert!(matches!(
        host.try_write(&OutgoingPacket::in_band(&payload)),
        Err(RingError::PacketTooLarge { .. })
    ));
}

#[test]
fn packet_larger_than_the_ring_is_an_error_not_a_wait() {
    let mut lb = channel();
    // 4096-byte ring: 16 + 4072 + 8 (trailer) + 8 (gap) > 4096.
    let payload = vec![0u8; 4072];
    assert_eq!(
        lb.host.try_write(&OutgoingPacket::in_band(&payload)),
        Err(RingError::PacketExceedsRing {
            needed: 4096,
            ring_size: 4096
        })
    );
    assert!(
        lb.host
            .try_write(&OutgoingPacket::in_band(&payload[8..]))
            .unwrap()
    );
}

#[test]
fn masked_reader_gets_no_signal() {
    let mut lb = channel();
    lb.memory
        .store_u32(CONTROL + INTERRUPT_MASK_OFFSET, 1, Ordering::Release)
        .unwrap();
    lb.guest.try_write(&OutgoingPacket::in_band(b"a")).unwrap();
    assert_eq!(lb.host_doorbell.signal_count(), 0);
    lb.host.try_read().unwrap();
    lb.memory
        .store_u32(CONTROL + INTERRUPT_MASK_OFFSET, 0, Ordering::Release)
        .unwrap();
    lb.guest.try_write(&OutgoingPacket::in_band(b"b")).unwrap();
    assert_eq!(lb.host_doorbell.signal_count(), 1);
}

#[test]
fn hostile_pending_send_size_is_masked_and_edge_triggered() {
    let mut lb = channel();
    let write_n = |lb: &mut Loopback, n: usize| {
        for _ in 0..n {
            assert!(
                lb.guest
                    .try_write(&OutgoingPacket::in_band(&[0; 1000]))
                    .unwrap()
            );
        }
    };
    let pending = CONTROL + PENDING_SEND_SIZE_OFFSET;
    // Threshold larger than the ring: never reachable, never signalled.
    lb.memory
        .store_u32(pending, u32::MAX, Ordering::Release)
        .unwrap();
    write_n(&mut lb, 3);
    for _ in 0..3 {
        lb.host.try_read().unwrap().unwrap();
    }
    assert_eq!(lb.guest_doorbell.signal_count(), 0);
    // 7 & !7 == 0: no request at all.
    lb.memory.store_u32(pending, 7, Ordering::Release).unwrap();
    write_n(&mut lb, 3);
    for _ in 0..3 {
        lb.host.try_read().unwrap().unwrap();
    }
    assert_eq!(lb.guest_doorbell.signal_count(), 0);
    // 2055 & !7 = 2048: free goes 1024 → 2048 → 3072 → 4096; only the
    // crossing read signals.
    lb.memory
        .store_u32(pending, 2055, Ordering::Release)
        .unwrap();
    write_n(&mut lb, 3);
    lb.host.try_read().unwrap().unwrap();
    assert_eq!(lb.guest_doorbell.signal_count(), 1);
    lb.host.try_read().unwrap().unwrap();
    lb.host.try_read().unwrap().unwrap();
    assert_eq!(lb.guest_doorbell.signal_count(), 1);
}
