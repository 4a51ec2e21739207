//! Tests of the storvsp state machine with hand-built packets (offsets from
//! the wire table, not from the structs under test).

use std::sync::Arc;

use vmbdev_protocol::vstor::ProtocolVersion;
use vmbdev_ring::{GpaRange, GuestMemory};

use super::*;
use crate::scsi_disk::ScsiDisk;
use crate::scsi_disk::tests::{MixedDisk, mem_disk, random_bytes};

const MEMORY_PAGES: u64 = 64;
const SECTORS: usize = 64;

struct Host {
    channel: StorvspChannel,
    memory: GuestMemory,
    disk_bytes: Vec<u8>,
}

fn host_with(config: StorvspConfig, sector: u32) -> Host {
    let memory = GuestMemory::new(MEMORY_PAGES * 4096).unwrap();
    let disk_bytes = random_bytes(sector as usize * SECTORS, 99);
    let dev = mem_disk(disk_bytes.clone(), sector, sector);
    let controller = Arc::new(Controller::new());
    controller.insert(
        LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        },
        Arc::new(ScsiDisk::new(Arc::new(dev))),
    );
    let channel = StorvspChannel::new(config, controller, memory.clone()).unwrap();
    Host {
        channel,
        memory,
        disk_bytes,
    }
}

fn host() -> Host {
    host_with(StorvspConfig::default(), 512)
}

fn packet(op: u32, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[..4].copy_from_slice(&op.to_le_bytes());
    p[4..8].copy_from_slice(&1u32.to_le_bytes());
    p
}

fn version_packet(version: u16, size: usize) -> Vec<u8> {
    let mut p = packet(9, size);
    p[12..14].copy_from_slice(&version.to_le_bytes());
    p
}

