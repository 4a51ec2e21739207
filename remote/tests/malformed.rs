//! Malformed control messages, each with its defined outcome: an error
//! reply with the named code, a counter, and a server that keeps serving.
//! The server runs on a thread of this process over a socket pair; the
//! test plays a hostile VMM with hand-built datagrams.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmbdev_device::vmbfs::{VmbfsConfig, VmbfsDevice};
use vmbdev_fs::MemoryTree;
use vmbdev_remote::server::{Server, ServerStats};
use vmbdev_remote::transport::{self, Message};
use vmbdev_remote::wire::{
    HelloRequest, MAGIC, MemoryHeader, OpenHeader, PROTOCOL_VERSION, RegionDesc, code, kind,
};
use vmbdev_ring::{EventfdDoorbell, GuestMemory};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

struct Harness {
    vmm: OwnedFd,
    stats: Arc<ServerStats>,
    server: Option<JoinHandle<()>>,
}

impl Harness {
    fn new() -> Self {
        let (vmm, device_end) = transport::socket_pair().unwrap();
        let mut tree = MemoryTree::builder();
        tree.add_file("a.txt", b"abc".to_vec()).unwrap();
        let device = Arc::new(VmbfsDevice::new(VmbfsConfig {
            tree: Arc::new(tree.build()),
            rdma_enabled: true,
        }));
        let server = Server::new(device);
        let stats = server.stats();
        let thread = std::thread::spawn(move || {
            server.serve(device_end).unwrap();
        });
        Self {
            vmm,
            stats,
            server: Some(thread),
        }
    }

    fn send(&self, kind: u16, id: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        transport::send(self.vmm.as_fd(), kind, id, payload, fds).unwrap();
    }

    fn reply(&self) -> Message {
        let datagram =
            common::within(async { transport::recv(self.vmm.as_fd()).unwrap().unwrap() });
        transport::check(datagram.expect("no reply")).unwrap()
    }

    /// Expects an error reply with `code` to request `id`.
    fn expect_error(&self, id: u32, expected: u32) -> String {
        let reply = self.reply();
        assert_eq!(reply.kind, kind::ERROR, "expected error {expected}");
        assert_eq!(reply.id, id);
        let error = transport::parse_error(&reply.payload);
        assert_eq!(error.code, expected, "{}", error.text);
        assert!(!error.text.is_empty());
        error.text
    }

    fn hello(&self) {
        let hello = HelloRequest {
            min_version: U16::new(PROTOCOL_VERSION),
            max_version: U16::new(PROTOCOL_VERSION),
            reserved: U32::new(0),
        };
        self.send(kind::HELLO, 1, hello.as_bytes(), &[]);
        assert_eq!(self.reply().kind, kind::HELLO_REPLY);
    }

    /// The server still answers a well-formed request.
    fn still_serves(&self) {
        self.send(kind::GET_OFFER, 99, &[], &[]);
        let reply = self.reply();
        assert_eq!((reply.kind, reply.id), (kind::OFFER_REPLY, 99));
    }

