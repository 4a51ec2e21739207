//! Every hostile guest input of the control-plane spec, each with its
//! defined outcome (an error status in the reply, the message dropped and
//! counted, or the connection refused), plus property tests: random
//! message sequences against a small model of the protocol, and random
//! bytes that must never panic or grow the host's queue.

mod common;

use std::sync::Arc;

use common::*;
use vmbdev_vmbus::protocol::{MessageType, STATUS_SUCCESS, Version};
use vmbdev_vmbus::{Dropped, ServerConfig};

/// A connected 5.3 guest with one parked device offered as relid 1.
fn connected(config: ServerConfig) -> (Rig, Arc<Parked>) {
    let mut rig = Rig::new(64, config);
    let device = Arc::new(Parked::default());
    rig.add(device.clone());
    assert_eq!(rig.connect().len(), 1);
    (rig, device)
}

/// As [`connected`], with GPADL 1 (pages 8..12) created and opened as the
/// ring of relid 1.
fn opened() -> (Rig, Arc<Parked>) {
    let (mut rig, device) = connected(ServerConfig::default());
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(1, 1, 2), STATUS_SUCCESS);
    (rig, device)
}

/// Posts `messages` and returns the GPADL_CREATED status for relid 1.
fn gpadl_status(rig: &mut Rig, gpadl: u32, messages: &[Vec<u8>]) -> u32 {
    for message in messages {
        rig.post(message).unwrap();
    }
    created_status(&rig.expect(MessageType::GPADL_CREATED), 1, gpadl)
}

#[test]
fn messages_shorter_than_their_type_are_dropped() {
    let (mut rig, _) = opened();
    let open = open_channel(1, 1, 1, 2, 0);
    assert_eq!(rig.post(&open[..20]), Err(Dropped::TooShort));
    assert_eq!(rig.post(&[3, 0, 0]), Err(Dropped::TooShort));
    assert_eq!(rig.post(&teardown(1, 1)[..12]), Err(Dropped::TooShort));
    assert_eq!(rig.server.dropped(Dropped::TooShort), 3);
    rig.expect_none();
    assert!(rig.server.is_open(1));
}

#[test]
fn messages_longer_than_240_bytes_are_dropped() {
    let (mut rig, _) = connected(ServerConfig::default());
    let mut long = header(MessageType::UNLOAD);
    long.resize(241, 0);
    assert_eq!(rig.post(&long), Err(Dropped::TooLong));
    assert_eq!(rig.server.dropped(Dropped::TooLong), 1);
    rig.expect_none();
    assert!(
        rig.server.version().is_some(),
        "the UNLOAD was not acted on"
    );
}

#[test]
fn unknown_message_types_are_dropped() {
    let (mut rig, _) = connected(ServerConfig::default());
    for kind in [0, 18, 99, u32::MAX] {
        assert_eq!(
            rig.post(&header(MessageType(kind))),
            Err(Dropped::UnknownType)
        );
    }
    // Host→guest types are not taken from a guest.
    assert_eq!(
        rig.post(&header(MessageType::ALL_OFFERS_DELIVERED)),
        Err(Dropped::UnknownType)
    );
    assert_eq!(rig.server.dropped(Dropped::UnknownType), 5);
    rig.expect_none();
}

#[test]
fn anything_before_initiate_contact_is_dropped() {
    let mut rig = Rig::new(64, ServerConfig::default());
    rig.add(Arc::new(Parked::default()));
    let messages = [
        header(MessageType::REQUEST_OFFERS),
        gpadl_messages(1, 1, &[8, 9, 10, 11]).remove(0),
        open_channel(1, 1, 1, 2, 0),
        header(MessageType::UNLOAD),
    ];
    for message in &messages {
        assert_eq!(rig.post(message), Err(Dropped::NotConnected));
    }
    assert_eq!(rig.server.dropped(Dropped::NotConnected), 4);
    rig.expect_none();
    assert_eq!(rig.server.gpadl_count(), 0);
}

#[test]
fn messages_on_the_wrong_connection_id_are_refused() {
    let mut rig = Rig::new(64, ServerConfig::default());
    rig.add(Arc::new(Parked::default()));
    // From 5.0 INITIATE_CONTACT comes on connection 4, before it on 1.
    assert_eq!(
        rig.post_on(1, &initiate_contact(Version::V5_3, 0)),
        Err(Dropped::WrongConnection)
    );
    assert_eq!(
        rig.post_on(4, &initiate_contact(Version::WIN10, 0)),
        Err(Dropped::WrongConnection)
    );
    rig.expect_none();
    rig.connect();
    assert_eq!(
        rig.post_on(4, &header(MessageType::UNLOAD)),
        Err(Dropped::WrongConnection)
    );
    assert_eq!(rig.server.dropped(Dropped::WrongConnection), 3);
    assert!(rig.server.version().is_some());
}