fn status(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

fn complete(channel: &mut StorvspChannel, payload: &[u8], ranges: Vec<GpaRange>) -> Completion {
    let memory = channel.memory().clone();
    match channel.handle(Request {
        payload,
        ranges: &ranges,
        transaction_id: 0x1234,
    }) {
        Outcome::Complete(c) => c,
        Outcome::Execute(job) => job.run(&memory),
        other => panic!("unexpected outcome {other:?}"),
    }
}

fn send(host: &mut Host, payload: &[u8]) -> Vec<u8> {
    let c = complete(&mut host.channel, payload, vec![]);
    assert_eq!(c.transaction_id, 0x1234);
    assert!(c.bytes.len() <= 80);
    assert_eq!(
        u32::from_le_bytes(c.bytes[..4].try_into().unwrap()),
        1,
        "COMPLETE_IO"
    );
    assert_eq!(
        u32::from_le_bytes(c.bytes[4..8].try_into().unwrap()),
        0,
        "host flags"
    );
    c.bytes.to_vec()
}

fn init(host: &mut Host, version: u16, size: usize) -> Vec<u8> {
    assert_eq!(status(&send(host, &packet(7, size))), 0);
    assert_eq!(status(&send(host, &version_packet(version, size))), 0);
    let props = send(host, &packet(10, size));
    assert_eq!(status(&props), 0);
    assert_eq!(status(&send(host, &packet(8, size))), 0);
    assert_eq!(host.channel.state(), InitState::Ready);
    props
}

/// An SRB packet; offsets from the wire table.
fn srb(size: usize, target: u8, lun: u8, cdb: &[u8], data_in: u8, length: u32) -> Vec<u8> {
    let mut p = packet(3, size);
    p[12..14].copy_from_slice(&0x34u16.to_le_bytes());
    p[18] = target;
    p[19] = lun;
    p[20] = cdb.len() as u8;
    p[21] = 0x14;
    p[22] = data_in;
    p[24..28].copy_from_slice(&length.to_le_bytes());
    p[28..28 + cdb.len()].copy_from_slice(cdb);
    p
}

struct SrbReply {
    status: u32,
    srb_status: u8,
    scsi_status: u8,
    sense_len: u8,
    transferred: u32,
    sense: Vec<u8>,
    len: usize,
}

fn parse(bytes: &[u8]) -> SrbReply {
    SrbReply {
        status: status(bytes),
        srb_status: bytes[14],
        scsi_status: bytes[15],
        sense_len: bytes[21],
        transferred: u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
        sense: bytes[28..28 + bytes[21] as usize].to_vec(),
        len: bytes.len(),
    }
}

fn range(pages: &[u64], offset: u32, len: u32) -> GpaRange {
    GpaRange::new(len, offset, pages.to_vec()).unwrap()
}

fn run_srb(host: &mut Host, payload: &[u8], ranges: Vec<GpaRange>) -> SrbReply {
    parse(&complete(&mut host.channel, payload, ranges).bytes)
}

const TUR: [u8; 6] = [0; 6];

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

#[test]
fn all_five_versions_are_accepted_and_properties_reported() {
    for version in [0x0602u16, 0x0600, 0x0501, 0x0402, 0x0200] {
        let mut h = host_with(
            StorvspConfig {
                max_transfer_bytes: 256 * 1024,
                max_sub_channels: 3,
                multi_channel: true,
            },
            512,
        );
        let props = init(&mut h, version, 0x40);
        assert_eq!(props.len(), 0x40);
        let win8 = version >= 0x0501;
        let max_sub = u16::from_le_bytes([props[16], props[17]]);
        let flags = u32::from_le_bytes(props[20..24].try_into().unwrap());
        assert_eq!(max_sub, if win8 { 3 } else { 0 }, "{version:#x}");
        assert_eq!(flags & 1, u32::from(win8));
        assert_eq!(
            u32::from_le_bytes(props[24..28].try_into().unwrap()),
            256 * 1024
        );
        assert_eq!(h.channel.version(), Some(ProtocolVersion(version)));
    }
}

#[test]
fn unsupported_version_gets_revision_mismatch_echoing_it() {
    let mut h = host();
    send(&mut h, &packet(7, 0x40));
    for bad in [0x0601u16, 0x0700, 0, 0xFFFF] {
        let reply = send(&mut h, &version_packet(bad, 0x40));
        assert_eq!(status(&reply), 0xC000_0059);
        assert_eq!(u16::from_le_bytes([reply[12], reply[13]]), bad);
        assert_eq!(h.channel.state(), InitState::AwaitVersion);
    }
    // Linux fallback: the next version is accepted.
    let reply = send(&mut h, &version_packet(0x0600, 0x40));
    assert_eq!(status(&reply), 0);
    assert_eq!(u16::from_le_bytes([reply[12], reply[13]]), 0x0600);
}

#[test]
fn out_of_order_init_is_refused_and_channel_survives() {
    let mut h = host();
    for op in [3u32, 8, 10, 9, 13, 4] {
        assert_eq!(
            status(&send(&mut h, &packet(op, 0x40))),
            0xC000_0184,
            "op {op}"
        );
    }
    send(&mut h, &packet(7, 0x40));
    assert_eq!(status(&send(&mut h, &packet(7, 0x40))), 0xC000_0184);
    assert_eq!(status(&send(&mut h, &packet(8, 0x40))), 0xC000_0184);
    assert_eq!(status(&send(&mut h, &version_packet(0x0602, 0x40))), 0);
    assert_eq!(status(&send(&mut h, &packet(8, 0x40))), 0xC000_0184);
    assert_eq!(status(&send(&mut h, &packet(10, 0x40))), 0);
    assert_eq!(status(&send(&mut h, &packet(10, 0x40))), 0xC000_0184);
    assert_eq!(status(&send(&mut h, &packet(8, 0x40))), 0);
    assert_eq!(status(&send(&mut h, &packet(7, 0x40))), 0xC000_0184);
    let r = run_srb(&mut h, &srb(0x40, 0, 0, &TUR, 2, 0), vec![]);
    assert_eq!((r.status, r.srb_status), (0, 1));
}

#[test]
fn completion_has_the_size_of_the_request() {
    for (size, expected) in [
        (0x30, 0x30),
        (0x34, 0x34),
        (0x40, 0x40),
        (0x50, 0x40),
        (12, 12),
    ] {
        let mut h = host();
        assert_eq!(send(&mut h, &packet(7, size)).len(), expected);
    }
    // UEFI: 0x30 packets throughout init, with 0x0600.
    let mut h = host();
    init(&mut h, 0x0600, 0x30);
    // A Linux kernel sending 0x40 SRBs after negotiating WIN7.
    let mut h = host();
    init(&mut h, 0x0402, 0x40);
    let r = run_srb(&mut h, &srb(0x40, 0, 0, &TUR, 2, 0), vec![]);
    assert_eq!((r.len, r.srb_status), (0x40, 1));
    let r = run_srb(&mut h, &srb(0x30, 0, 0, &TUR, 2, 0), vec![]);
    assert_eq!((r.len, r.srb_status), (0x30, 1));
    // 0x34: the body is read as what is present.
    let r = run_srb(&mut h, &srb(0x34, 0, 0, &TUR, 2, 0), vec![]);
    assert_eq!((r.len, r.srb_status), (0x34, 1));
}

#[test]
fn packet_shorter_than_header_is_a_violation() {
    let mut h = host();
    let outcome = h.channel.handle(Request {
        payload: &[7, 0, 0],
        ranges: &[],
        transaction_id: 1,
    });
    assert!(matches!(
        outcome,
        Outcome::Violation(ProtocolViolation::TooShort { len: 3 })
    ));
    // Still alive.
    assert_eq!(status(&send(&mut h, &packet(7, 0x40))), 0);
}

#[test]
fn unknown_operations_get_a_failure_completion() {
    let mut h = host();
    init(&mut h, 0x0602, 0x40);
    for op in [0u32, 1, 2, 11, 12, 14, 99, u32::MAX] {
        let reply = send(&mut h, &packet(op, 0x40));
        assert_eq!(status(&reply), 0xC000_0010, "op {op}");
    }
    for op in [4u32, 5, 6] {
        assert_eq!(status(&send(&mut h, &packet(op, 0x40))), 0);
    }
}

#[test]
fn read_lands_in_non_contiguous_guest_pages() {
    for sector in [512u32, 4096] {
        let mut h = host_with(StorvspConfig::default(), sector);
        init(&mut h, 0x0602, 0x40);
        let blocks = (3 * 4096 / sector) as u16;
        let len = u32::from(blocks) * sector;
        let lba = SECTORS as u32 - u32::from(blocks);
        // Offset 2 into page 7, then pages 3, 20, 9: longer than needed.
        let r = range(&[7, 3, 20, 9], 2, len + 100);
        let reply = run_srb(
            &mut h,
            &srb(0x40, 0, 0, &read10(lba, blocks), 1, len),
            vec![r.clone()],
        );
        assert_eq!(
            (reply.status, reply.srb_status, reply.scsi_status),
            (0, 1, 0)
        );
        assert_eq!(reply.transferred, len);
        let mut got = vec![0u8; len as usize];
        r.read_at(&h.memory, 0, &mut got).unwrap();
        let start = lba as usize * sector as usize;
        assert_eq!(got, h.disk_bytes[start..start + len as usize]);
        let mut page = vec![0u8; 2];
        h.memory.read(7 * 4096, &mut page).unwrap();
        assert_eq!(page, [0, 0], "bytes before the range untouched");
        let mut tail = vec![0u8; 100];
        r.read_at(&h.memory, u64::from(len), &mut tail).unwrap();
        assert_eq!(
            tail,
            vec![0; 100],
            "bytes past data_transfer_length untouched"
        );
    }
}

#[test]
fn try_run_completes_what_needs_no_wait_and_hands_back_the_rest() {
    let memory = GuestMemory::new(MEMORY_PAGES * 4096).unwrap();
    let disk = MixedDisk::new(7);
    let want = disk.expected();
    let controller = Arc::new(Controller::new());
    let lun = LunAddress {
        path: 0,
        target: 0,
        lun: 0,
    };
    controller.insert(lun, Arc::new(ScsiDisk::new(Arc::new(disk))));
    let config = StorvspConfig::default();
    let channel = StorvspChannel::new(config, controller, memory.clone()).unwrap();
    let mut h = Host {
        channel,
        memory,
        disk_bytes: want.clone(),
    };
    init(&mut h, 0x0602, 0x40);
    let job = |h: &mut Host, lba: u32, r: &GpaRange| {
        let payload = srb(0x40, 0, 0, &read10(lba, 8), 1, 4096);
        match h.channel.handle(Request {
            payload: &payload,
            ranges: std::slice::from_ref(r),
            transaction_id: 7,
        }) {
            Outcome::Execute(job) => job.into_owned(),
            other => panic!("READ gave {other:?}"),
        }
    };
    // MixedDisk runs of 8 sectors: zeros, a file run, a copy, memory.
    for (lba, waits) in [(0, false), (8, false), (16, true), (24, false)] {
        let r = range(&[5], 0, 4096);
        h.memory.fill(5 * 4096, 4096, 0xEE).unwrap();
        let completion = match job(&mut h, lba, &r).try_run(&h.memory) {
            Attempted::Done(c) => {
                assert!(!waits, "lba {lba}: completed a read that must wait");
                c
            }
            Attempted::WouldBlock(job) => {
                assert!(waits, "lba {lba}: handed back a read that needs no wait");
                job.run(&h.memory)
            }
        };
        assert_eq!(completion.transaction_id, 7);
        let reply = parse(&completion.bytes);
        assert_eq!((reply.status, reply.srb_status), (0, 1), "lba {lba}");
        assert_eq!(reply.transferred, 4096);
        let mut got = vec![0u8; 4096];
        h.memory.read(5 * 4096, &mut got).unwrap();
        let at = lba as usize * 512;
        assert!(got == h.disk_bytes[at..at + 4096], "lba {lba}: bytes");
    }
    // Every command but READ completes without waiting.
    let payload = srb(0x40, 0, 0, &TUR, 0, 0);
    let Outcome::Execute(job) = h.channel.handle(Request {
        payload: &payload,
        ranges: &[],
        transaction_id: 8,
    }) else {
        panic!("TEST UNIT READY is a job");
    };
    let Attempted::Done(completion) = job.try_run(&h.memory) else {
        panic!("TEST UNIT READY never waits");
    };
    let reply = parse(&completion.bytes);
    assert_eq!(reply.srb_status, 1);
}

#[test]
fn read_past_end_and_writes_give_sense() {
    let mut h = host();
    init(&mut h, 0x0602, 0x40);
    let r = range(&[1], 0, 1024);
    let reply = run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read10(SECTORS as u32 - 1, 2), 1, 1024),
        vec![r.clone()],
    );
    assert_eq!(
        (reply.srb_status, reply.scsi_status, reply.transferred),
        (0x84, 2, 0)
    );
    assert_eq!(reply.sense[0], 0x70);
    assert_eq!((reply.sense[2], reply.sense[12]), (0x05, 0x21));
    let mut write = read10(0, 1);
    write[0] = 0x2A;
    let reply = run_srb(&mut h, &srb(0x40, 0, 0, &write, 0, 512), vec![r.clone()]);
    assert_eq!((reply.srb_status, reply.scsi_status), (0x84, 2));
    assert_eq!(
        (reply.sense[2], reply.sense[12], reply.sense[13]),
        (0x07, 0x27, 0)
    );
    assert_eq!(reply.sense_len, 18);
    // A read CDB sent as data-out does not write guest pages.
    h.memory.fill(4096, 4096, 0xEE).unwrap();
    let reply = run_srb(&mut h, &srb(0x40, 0, 0, &read10(0, 1), 0, 512), vec![r]);
    assert_eq!((reply.srb_status, reply.transferred), (0x12, 0));
    let mut page = vec![0u8; 512];
    h.memory.read(4096, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0xEE));
}