    fn set_memory(&self, memory: &GuestMemory) {
        let payload = memory_payload(&[(0, memory.size(), 0)]);
        self.send(kind::SET_MEMORY, 5, &payload, &[memory.fd().unwrap()]);
        assert_eq!(self.reply().kind, kind::OK);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        transport::shut_down(self.vmm.as_fd());
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn memory_payload(regions: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut payload = MemoryHeader {
        region_count: U32::new(regions.len() as u32),
        reserved: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    for &(gpa, len, fd_offset) in regions {
        let desc = RegionDesc {
            gpa: U64::new(gpa),
            len: U64::new(len),
            fd_offset: U64::new(fd_offset),
        };
        payload.extend_from_slice(desc.as_bytes());
    }
    payload
}

fn open_payload(channel: u16, downstream_offset: u32, pages: &[u64]) -> Vec<u8> {
    let mut payload = OpenHeader {
        channel: U16::new(channel),
        reserved: U16::new(0),
        downstream_offset: U32::new(downstream_offset),
        page_count: U32::new(pages.len() as u32),
        reserved2: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    for &p in pages {
        payload.extend_from_slice(U64::new(p).as_bytes());
    }
    payload
}

/// A 16-byte header with every field chosen by the caller.
fn raw_header(magic: u32, version: u16, kind: u16, id: u32, len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

#[test]
fn a_truncated_message_gets_a_truncated_error() {
    let h = Harness::new();
    // Shorter than the header: no id to echo, so 0.
    transport::send_raw(h.vmm.as_fd(), &[&[1, 2, 3, 4, 5, 6, 7]], &[]).unwrap();
    h.expect_error(0, code::TRUNCATED);
    // A length field promising more than came.
    let header = raw_header(MAGIC, PROTOCOL_VERSION, kind::HELLO, 7, 8);
    transport::send_raw(h.vmm.as_fd(), &[&header, &[0; 3]], &[]).unwrap();
    h.expect_error(7, code::TRUNCATED);
    // A hello too short for its fixed part.
    h.send(kind::HELLO, 8, &[1, 0], &[]);
    h.expect_error(8, code::TRUNCATED);
    // An open whose page list is shorter than its count.
    h.hello();
    let memory = GuestMemory::new(64 * 4096).unwrap();
    h.set_memory(&memory);
    let bells = [
        EventfdDoorbell::new().unwrap(),
        EventfdDoorbell::new().unwrap(),
    ];
    let mut payload = open_payload(0, 3, &[1, 2, 3, 4, 5, 6]);
    payload.truncate(payload.len() - 8);
    h.send(
        kind::OPEN,
        9,
        &payload,
        &[bells[0].as_fd(), bells[1].as_fd()],
    );
    let text = h.expect_error(9, code::TRUNCATED);
    assert!(text.contains("6 entries"), "{text}");
    assert_eq!(h.stats.refused(code::TRUNCATED), 4);
    h.still_serves();
}

#[test]
fn a_wrong_version_gets_a_bad_version_error() {
    let h = Harness::new();
    // A header of a future version.
    let header = raw_header(MAGIC, PROTOCOL_VERSION + 1, kind::HELLO, 3, 0);
    transport::send_raw(h.vmm.as_fd(), &[&header], &[]).unwrap();
    h.expect_error(3, code::BAD_VERSION);
    // Not this protocol at all.
    let header = raw_header(0x1234_5678, PROTOCOL_VERSION, kind::HELLO, 4, 0);
    transport::send_raw(h.vmm.as_fd(), &[&header], &[]).unwrap();
    h.expect_error(4, code::BAD_VERSION);
    // A hello offering only versions this device does not speak.
    let hello = HelloRequest {
        min_version: U16::new(PROTOCOL_VERSION + 1),
        max_version: U16::new(PROTOCOL_VERSION + 5),
        reserved: U32::new(0),
    };
    h.send(kind::HELLO, 5, hello.as_bytes(), &[]);
    let text = h.expect_error(5, code::BAD_VERSION);
    assert!(text.contains("2..=6"), "{text}");
    assert_eq!(h.stats.refused(code::BAD_VERSION), 3);
    // Requests before a successful hello are out of sequence.
    h.send(kind::GET_OFFER, 6, &[], &[]);
    h.expect_error(6, code::BAD_SEQUENCE);
    h.hello();
    h.still_serves();
}

#[test]
fn an_unknown_command_gets_an_unknown_command_error() {
    let h = Harness::new();
    h.hello();
    h.send(31, 11, &[], &[]);
    h.expect_error(11, code::UNKNOWN_COMMAND);
    // A device-to-VMM kind is not a request a device serves either.
    h.send(kind::SUB_CHANNELS, 12, &[0; 8], &[]);
    h.expect_error(12, code::UNKNOWN_COMMAND);
    // A reply nobody asked for is counted, not answered.
    h.send(kind::OK, 13, &[], &[]);
    h.still_serves();
    assert_eq!(h.stats.refused(code::UNKNOWN_COMMAND), 2);
    assert_eq!(h.stats.stray_replies(), 1);
}

#[test]
fn missing_fds_get_a_missing_fds_error() {
    let h = Harness::new();
    h.hello();
    let memory = GuestMemory::new(64 * 4096).unwrap();
    // Memory without its memfd.
    h.send(
        kind::SET_MEMORY,
        21,
        &memory_payload(&[(0, memory.size(), 0)]),
        &[],
    );
    h.expect_error(21, code::MISSING_FDS);
    h.set_memory(&memory);
    // An open with one eventfd of two.
    let bell = EventfdDoorbell::new().unwrap();
    h.send(
        kind::OPEN,
        22,
        &open_payload(0, 3, &[1, 2, 3, 4, 5, 6]),
        &[bell.as_fd()],
    );
    h.expect_error(22, code::MISSING_FDS);
    // fds where none belong.
    h.send(kind::GET_OFFER, 23, &[], &[bell.as_fd()]);
    h.expect_error(23, code::UNEXPECTED_FDS);
    assert_eq!(h.stats.refused(code::MISSING_FDS), 2);
    h.still_serves();
}

#[test]
fn gpadl_pages_outside_memory_get_a_bad_gpadl_error() {
    let h = Harness::new();
    h.hello();
    let bells = [
        EventfdDoorbell::new().unwrap(),
        EventfdDoorbell::new().unwrap(),
    ];
    let fds = [bells[0].as_fd(), bells[1].as_fd()];
    // Open before any memory.
    h.send(
        kind::OPEN,
        30,
        &open_payload(0, 3, &[1, 2, 3, 4, 5, 6]),
        &fds,
    );
    h.expect_error(30, code::NO_MEMORY);
    // 64 pages of memory with a hole at pages 16..32.
    let memory = GuestMemory::new(64 * 4096).unwrap();
    let payload = memory_payload(&[(0, 16 * 4096, 0), (32 * 4096, 32 * 4096, 16 * 4096)]);
    h.send(kind::SET_MEMORY, 31, &payload, &[memory.fd().unwrap()]);
    assert_eq!(h.reply().kind, kind::OK);
    // Pages beyond the end, then pages in the hole.
    h.send(
        kind::OPEN,
        32,
        &open_payload(0, 3, &[1, 2, 3, 64, 65, 66]),
        &fds,
    );
    let text = h.expect_error(32, code::BAD_GPADL);
    assert!(text.contains("64"), "{text}");
    h.send(
        kind::OPEN,
        33,
        &open_payload(0, 3, &[1, 2, 3, 20, 21, 22]),
        &fds,
    );
    h.expect_error(33, code::BAD_GPADL);
    // A downstream offset that leaves a half without data pages.
    h.send(
        kind::OPEN,
        34,
        &open_payload(0, 1, &[1, 2, 3, 4, 5, 6]),
        &fds,
    );
    h.expect_error(34, code::BAD_GPADL);
    // More pages than the protocol allows.
    let many: Vec<u64> = (0..3000).collect();
    h.send(kind::OPEN, 35, &open_payload(0, 3, &many), &fds);
    h.expect_error(35, code::TOO_LARGE);
    assert_eq!(h.stats.refused(code::BAD_GPADL), 3);
    h.still_serves();
}

#[test]
fn an_unsealed_or_short_memfd_gets_a_bad_memory_error() {
    let h = Harness::new();
    h.hello();
    let unsealed = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 64 * 4096).unwrap();
    h.send(
        kind::SET_MEMORY,
        41,
        &memory_payload(&[(0, 64 * 4096, 0)]),
        &[unsealed.as_fd()],
    );
    let text = h.expect_error(41, code::BAD_MEMORY);
    assert!(text.contains("F_SEAL_SHRINK"), "{text}");
    // A sealed memfd smaller than the layout.
    let small = GuestMemory::new(16 * 4096).unwrap();
    h.send(
        kind::SET_MEMORY,
        42,
        &memory_payload(&[(0, 64 * 4096, 0)]),
        &[small.fd().unwrap()],
    );
    h.expect_error(42, code::BAD_MEMORY);
    // Too many regions.
    let regions: Vec<(u64, u64, u64)> = (0..65).map(|i| (i * 8192, 4096, 0)).collect();
    h.send(
        kind::SET_MEMORY,
        43,
        &memory_payload(&regions),
        &[small.fd().unwrap()],
    );
    h.expect_error(43, code::TOO_LARGE);
    assert_eq!(h.stats.refused(code::BAD_MEMORY), 2);
    h.still_serves();
}