#[test]
fn a_second_initiate_contact_while_a_channel_is_open_is_refused() {
    let (mut rig, _) = opened();
    assert_eq!(rig.contact(Version::V5_0), 0);
    assert_eq!(
        rig.server.version(),
        Some(Version::V5_3),
        "the connection stays"
    );
    assert!(rig.server.is_open(1));
    // With nothing left open a renegotiation is allowed.
    rig.post(&relid_message(MessageType::CLOSE_CHANNEL, 1))
        .unwrap();
    rig.join(1).unwrap();
    rig.post(&teardown(1, 1)).unwrap();
    rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(rig.contact(Version::V5_0), 1);
}

#[test]
fn a_range_whose_byte_count_needs_more_pfns_than_sent_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    // Three pages' worth of bytes, two page numbers (and a buflen to match).
    let messages = gpadl_messages_raw(1, 7, 8 + 16, 1, 3 * 4096, 0, &[8, 9]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    assert!(rig.registry.get(7).is_err());
    assert_eq!(rig.server.gpadl_count(), 0);
}

#[test]
fn a_range_whose_byte_count_needs_fewer_pfns_than_sent_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    let messages = gpadl_messages_raw(1, 7, 8 + 24, 1, 4096, 0, &[8, 9, 10]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    assert!(rig.registry.get(7).is_err());
}

#[test]
fn pfns_outside_guest_memory_are_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    let messages = gpadl_messages(1, 7, &[8, 64]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    let messages = gpadl_messages(1, 8, &[8, u64::MAX]);
    assert_ne!(gpadl_status(&mut rig, 8, &messages), STATUS_SUCCESS);
    assert!(rig.registry.get(7).is_err() && rig.registry.get(8).is_err());
}

#[test]
fn a_range_buflen_shorter_than_the_pfns_sent_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    let messages = gpadl_messages_raw(1, 7, 8 + 8, 1, 2 * 4096, 0, &[8, 9]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
}

#[test]
fn a_range_buflen_longer_than_the_pfns_that_follow_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    // 40 pages promised; the header carries 26, the body overruns by 14.
    let pfns: Vec<u64> = (0..HEADER_PFNS as u64 + BODY_PFNS as u64)
        .map(|p| 8 + p % 50)
        .collect();
    let messages = gpadl_messages_raw(1, 7, 8 + 8 * 40, 1, 40 * 4096, 0, &pfns);
    assert_eq!(messages.len(), 2);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    // The abandoned GPADL takes no more bodies.
    assert_eq!(
        rig.post(&gpadl_body(2, 7, &[8])),
        Err(Dropped::UnknownGpadl)
    );
    assert_eq!(rig.server.gpadl_count(), 0);
}

#[test]
fn a_range_buflen_too_short_for_its_range_count_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    let messages = gpadl_messages_raw(1, 7, 16, 3, 4096, 0, &[8]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    let messages = gpadl_messages_raw(1, 8, 16, 0, 4096, 0, &[8]);
    assert_ne!(gpadl_status(&mut rig, 8, &messages), STATUS_SUCCESS);
}

#[test]
fn a_gpadl_of_no_ranges_is_refused_at_its_header() {
    let (mut rig, _) = connected(ServerConfig::default());
    // range_count 0 with a range_buflen that leaves bodies to come: the
    // header alone is answered, nothing waits for the bodies.
    let pfns: Vec<u64> = (8..8 + HEADER_PFNS as u64).collect();
    let header = gpadl_messages_raw(1, 7, 8 + 8 * 40, 0, 40 * 4096, 0, &pfns);
    assert_eq!(header.len(), 1);
    assert_ne!(gpadl_status(&mut rig, 7, &header), STATUS_SUCCESS);
    assert_eq!(rig.server.gpadl_count(), 0);
    assert_eq!(
        rig.post(&gpadl_body(1, 7, &[8])),
        Err(Dropped::UnknownGpadl)
    );
}

#[test]
fn more_gpadls_than_max_gpadls_are_refused() {
    let config = ServerConfig {
        max_gpadls: 3,
        max_assembling: 3,
        ..ServerConfig::default()
    };
    let (mut rig, _) = connected(config);
    for gpadl in 1..=3 {
        assert_eq!(
            rig.create_gpadl(1, gpadl, &[8 + gpadl as u64]),
            STATUS_SUCCESS
        );
    }
    assert_ne!(rig.create_gpadl(1, 4, &[20]), STATUS_SUCCESS);
    assert!(rig.registry.get(4).is_err());
    assert_eq!(rig.server.gpadl_count(), 3);
    // One torn down makes room for one more.
    rig.post(&teardown(1, 2)).unwrap();
    rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(rig.create_gpadl(1, 4, &[20]), STATUS_SUCCESS);
    assert_ne!(rig.create_gpadl(1, 5, &[21]), STATUS_SUCCESS);
}