#[test]
fn pre_win8_sense_is_capped_at_0x12() {
    let mut h = host();
    init(&mut h, 0x0402, 0x30);
    let reply = run_srb(
        &mut h,
        &srb(0x30, 0, 0, &[0xC5, 0, 0, 0, 0, 0], 2, 0),
        vec![],
    );
    assert_eq!(reply.len, 0x30);
    assert_eq!((reply.srb_status, reply.scsi_status), (0x84, 2));
    assert_eq!(reply.sense_len, 0x12);
    assert_eq!((reply.sense[2], reply.sense[12]), (0x05, 0x20));
}

#[test]
fn hostile_srbs_have_defined_outcomes() {
    let mut h = host();
    init(&mut h, 0x0602, 0x40);
    let read = read10(0, 1);
    let invalid = |r: &SrbReply| {
        assert_eq!(r.status, 0xC000_000D);
        assert_eq!(r.srb_status, 0x06);
        assert_eq!(r.transferred, 0);
    };
    // Page outside guest memory.
    invalid(&run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read, 1, 512),
        vec![range(&[MEMORY_PAGES], 0, 512)],
    ));
    invalid(&run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read, 1, 512),
        vec![range(&[u64::MAX >> 12], 0, 512)],
    ));
    // Range shorter than data_transfer_length.
    invalid(&run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read, 1, 512),
        vec![range(&[1], 0, 511)],
    ));
    // Two ranges.
    invalid(&run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read, 1, 512),
        vec![range(&[1], 0, 512), range(&[2], 0, 512)],
    ));
    // Data length but no range.
    invalid(&run_srb(&mut h, &srb(0x40, 0, 0, &read, 1, 512), vec![]));
    // Data length above max_transfer_bytes.
    invalid(&run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read, 1, 4 << 20),
        vec![range(&[1], 0, 512)],
    ));
    // CDB length 0 and 17.
    let mut p = srb(0x40, 0, 0, &TUR, 2, 0);
    p[20] = 0;
    invalid(&run_srb(&mut h, &p, vec![]));
    p[20] = 17;
    invalid(&run_srb(&mut h, &p, vec![]));
    // Bad direction.
    invalid(&run_srb(&mut h, &srb(0x40, 0, 0, &TUR, 5, 0), vec![]));
    // Truncated SRB (body shorter than the pre-WIN8 SRB).
    let p = srb(0x40, 0, 0, &TUR, 2, 0);
    let reply = complete(&mut h.channel, &p[..20], vec![]);
    assert_eq!(reply.bytes.len(), 20);
    assert_eq!(status(&reply.bytes), 0xC000_000D);
    // Lying SRB length field is ignored; a huge sense length is capped to
    // the 18 bytes of fixed sense (below the 0x14 WIN8 buffer).
    let mut p = srb(0x40, 0, 0, &[0xC5, 0, 0, 0, 0, 0], 2, 0);
    p[12..14].copy_from_slice(&0xFFFFu16.to_le_bytes());
    p[21] = 0xFF;
    let reply = run_srb(&mut h, &p, vec![]);
    assert_eq!((reply.srb_status, reply.sense_len), (0x84, 18));
    // A CDB length shorter than the opcode needs.
    let mut p = srb(0x40, 0, 0, &read, 1, 512);
    p[20] = 6;
    let reply = run_srb(&mut h, &p, vec![range(&[1], 0, 512)]);
    assert_eq!(
        (reply.srb_status, reply.scsi_status, reply.sense[12]),
        (0x84, 2, 0x24)
    );
    // The channel still works.
    let reply = run_srb(
        &mut h,
        &srb(0x40, 0, 0, &read, 1, 512),
        vec![range(&[1], 0, 512)],
    );
    assert_eq!((reply.srb_status, reply.transferred), (1, 512));
}

#[test]
fn lun_addressing_and_report_luns() {
    let mut h = host();
    init(&mut h, 0x0600, 0x30);
    let buf = range(&[4], 0, 2048);
    // Absent LUN: INQUIRY byte 0 = 0x7F, other commands INVALID_LUN.
    let reply = run_srb(
        &mut h,
        &srb(0x30, 1, 0, &[0x12, 0, 0, 0, 36, 0], 1, 36),
        vec![buf.clone()],
    );
    assert_eq!((reply.srb_status, reply.transferred), (1, 36));
    let mut b = [0u8; 1];
    buf.read_at(&h.memory, 0, &mut b).unwrap();
    assert_eq!(b[0], 0x7F);
    let reply = run_srb(&mut h, &srb(0x30, 0, 1, &TUR, 1, 0), vec![]);
    assert_eq!((reply.srb_status, reply.scsi_status), (0x20, 0));
    // REPORT LUNS with allocation length 0 (UEFI) to an empty target.
    let report = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for target in [1u8, 2] {
        let reply = run_srb(
            &mut h,
            &srb(0x30, target, 0, &report, 1, 2048),
            vec![buf.clone()],
        );
        assert_eq!(
            (reply.srb_status, reply.scsi_status, reply.transferred),
            (1, 0, 8)
        );
        let mut hdr = [0xFFu8; 8];
        buf.read_at(&h.memory, 0, &mut hdr).unwrap();
        assert_eq!(hdr, [0; 8]);
    }
    // Hot add LUN 3 at target 0: notification, then it is listed and works.
    let disk = h
        .channel
        .controller()
        .get(LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        })
        .unwrap();
    let note = h
        .channel
        .hot_add(
            LunAddress {
                path: 0,
                target: 0,
                lun: 3,
            },
            disk,
        )
        .unwrap();
    assert_eq!(note.bytes.len(), 0x40);
    assert_eq!(u32::from_le_bytes(note.bytes[..4].try_into().unwrap()), 11);
    let reply = run_srb(
        &mut h,
        &srb(0x30, 0, 0, &report, 1, 2048),
        vec![buf.clone()],
    );
    assert_eq!(reply.transferred, 24);
    let mut list = [0u8; 24];
    buf.read_at(&h.memory, 0, &mut list).unwrap();
    assert_eq!(list[3], 16);
    assert_eq!(list[9], 0);
    assert_eq!(list[17], 3);
    let reply = run_srb(&mut h, &srb(0x30, 0, 3, &TUR, 1, 0), vec![]);
    assert_eq!(reply.srb_status, 1);
    assert!(
        h.channel
            .hot_remove(LunAddress {
                path: 0,
                target: 0,
                lun: 3
            })
            .is_some()
    );
    let reply = run_srb(&mut h, &srb(0x30, 0, 3, &TUR, 1, 0), vec![]);
    assert_eq!(reply.srb_status, 0x20);
}