#[test]
fn gpadls_past_max_total_gpadl_pages_are_refused() {
    let config = ServerConfig {
        max_total_gpadl_pages: 10,
        ..ServerConfig::default()
    };
    let (mut rig, _) = connected(config);
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.create_gpadl(1, 2, &[12, 13, 14, 15]), STATUS_SUCCESS);
    // 8 of 10 pages taken: three more are refused, two fit.
    assert_ne!(rig.create_gpadl(1, 3, &[16, 17, 18]), STATUS_SUCCESS);
    assert!(rig.registry.get(3).is_err());
    assert_eq!(rig.create_gpadl(1, 4, &[16, 17]), STATUS_SUCCESS);
    assert_ne!(rig.create_gpadl(1, 5, &[18]), STATUS_SUCCESS);
    // A teardown gives its pages back.
    rig.post(&teardown(1, 1)).unwrap();
    rig.expect(MessageType::GPADL_TORNDOWN);
    assert_eq!(rig.create_gpadl(1, 5, &[18, 19, 20, 21]), STATUS_SUCCESS);
}

#[test]
fn a_gpadl_body_for_an_unknown_gpadl_is_dropped() {
    let (mut rig, _) = connected(ServerConfig::default());
    assert_eq!(
        rig.post(&gpadl_body(1, 42, &[8, 9])),
        Err(Dropped::UnknownGpadl)
    );
    assert_eq!(rig.server.dropped(Dropped::UnknownGpadl), 1);
    rig.expect_none();
}

#[test]
fn a_gpadl_body_for_a_completed_gpadl_is_dropped() {
    let (mut rig, _) = opened();
    assert_eq!(
        rig.post(&gpadl_body(1, 1, &[12])),
        Err(Dropped::GpadlComplete)
    );
    assert_eq!(
        rig.registry.get(1).unwrap().len(),
        4,
        "the GPADL is unchanged"
    );
    rig.expect_none();
}