#[test]
fn a_disk_replaced_in_the_controller_serves_the_next_read() {
    let mut h = host();
    init(&mut h, 0x0602, 0x40);
    let lun = LunAddress {
        path: 0,
        target: 0,
        lun: 0,
    };
    let read = |h: &mut Host| {
        let r = range(&[6], 0, 512);
        let reply = run_srb(h, &srb(0x40, 0, 0, &read10(0, 1), 1, 512), vec![r.clone()]);
        assert_eq!(reply.srb_status, 1);
        let mut got = vec![0u8; 512];
        r.read_at(&h.memory, 0, &mut got).unwrap();
        got
    };
    assert_eq!(read(&mut h), h.disk_bytes[..512]);
    // Replaced through the shared controller, not through this channel.
    let other = random_bytes(512 * SECTORS, 5);
    let controller = h.channel.controller().clone();
    controller.insert(
        lun,
        Arc::new(ScsiDisk::new(Arc::new(mem_disk(other.clone(), 512, 512)))),
    );
    assert_eq!(read(&mut h), other[..512]);
    controller.remove(lun);
    let reply = run_srb(&mut h, &srb(0x40, 0, 0, &TUR, 0, 0), vec![]);
    assert_eq!(reply.srb_status, 0x20, "INVALID_LUN once removed");
}

#[test]
fn no_notification_before_init() {
    let h = host();
    let disk = h
        .channel
        .controller()
        .get(LunAddress {
            path: 0,
            target: 0,
            lun: 0,
        })
        .unwrap();
    assert!(
        h.channel
            .hot_add(
                LunAddress {
                    path: 0,
                    target: 0,
                    lun: 1
                },
                disk
            )
            .is_none()
    );
}

fn sub_channel_packet(count: u16) -> Vec<u8> {
    let mut p = packet(13, 0x40);
    p[12..14].copy_from_slice(&count.to_le_bytes());
    p
}

#[test]
fn sub_channels() {
    let config = StorvspConfig {
        max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
        max_sub_channels: 4,
        multi_channel: true,
    };
    let mut h = host_with(config, 512);
    init(&mut h, 0x0602, 0x40);
    for bad in [0u16, 5] {
        let c = complete(&mut h.channel, &sub_channel_packet(bad), vec![]);
        assert_eq!(status(&c.bytes), 0xC000_000D);
    }
    match h.channel.handle(Request {
        payload: &sub_channel_packet(3),
        ranges: &[],
        transaction_id: 5,
    }) {
        Outcome::CreateSubChannels { completion, count } => {
            assert_eq!(count, 3);
            assert_eq!(status(&completion.bytes), 0);
            assert_eq!(completion.transaction_id, 5);
        }
        other => panic!("{other:?}"),
    }
    // Only once.
    let c = complete(&mut h.channel, &sub_channel_packet(1), vec![]);
    assert_eq!(status(&c.bytes), 0xC000_000D);
    let mut sub = h.channel.sub_channel().unwrap();
    let r = parse(&complete(&mut sub, &srb(0x40, 0, 0, &TUR, 2, 0), vec![]).bytes);
    assert_eq!(r.srb_status, 1);
    assert_eq!(
        status(&complete(&mut sub, &packet(7, 0x40), vec![]).bytes),
        0xC000_0184
    );
    // Pre-WIN8 guests get no sub-channels.
    let mut h = host_with(config, 512);
    init(&mut h, 0x0402, 0x40);
    let c = complete(&mut h.channel, &sub_channel_packet(1), vec![]);
    assert_eq!(status(&c.bytes), 0xC000_000D);
}