#[test]
fn a_duplicate_gpadl_id_is_refused_and_the_first_kept() {
    let (mut rig, device) = connected(ServerConfig::default());
    assert_eq!(rig.create_gpadl(1, 3, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_ne!(rig.create_gpadl(1, 3, &[20, 21, 22, 23]), STATUS_SUCCESS);
    assert_eq!(&*rig.registry.get(3).unwrap(), &[8, 9, 10, 11]);
    assert_eq!(rig.open(1, 3, 2), STATUS_SUCCESS);
    assert_eq!(*device.opens.lock().unwrap(), 1);
}

#[test]
fn a_gpadl_with_far_more_pages_than_allowed_is_refused_at_its_header() {
    let config = ServerConfig {
        max_gpadl_pages: 64,
        ..ServerConfig::default()
    };
    let (mut rig, _) = connected(config);
    let pfns: Vec<u64> = (8..8 + HEADER_PFNS as u64).collect();
    let header = gpadl_messages_raw(1, 7, 8 + 8 * 65, 1, 65 * 4096, 0, &pfns);
    assert_eq!(header.len(), 1);
    // Refused before any body is awaited.
    assert_ne!(gpadl_status(&mut rig, 7, &header), STATUS_SUCCESS);
    assert_eq!(rig.server.gpadl_count(), 0);
    // The wire's own limit: range_buflen is 16 bits.
    let (mut rig, _) = connected(ServerConfig::default());
    let header = gpadl_messages_raw(1, 7, u16::MAX - 7, 1, u32::MAX, 0, &pfns);
    assert_ne!(gpadl_status(&mut rig, 7, &header), STATUS_SUCCESS);
}

#[test]
fn too_many_gpadls_being_built_at_once_are_refused() {
    let config = ServerConfig {
        max_assembling: 2,
        ..ServerConfig::default()
    };
    let (mut rig, _) = connected(config);
    let pfns: Vec<u64> = (8..8 + 40).map(|p| p % 60).collect();
    for gpadl in [1, 2] {
        let header = gpadl_messages(1, gpadl, &pfns).remove(0);
        rig.post(&header).unwrap();
    }
    rig.expect_none();
    let header = gpadl_messages(1, 3, &pfns).remove(0);
    assert_ne!(gpadl_status(&mut rig, 3, &[header]), STATUS_SUCCESS);
    assert_eq!(rig.server.gpadl_count(), 2);
}

#[test]
fn open_of_an_unknown_relid_is_dropped() {
    let (mut rig, device) = connected(ServerConfig::default());
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    for relid in [0, 2, u32::MAX] {
        assert_eq!(
            rig.post(&open_channel(relid, 1, 1, 2, 0)),
            Err(Dropped::UnknownRelid)
        );
    }
    rig.expect_none();
    assert_eq!(*device.opens.lock().unwrap(), 0);
}

#[test]
fn a_second_open_fails_and_the_first_stays() {
    let (mut rig, device) = opened();
    let (to_host, to_guest) = rig.host.doorbells[&1].clone();
    assert_eq!(rig.create_gpadl(1, 2, &[20, 21, 22, 23]), STATUS_SUCCESS);
    assert_ne!(rig.open(1, 2, 2), STATUS_SUCCESS);
    assert_ne!(rig.open(1, 1, 2), STATUS_SUCCESS);
    assert!(rig.server.is_open(1));
    assert_eq!(*device.opens.lock().unwrap(), 1);
    // The live channel's routing is untouched: nothing opened, closed or
    // replaced.
    assert_eq!(rig.host.opened, [1]);
    assert!(rig.host.closed.is_empty());
    let (now_to_host, now_to_guest) = &rig.host.doorbells[&1];
    assert!(Arc::ptr_eq(&to_host, now_to_host) && Arc::ptr_eq(&to_guest, now_to_guest));
    assert!(!device.stops.lock().unwrap()[&0].is_stopped());
}

#[test]
fn open_with_an_unknown_gpadl_fails() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let device = Arc::new(Parked::default());
    rig.add(device.clone());
    rig.add(Arc::new(Parked::default()));
    assert_eq!(rig.connect().len(), 2);
    assert_ne!(rig.open(1, 9, 2), STATUS_SUCCESS);
    // A GPADL the guest made for another channel is not this one's ring.
    assert_eq!(rig.create_gpadl(2, 5, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_ne!(rig.open(1, 5, 2), STATUS_SUCCESS);
    assert!(!rig.server.is_open(1));
    assert_eq!(*device.opens.lock().unwrap(), 0);
    assert!(rig.host.tasks.is_empty());
    assert!(rig.host.opened.is_empty());
}

#[test]
fn open_with_a_downstream_offset_of_zero_or_past_the_ring_fails() {
    let (mut rig, device) = connected(ServerConfig::default());
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    for offset in [0, 1, 3, 4, 5, u32::MAX] {
        assert_ne!(rig.open(1, 1, offset), STATUS_SUCCESS, "offset {offset}");
    }
    assert_eq!(*device.opens.lock().unwrap(), 0);
    assert_eq!(rig.host.closed, [1; 6], "doorbells undone each time");
    assert_eq!(rig.open(1, 1, 2), STATUS_SUCCESS);
}

#[test]
fn close_of_a_channel_not_open_is_dropped() {
    let (mut rig, _) = connected(ServerConfig::default());
    let close = relid_message(MessageType::CLOSE_CHANNEL, 1);
    assert_eq!(rig.post(&close), Err(Dropped::NotOpen));
    assert_eq!(
        rig.post(&relid_message(MessageType::CLOSE_CHANNEL, 5)),
        Err(Dropped::UnknownRelid)
    );
    assert!(rig.host.closed.is_empty());
}

#[test]
fn teardown_of_a_gpadl_that_does_not_exist_is_dropped() {
    let (mut rig, _) = opened();
    assert_eq!(rig.post(&teardown(1, 99)), Err(Dropped::UnknownGpadl));
    // Right handle, wrong channel.
    assert_eq!(rig.post(&teardown(2, 1)), Err(Dropped::UnknownGpadl));
    rig.post(&teardown(1, 1)).unwrap();
    // The ring is still open: the teardown waits; a second one is dropped.
    assert_eq!(rig.post(&teardown(1, 1)), Err(Dropped::GpadlNotCreated));
    rig.expect_none();
    assert_eq!(rig.settle_teardowns(), 1);
}

#[test]
fn teardown_of_a_gpadl_still_being_built_is_dropped() {
    let (mut rig, _) = connected(ServerConfig::default());
    let pfns: Vec<u64> = (8..48).collect();
    rig.post(&gpadl_messages(1, 4, &pfns).remove(0)).unwrap();
    assert_eq!(rig.post(&teardown(1, 4)), Err(Dropped::GpadlNotCreated));
}

#[test]
fn relid_released_for_a_channel_not_rescinded_is_dropped() {
    let (mut rig, _) = opened();
    let released = relid_message(MessageType::RELID_RELEASED, 1);
    assert_eq!(rig.post(&released), Err(Dropped::NotRescinded));
    assert!(rig.server.is_open(1));
}

#[test]
fn a_second_request_for_offers_is_dropped() {
    let (mut rig, _) = connected(ServerConfig::default());
    assert_eq!(
        rig.post(&header(MessageType::REQUEST_OFFERS)),
        Err(Dropped::OffersAlreadyRequested)
    );
    rig.expect_none();
}

#[test]
fn a_guest_that_never_clears_its_slot_keeps_host_queues_bounded() {
    let config = ServerConfig {
        queue_limit: 4,
        ..ServerConfig::default()
    };
    let (mut rig, _) = connected(config.clone());
    rig.host.slot_full = true;
    let mut dropped = 0;
    for _ in 0..100 {
        if rig.post(&modify(1, 0)) == Err(Dropped::QueueFull) {
            dropped += 1;
        }
    }
    assert_eq!(rig.server.queued(), 4);
    assert_eq!(dropped, 96);
    assert_eq!(rig.server.dropped(Dropped::QueueFull), 96);
    rig.host.slot_full = false;
    rig.server.slot_freed(&mut rig.host);
    for _ in 0..4 {
        rig.expect(MessageType::MODIFY_CHANNEL_RESPONSE);
    }
    rig.expect_none();

    // Offers for many channels wait as a cursor, not as queued messages.
    let mut rig = Rig::new(64, config);
    for _ in 0..50 {
        rig.add(Arc::new(Parked::default()));
    }
    assert_eq!(rig.contact(Version::V5_3), 1);
    rig.host.slot_full = true;
    rig.post(&header(MessageType::REQUEST_OFFERS)).unwrap();
    assert_eq!(rig.server.queued(), 0);
    rig.host.slot_full = false;
    rig.server.slot_freed(&mut rig.host);
    for _ in 0..50 {
        rig.expect(MessageType::OFFER_CHANNEL);
    }
    rig.expect(MessageType::ALL_OFFERS_DELIVERED);
    rig.expect_none();
}

#[test]
fn sub_channel_requests_are_bounded_by_the_offer_and_forgotten_with_the_connection() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let device = Arc::new(Parked {
        max_sub_channels: 2,
        ..Parked::default()
    });
    rig.add(device.clone());
    rig.connect();
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(1, 1, 2), STATUS_SUCCESS);
    let control = device.sub_channels.lock().unwrap().clone().unwrap();
    assert!(control.enable_sub_channels(3).is_err(), "more than offered");
    assert!(control.enable_sub_channels(0).is_err());
    // A guest repeating CREATE_SUB_CHANNELS leaves one request behind,
    // the largest it asked for.
    control.enable_sub_channels(1).unwrap();
    for _ in 0..1000 {
        control.enable_sub_channels(2).unwrap();
    }
    control.enable_sub_channels(1).unwrap();
    assert_eq!(rig.server.sub_channel_requests(), 1);
    assert_eq!(rig.server.offer_sub_channels(&mut rig.host), 2);
    assert_eq!(rig.server.sub_channel_requests(), 0);
    assert_eq!(rig.server.offer_sub_channels(&mut rig.host), 0);
    for index in 1..=2u32 {
        let offer = rig.expect(MessageType::OFFER_CHANNEL);
        assert_eq!(u32_at(&offer, 8 + 176), 1 + index, "next free relid");
        // sub_channel_index is at byte 172 of the offer.
        assert_eq!(
            u16::from_le_bytes([offer[8 + 172], offer[8 + 173]]),
            index as u16
        );
    }
    control.enable_sub_channels(1).unwrap();
    assert_eq!(
        rig.server.offer_sub_channels(&mut rig.host),
        0,
        "already offered"
    );
    rig.post(&header(MessageType::UNLOAD)).unwrap();
    rig.join(1).unwrap();
    rig.finish_teardowns();
    rig.expect(MessageType::UNLOAD_RESPONSE);
    assert_eq!(
        rig.connect().len(),
        1,
        "a new connection starts with the primary"
    );
}

#[test]
fn a_reply_that_cannot_be_delivered_is_dropped_and_counted_not_queued() {
    let mut rig = Rig::new(64, ServerConfig::default());
    rig.add(Arc::new(Parked::default()));
    // vCPU 0 exists but its SIMP is disabled: no EOM will ever come.
    rig.host.unreachable_vps = vec![0];
    rig.post_on(4, &initiate_contact(Version::V5_3, 0)).unwrap();
    assert_eq!(rig.server.queued(), 0, "nothing waits for an EOM");
    assert_eq!(rig.server.undelivered(), 1);
    rig.expect_none();
    // The guest enables its SIMP and tries again: the answer arrives and
    // nothing stale comes before it.
    rig.host.unreachable_vps.clear();
    assert_eq!(rig.connect().len(), 1);
    rig.expect_none();
    assert_eq!(rig.server.undelivered(), 1);
}

#[test]
fn undeliverable_messages_in_the_queue_do_not_block_the_ones_behind_them() {
    let (mut rig, _) = connected(ServerConfig::default());
    rig.host.slot_full = true;
    rig.post(&modify(1, 0)).unwrap();
    rig.post(&modify(1, 0)).unwrap();
    assert_eq!(rig.server.queued(), 2);
    // The guest's vCPU goes away while the replies wait; a new reply for
    // it is dropped at once, those queued when their turn comes.
    rig.host.slot_full = false;
    rig.host.unreachable_vps = vec![0];
    rig.server.slot_freed(&mut rig.host);
    assert_eq!(rig.server.queued(), 0);
    assert_eq!(rig.server.undelivered(), 2);
    rig.expect_none();
}

#[test]
fn a_new_contact_is_answered_even_when_the_old_queue_is_full() {
    let config = ServerConfig {
        queue_limit: 4,
        ..ServerConfig::default()
    };
    let (mut rig, _) = connected(config);
    rig.host.slot_full = true;
    while rig.post(&modify(1, 0)).is_ok() {}
    assert_eq!(rig.server.queued(), 4);
    // A new kernel (kexec without UNLOAD) starts with a fresh slot and
    // contacts the host: it is answered first, and none of the old
    // kernel's replies follow.
    rig.host.slot_full = false;
    assert_eq!(rig.contact(Version::V5_3), 1);
    rig.expect_none();
    assert_eq!(rig.server.queued(), 0);
    rig.server.slot_freed(&mut rig.host);
    rig.expect_none();
    assert_eq!(rig.connect_offers(), 1);
}

#[test]
fn a_gpadl_over_part_of_its_pages_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    // Two pages named, 100 bytes in and 200 bytes short of their end: the
    // registry holds whole pages, so it would grant the device 300 bytes
    // more than the guest described.
    let messages = gpadl_messages_raw(1, 7, 8 + 16, 1, 2 * 4096 - 300, 100, &[8, 9]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    // A whole first page and part of the second.
    let messages = gpadl_messages_raw(1, 8, 8 + 16, 1, 4096 + 1, 0, &[8, 9]);
    assert_ne!(gpadl_status(&mut rig, 8, &messages), STATUS_SUCCESS);
    assert!(rig.registry.get(7).is_err() && rig.registry.get(8).is_err());
    assert_eq!(rig.server.gpadl_count(), 0);
    // The same pages whole are taken.
    let messages = gpadl_messages_raw(1, 9, 8 + 16, 1, 2 * 4096, 0, &[8, 9]);
    assert_eq!(gpadl_status(&mut rig, 9, &messages), STATUS_SUCCESS);
}

#[test]
fn a_gpadl_of_several_ranges_is_refused() {
    let (mut rig, _) = connected(ServerConfig::default());
    // Two one-page ranges: (4096, 0, [8]) and (4096, 0, [20]); the second
    // range's lengths are the u64 4096 in the page-number stream.
    let messages = gpadl_messages_raw(1, 7, 2 * 16, 2, 4096, 0, &[8, 4096, 20]);
    assert_ne!(gpadl_status(&mut rig, 7, &messages), STATUS_SUCCESS);
    assert!(rig.registry.get(7).is_err());
    assert_eq!(rig.server.gpadl_count(), 0);
}

#[test]
fn target_vcpus_the_vm_does_not_have_are_refused() {
    let config = ServerConfig {
        vp_count: 2,
        ..ServerConfig::default()
    };
    let mut rig = Rig::new(64, config);
    let device = Arc::new(Parked::default());
    rig.add(device.clone());
    // No vCPU to answer on: dropped, and the guest is not connected.
    for vp in [2, u32::MAX] {
        assert_eq!(
            rig.post_on(4, &initiate_contact(Version::V5_3, vp)),
            Err(Dropped::BadVp)
        );
    }
    rig.expect_none();
    assert_eq!(rig.server.version(), None);
    assert_eq!(rig.connect().len(), 1);

    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    rig.post(&open_channel(1, 7, 1, 2, 2)).unwrap();
    let reply = rig.expect(MessageType::OPEN_CHANNEL_RESULT);
    assert_ne!(u32_at(&reply, 16), STATUS_SUCCESS);
    assert!(!rig.server.is_open(1));
    assert_eq!(*device.opens.lock().unwrap(), 0);
    assert!(rig.host.doorbells.is_empty(), "nothing was routed");
    rig.post(&open_channel(1, 7, 1, 2, 1)).unwrap();
    let reply = rig.expect(MessageType::OPEN_CHANNEL_RESULT);
    assert_eq!(u32_at(&reply, 16), STATUS_SUCCESS);

    for vp in [2, u32::MAX] {
        rig.post(&modify(1, vp)).unwrap();
        let reply = rig.expect(MessageType::MODIFY_CHANNEL_RESPONSE);
        assert_ne!(u32_at(&reply, 12), STATUS_SUCCESS, "vp {vp}");
    }
    assert!(rig.host.retargets.is_empty());
    rig.post(&modify(1, 0)).unwrap();
    let reply = rig.expect(MessageType::MODIFY_CHANNEL_RESPONSE);
    assert_eq!(u32_at(&reply, 12), STATUS_SUCCESS);
    assert_eq!(rig.host.retargets.len(), 1);
    assert_eq!(rig.server.dropped(Dropped::BadVp), 2);
}

#[test]
fn modify_to_a_missing_vcpu_before_5_3_is_dropped() {
    let config = ServerConfig {
        vp_count: 2,
        ..ServerConfig::default()
    };
    let mut rig = Rig::new(64, config);
    rig.add(Arc::new(Parked::default()));
    assert_eq!(rig.contact(Version::V5_2), 1);
    assert_eq!(rig.connect_offers(), 1);
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(1, 1, 2), STATUS_SUCCESS);
    assert_eq!(rig.post(&modify(1, 2)), Err(Dropped::BadVp));
    assert!(rig.host.retargets.is_empty());
    rig.expect_none();
}