#[test]
fn jobs_complete_out_of_order() {
    let mut h = host();
    init(&mut h, 0x0602, 0x40);
    let mut jobs = Vec::new();
    for (tid, lba) in [(10u64, 0u32), (11, 5)] {
        let r = range(&[tid], 0, 512);
        match h.channel.handle(Request {
            payload: &srb(0x40, 0, 0, &read10(lba, 1), 1, 512),
            ranges: &[r],
            transaction_id: tid,
        }) {
            Outcome::Execute(job) => jobs.push(job.into_owned()),
            other => panic!("{other:?}"),
        }
    }
    let second = jobs.pop().unwrap();
    let memory = h.memory.clone();
    let handle = std::thread::spawn(move || second.run(&memory));
    let first = jobs.pop().unwrap().run(&h.memory);
    let second = handle.join().unwrap();
    assert_eq!((first.transaction_id, second.transaction_id), (10, 11));
    let mut got = vec![0u8; 512];
    h.memory.read(11 * 4096, &mut got).unwrap();
    assert_eq!(got, h.disk_bytes[5 * 512..6 * 512]);
}

#[test]
fn save_restore_and_config_limits() {
    let mut h = host();
    init(&mut h, 0x0501, 0x40);
    let saved = h.channel.save();
    assert_eq!(saved.version, Some(0x0501));
    let mut fresh = host();
    fresh.channel.restore(saved).unwrap();
    assert_eq!(fresh.channel.state(), InitState::Ready);
    let r = parse(&complete(&mut fresh.channel, &srb(0x40, 0, 0, &TUR, 2, 0), vec![]).bytes);
    assert_eq!(r.srb_status, 1);
    let bad = SavedState {
        version: Some(0x0601),
        ..saved
    };
    assert_eq!(
        fresh.channel.restore(bad),
        Err(RestoreError::Version(0x0601))
    );
    let bad = SavedState {
        version: None,
        ..saved
    };
    assert!(fresh.channel.restore(bad).is_err());
    for bytes in [0u32, 8 * 1024 * 1024 + 1] {
        let config = StorvspConfig {
            max_transfer_bytes: bytes,
            ..Default::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::MaxTransferBytes(bytes)));
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any packet, before or after init, with any single range, yields
        /// a defined outcome and a completion no longer than its request or
        /// 80 bytes.
        #[test]
        fn random_packets_never_panic(
            initialized in any::<bool>(),
            op in 0u32..16,
            mut payload in proptest::collection::vec(any::<u8>(), 0..96),
            count in 1u32..20_000,
            offset in 0u32..2048,
            first_page in 0u64..80,
        ) {
            let mut h = host();
            if initialized {
                init(&mut h, 0x0602, 0x40);
            }
            if payload.len() >= 4 {
                payload[..4].copy_from_slice(&op.to_le_bytes());
            }
            let offset = offset & !1;
            let pages = vmbdev_ring::gpa::pages_spanned(offset, count);
            let range = GpaRange::new(count, offset, (first_page..first_page + pages).collect()).unwrap();
            match h.channel.handle(Request { payload: &payload, ranges: &[range], transaction_id: 9 }) {
                Outcome::Complete(c) | Outcome::CreateSubChannels { completion: c, .. } => {
                    prop_assert!(c.bytes.len() <= payload.len().min(80));
                }
                Outcome::Execute(job) => {
                    let c = job.run(&h.memory);
                    prop_assert!(c.bytes.len() <= payload.len().min(80));
                    prop_assert_eq!(c.transaction_id, 9);
                }
                Outcome::Violation(_) => prop_assert!(payload.len() < 12),
            }
        }
    }
}