#[test]
fn a_server_config_out_of_bounds_is_refused_naming_the_field() {
    let memory = vmbdev_ring::GuestMemory::new(16 * 4096).unwrap();
    let new = |config: ServerConfig| {
        vmbdev_vmbus::Server::new(memory.clone(), vmbdev_ring::GpadlRegistry::new(), config)
            .map(|_| ())
            .map_err(|e| (e.field, e.value))
    };
    let d = ServerConfig::default;
    assert_eq!(new(d()), Ok(()));
    let bad = [
        (
            ServerConfig {
                max_channels: 2048,
                ..d()
            },
            ("max_channels", 2048),
        ),
        (
            ServerConfig {
                max_channels: 0,
                ..d()
            },
            ("max_channels", 0),
        ),
        (
            ServerConfig {
                queue_limit: 0,
                ..d()
            },
            ("queue_limit", 0),
        ),
        (
            ServerConfig {
                queue_limit: 1 << 40,
                ..d()
            },
            ("queue_limit", 1 << 40),
        ),
        (ServerConfig { vp_count: 0, ..d() }, ("vp_count", 0)),
        (
            ServerConfig {
                max_gpadls: 1 << 33,
                max_assembling: 1,
                ..d()
            },
            ("max_gpadls", 1 << 33),
        ),
        (
            ServerConfig {
                max_gpadls: 4,
                max_assembling: 5,
                ..d()
            },
            ("max_assembling", 5),
        ),
    ];
    for (config, expected) in bad {
        assert_eq!(new(config), Err(expected));
    }
    // The limits themselves are taken.
    let edge = ServerConfig {
        max_channels: 2047,
        queue_limit: 1,
        vp_count: 1,
        max_gpadls: 4,
        max_assembling: 4,
        ..d()
    };
    assert_eq!(new(edge), Ok(()));
    // restore checks the configuration it is given too.
    let restored = vmbdev_vmbus::Server::restore(
        memory.clone(),
        vmbdev_ring::GpadlRegistry::new(),
        ServerConfig {
            queue_limit: 0,
            ..d()
        },
        Vec::new(),
        b"VMBS",
    );
    assert!(
        matches!(restored, Err(vmbdev_vmbus::SavedStateError::Config(e)) if e.field == "queue_limit")
    );
}

#[test]
fn a_sub_channel_request_that_outlives_its_connection_is_forgotten() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let device = Arc::new(Parked {
        max_sub_channels: 2,
        ..Parked::default()
    });
    rig.add(device.clone());
    rig.connect();
    assert_eq!(rig.create_gpadl(1, 1, &[8, 9, 10, 11]), STATUS_SUCCESS);
    assert_eq!(rig.open(1, 1, 2), STATUS_SUCCESS);
    let control = device.sub_channels.lock().unwrap().clone().unwrap();
    rig.post(&header(MessageType::UNLOAD)).unwrap();
    rig.join(1).unwrap();
    rig.finish_teardowns();
    rig.expect(MessageType::UNLOAD_RESPONSE);
    // The device asks after the guest left: nothing is created, and the
    // bus saves and restores as a disconnected one.
    control.enable_sub_channels(2).unwrap();
    assert_eq!(rig.server.offer_sub_channels(&mut rig.host), 0);
    let saved = rig.server.save().unwrap();
    let restored = vmbdev_vmbus::Server::restore(
        rig.memory.clone(),
        vmbdev_ring::GpadlRegistry::new(),
        ServerConfig::default(),
        vec![device.clone() as Arc<dyn vmbdev_device::bus::VmbusDevice>],
        &saved,
    );
    assert!(restored.is_ok(), "{:?}", restored.err());
    assert_eq!(rig.connect().len(), 1);
}