/// A storvsp device with a counted log on a ring pair, its task run on
/// the calling thread under `events` while a guest thread sends `bad`
/// too-short packets and then one good request.
#[test]
fn ten_thousand_bad_packets_over_the_ring_are_counted_and_logged_boundedly() {
    use crate::bus::{OpenRequest, VmbusDevice};
    use crate::violation::tests::EventCounter;
    use crate::violation::{ManualClock, ViolationLog, ViolationPolicy};
    use vmbdev_ring::{LoopbackConfig, OutgoingPacket, PacketKind, loopback};

    const BAD: u64 = 10_000;
    let policy = ViolationPolicy {
        logged_per_kind: 4,
        summary_interval: std::time::Duration::from_secs(60),
    };
    let log = ViolationLog::with_policy("storvsp", policy, Arc::new(ManualClock::default()));
    let device = Arc::new(
        StorvspDevice::new(StorvspConfig::default(), Arc::new(Controller::new()))
            .unwrap()
            .with_violation_log(log),
    );
    let lb = loopback(&LoopbackConfig::default()).unwrap();
    let request = OpenRequest::from_gpadl(
        lb.memory.clone(),
        lb.registry.clone(),
        lb.gpadl_handle,
        lb.downstream_offset,
        lb.host_doorbell.clone(),
        lb.guest_doorbell.clone(),
    )
    .unwrap();
    drop(lb.host);
    let task = device.open(0, request).unwrap();
    let mut guest = lb.guest;
    let closer = device.clone();
    let guest_thread = std::thread::spawn(move || {
        futures_lite::future::block_on(async {
            // Eight bytes: shorter than the 12-byte vstor header.
            let short = [1u8; 8];
            for tid in 0..BAD {
                guest
                    .write(&OutgoingPacket::request(tid + 1, &short))
                    .await
                    .unwrap();
            }
            // A good BEGIN_INITIALIZATION after them: its completion
            // proves every bad packet before it was taken.
            let begin = packet(7, 0x40);
            guest
                .write(&OutgoingPacket::request(BAD + 1, &begin))
                .await
                .unwrap();
            let reply = guest.read().await.unwrap();
            assert_eq!(reply.kind, PacketKind::Completion);
            assert_eq!(reply.transaction_id, BAD + 1);
            assert_eq!(status(&reply.payload), 0);
        });
        closer.close(0).unwrap();
    });
    let events = EventCounter::default();
    let result =
        tracing::subscriber::with_default(events.clone(), || futures_lite::future::block_on(task));
    guest_thread.join().unwrap();
    result.unwrap();
    let stats = device.stats();
    assert_eq!(stats.violations(), BAD);
    assert_eq!(
        stats
            .violation_log()
            .count("vstor packet shorter than its header"),
        BAD
    );
    // Four individual events; the manual clock never reaches a summary.
    assert_eq!(events.count(), 4);
}