#[test]
fn a_gpadl_half_built_when_its_channel_is_rescinded_cannot_complete() {
    let mut rig = Rig::new(64, ServerConfig::default());
    let (id, relid) = rig
        .server
        .add_device(Arc::new(Parked::default()), &mut rig.host)
        .unwrap();
    rig.connect();
    let pfns: Vec<u64> = (8..48).collect();
    let mut messages = gpadl_messages(relid, 4, &pfns).into_iter();
    rig.post(&messages.next().unwrap()).unwrap();
    rig.server.remove_device(id, &mut rig.host);
    rig.expect(MessageType::RESCIND_CHANNEL_OFFER);
    assert_eq!(rig.server.gpadl_count(), 0, "discarded with the channel");
    for body in messages {
        assert_eq!(rig.post(&body), Err(Dropped::UnknownGpadl));
    }
    rig.expect_none();
    assert!(rig.registry.get(4).is_err());
    // The guest releases the relid; nothing of the GPADL is left to wait.
    rig.post(&relid_message(MessageType::RELID_RELEASED, relid))
        .unwrap();
    assert_eq!(rig.settle_teardowns(), 0);
    rig.expect_none();
}

#[test]
fn initiate_contact_with_a_bad_sint_field_is_refused() {
    let mut rig = Rig::new(64, ServerConfig::default());
    rig.add(Arc::new(Parked::default()));
    let contact = |field: u64| {
        let mut bytes = initiate_contact(Version::V5_3, 0);
        bytes[16..24].copy_from_slice(&field.to_le_bytes());
        bytes
    };
    // msg_sint is one byte; the seven after it are padding Linux zeroes.
    for field in [0x0000_0000_0000_0102, 0x0000_0001_0000_0002, 1 << 63 | 2] {
        rig.post_on(4, &contact(field)).unwrap();
        let reply = rig.expect(MessageType::VERSION_RESPONSE);
        assert_eq!(reply[8], 0, "field {field:#x}");
        assert_eq!(rig.server.version(), None);
    }
    // A SINT past 15 has no slot to answer in.
    assert_eq!(rig.post_on(4, &contact(16)), Err(Dropped::BadSint));
    assert_eq!(rig.post_on(4, &contact(0xff)), Err(Dropped::BadSint));
    rig.expect_none();
    rig.post_on(4, &contact(2)).unwrap();
    assert_eq!(rig.expect(MessageType::VERSION_RESPONSE)[8], 1);
    // Before 5.0 the field is an interrupt page address: any value.
    let mut rig = Rig::new(64, ServerConfig::default());
    let mut old = initiate_contact(Version::WIN10, 0);
    old[16..24].copy_from_slice(&0x1234_5000u64.to_le_bytes());
    rig.post_on(1, &old).unwrap();
    assert_eq!(rig.expect(MessageType::VERSION_RESPONSE)[8], 1);
}

#[test]
fn a_ring_torn_down_under_its_open_channel_closes_it_when_a_suspend_lets_go() {
    let (mut rig, _device) = opened();
    // Refused by no rule: the teardown waits until the device lets go.
    rig.post(&teardown(1, 1)).unwrap();
    assert_eq!(rig.settle_teardowns(), 1, "the device still holds the ring");
    rig.server.suspend();
    let _ = rig.join(1);
    assert_eq!(rig.settle_teardowns(), 0);
    rig.expect(MessageType::GPADL_TORNDOWN);
    assert!(
        !rig.server.is_open(1),
        "a channel whose ring is gone cannot stay open"
    );
    // What was saved now restores, and resume starts nothing on no ring.
    let saved = rig.server.save().unwrap();
    let mut server = vmbdev_vmbus::Server::restore(
        rig.memory.clone(),
        vmbdev_ring::GpadlRegistry::new(),
        ServerConfig::default(),
        vec![Arc::new(Parked::default()) as Arc<dyn vmbdev_device::bus::VmbusDevice>],
        &saved,
    )
    .expect("a server's own saved state restores");
    let mut host = TestHost::default();
    server.resume(&mut host).unwrap();
    assert!(!server.is_open(1));
    assert!(host.tasks.is_empty());
}
