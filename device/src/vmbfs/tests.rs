//! Tests of the vmbfs host state machine against an in-test tree and an
//! independent model of the read rules.

use super::*;
use std::sync::Arc;
use vmbdev_fs::MemoryTree;
use vmbdev_protocol::vmbfs::{FileStatus, MessageType, VERSION_WIN10};
use vmbdev_ring::{GpaRange, GuestMemory};

/// File contents that differ at every position and between files.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

const BIG: usize = 200 * 1024 + 123;
const EOF_SIZES: [usize; 5] = [0, 1, 12275, 12276, 12277];

fn tree() -> MemoryTree {
    let mut t = MemoryTree::builder();
    t.add_file("EFI/BOOT/BOOTX64.EFI", pattern(5000, 1))
        .unwrap();
    t.add_file("big", pattern(BIG, 2)).unwrap();
    for size in EOF_SIZES {
        t.add_file(&format!("sizes/f{size}"), pattern(size, size as u32))
            .unwrap();
    }
    t.build()
}

const MEMORY_PAGES: u64 = 256;

fn new_host(rdma_enabled: bool) -> (VmbfsHost, GuestMemory) {
    let memory = GuestMemory::new(MEMORY_PAGES * 4096).unwrap();
    let config = VmbfsConfig {
        tree: Arc::new(tree()),
        rdma_enabled,
    };
    (VmbfsHost::new(config, memory.clone()), memory)
}

fn ready_host(rdma_enabled: bool) -> (VmbfsHost, GuestMemory) {
    let (mut host, memory) = new_host(rdma_enabled);
    let reply = send(&mut host, &version_request(VERSION_WIN10));
    assert_eq!(reply, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    (host, memory)
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn message(message_type: u32, body: &[u8]) -> Vec<u8> {
    let mut m = message_type.to_le_bytes().to_vec();
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(body);
    m
}

fn version_request(version: u32) -> Vec<u8> {
    message(1, &version.to_le_bytes())
}

fn info_request(path: &str) -> Vec<u8> {
    message(3, &utf16(path))
}

fn read_request_raw(byte_count: u32, offset: u64, path: &[u8]) -> Vec<u8> {
    let mut body = byte_count.to_le_bytes().to_vec();
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(path);
    message(5, &body)
}

fn read_request(path: &str, offset: u64, byte_count: u32) -> Vec<u8> {
    read_request_raw(byte_count, offset, &utf16(path))
}

fn rdma_request(handle: u32, path: &str, file_offset: u64, byte_count: u32, token: u64) -> Vec<u8> {
    let mut body = handle.to_le_bytes().to_vec();
    body.extend_from_slice(&byte_count.to_le_bytes());
    body.extend_from_slice(&file_offset.to_le_bytes());
    body.extend_from_slice(&token.to_le_bytes());
    body.extend_from_slice(&utf16(path));
    message(7, &body)
}

/// Sends one message and returns its reply bytes (a reply must come).
fn send(host: &mut VmbfsHost, msg: &[u8]) -> Vec<u8> {
    host.handle(VmbfsInput::Message(msg))
        .expect("no protocol error")
        .expect("a reply")
        .into_bytes()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Checks a reply's type and status; returns the bytes after the status.
fn expect_reply(reply: &[u8], message_type: MessageType, status: FileStatus) -> Vec<u8> {
    assert_eq!(u32_at(reply, 0), message_type.0, "reply type");
    assert_eq!(u32_at(reply, 4), 0, "reserved");
    assert_eq!(u32_at(reply, 8), status.0, "status");
    reply[12..].to_vec()
}

fn expect_read_error(host: &mut VmbfsHost, msg: &[u8], kind: BadInput) {
    let before = host.stats().count(kind);
    let reply = send(host, msg);
    assert_eq!(reply.len(), 12);
    expect_reply(&reply, MessageType::READ_FILE_RESPONSE, FileStatus::ERROR);
    assert_eq!(host.stats().count(kind), before + 1, "{kind:?} counted");
    assert!(matches!(host.state(), ProtocolState::Ready { .. }));
}

fn expect_rdma_error(host: &mut VmbfsHost, msg: &[u8], kind: BadInput) {
    let before = host.stats().count(kind);
    let reply = send(host, msg);
    assert_eq!(reply.len(), 16);
    let rest = expect_reply(
        &reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::ERROR,
    );
    assert_eq!(rest, [0, 0, 0, 0], "byte count of a failed RDMA read");
    assert_eq!(host.stats().count(kind), before + 1, "{kind:?} counted");
    assert!(matches!(host.state(), ProtocolState::Ready { .. }));
}

fn expect_stop(host: &mut VmbfsHost, input: VmbfsInput<'_>, error: ProtocolError) {
    let kind = error.kind().unwrap();
    let before = host.stats().count(kind);
    assert_eq!(host.handle(input), Err(error));
    assert_eq!(host.state(), ProtocolState::Stopped);
    assert_eq!(host.stats().count(kind), before + 1);
    // A stopped channel answers nothing, even a valid request.
    assert_eq!(
        host.handle(VmbfsInput::Message(&info_request(""))),
        Err(ProtocolError::Stopped)
    );
}

fn setup(host: &mut VmbfsHost, handle: u32, writable: bool, ranges: Vec<GpaRange>) {
    let out = host.handle(VmbfsInput::SetupGpaDirect {
        handle,
        writable,
        ranges,
    });
    assert_eq!(out, Ok(None));
}

/// The spec's read rules, written independently: (status, bytes returned).
fn model_read(size: u64, offset: u64, byte_count: u32) -> (FileStatus, u64) {
    if byte_count == 0 {
        (FileStatus::SUCCESS, 0)
    } else if offset >= size {
        (FileStatus::END_OF_FILE, 0)
    } else {
        (FileStatus::SUCCESS, (size - offset).min(byte_count.into()))
    }
}

// ---- version negotiation and state ----

#[test]
fn version_negotiation_reaches_ready() {
    let (host, _) = ready_host(false);
    assert_eq!(
        host.state(),
        ProtocolState::Ready {
            version: VERSION_WIN10
        }
    );
}

#[test]
fn unsupported_version_answers_1_and_stays_awaiting() {
    let (mut host, _) = new_host(false);
    for version in [0, 0x0001_0001, 0x0002_0000, u32::MAX] {
        let reply = send(&mut host, &version_request(version));
        assert_eq!(reply.len(), 12);
        assert_eq!(u32_at(&reply, 0), 2);
        assert_eq!(u32_at(&reply, 8), 1);
        assert_eq!(host.state(), ProtocolState::AwaitVersion);
    }
    assert_eq!(host.stats().count(BadInput::UnsupportedVersion), 4);
    let reply = send(&mut host, &version_request(VERSION_WIN10));
    assert_eq!(u32_at(&reply, 8), 0);
}

// ---- bad input: a table of rows, then the cases with extra checks ----

/// One input of a bad-input row and what the host must do with it.
enum BadStep {
    /// A message answered with a READ_FILE error, counted as this kind.
    ReadError(Vec<u8>, BadInput),
    /// A message answered with a READ_FILE_RDMA error, counted as this kind.
    RdmaError(Vec<u8>, BadInput),
    /// A message answered with this type and status.
    Reply(Vec<u8>, MessageType, FileStatus),
    /// A message that stops the channel with this error.
    StopMessage(Vec<u8>, ProtocolError),
    /// A GPA-direct setup that is accepted.
    Setup {
        handle: u32,
        writable: bool,
        ranges: Vec<GpaRange>,
    },
    /// A GPA-direct setup that stops the channel with this error.
    StopSetup {
        handle: u32,
        ranges: Vec<GpaRange>,
        error: ProtocolError,
    },
    /// A GPA-direct teardown that is accepted.
    Teardown(u32),
    /// A GPA-direct teardown that stops the channel with this error.
    StopTeardown(u32, ProtocolError),
}

/// A bad-input case: steps run in order on one fresh host.
struct BadRow {
    name: String,
    /// Whether the version is negotiated before the steps.
    ready: bool,
    rdma_enabled: bool,
    steps: Vec<BadStep>,
}

impl BadRow {
    fn new(name: impl Into<String>, ready: bool, rdma_enabled: bool, steps: Vec<BadStep>) -> Self {
        Self {
            name: name.into(),
            ready,
            rdma_enabled,
            steps,
        }
    }

    fn run(self) {
        let (mut host, _) = if self.ready {
            ready_host(self.rdma_enabled)
        } else {
            new_host(self.rdma_enabled)
        };
        for step in self.steps {
            step.run(&mut host);
        }
    }
}

impl BadStep {
    fn run(self, host: &mut VmbfsHost) {
        match self {
            Self::ReadError(msg, kind) => expect_read_error(host, &msg, kind),
            Self::RdmaError(msg, kind) => expect_rdma_error(host, &msg, kind),
            Self::Reply(msg, message_type, status) => {
                expect_reply(&send(host, &msg), message_type, status);
            }
            Self::StopMessage(msg, error) => expect_stop(host, VmbfsInput::Message(&msg), error),
            Self::Setup {
                handle,
                writable,
                ranges,
            } => setup(host, handle, writable, ranges),
            Self::StopSetup {
                handle,
                ranges,
                error,
            } => {
                let input = VmbfsInput::SetupGpaDirect {
                    handle,
                    writable: true,
                    ranges,
                };
                expect_stop(host, input, error);
            }
            Self::Teardown(handle) => assert_eq!(
                host.handle(VmbfsInput::TeardownGpaDirect { handle }),
                Ok(None)
            ),
            Self::StopTeardown(handle, error) => {
                expect_stop(host, VmbfsInput::TeardownGpaDirect { handle }, error);
            }
        }
    }
}

/// One writable page, the buffer most RDMA rows register.
fn one_page() -> Vec<GpaRange> {
    vec![GpaRange::new(4096, 0, vec![1]).unwrap()]
}

fn setup_step(handle: u32, ranges: Vec<GpaRange>) -> BadStep {
    BadStep::Setup {
        handle,
        writable: true,
        ranges,
    }
}

fn truncated(mut msg: Vec<u8>, len: usize) -> Vec<u8> {
    msg.truncate(len);
    msg
}

/// `prefix` in UTF-16 followed by raw code units.
fn path_with_units(prefix: &str, units: &[u16]) -> Vec<u8> {
    let mut path = utf16(prefix);
    path.extend(units.iter().flat_map(|u| u.to_le_bytes()));
    path
}

fn stop_rows() -> Vec<BadRow> {
    let mut rows = Vec::new();
    for len in [0usize, 1, 7] {
        let msg = vec![3u8; len];
        let error = ProtocolError::ShortHeader { len };
        let steps = vec![BadStep::StopMessage(msg, error)];
        rows.push(BadRow::new(
            format!("message_shorter_than_header/len {len}"),
            true,
            false,
            steps,
        ));
    }
    for message_type in [0u32, 9, 0x8000_0001] {
        let msg = message(message_type, &[0; 16]);
        let steps = vec![BadStep::StopMessage(
            msg,
            ProtocolError::UnknownType { message_type },
        )];
        rows.push(BadRow::new(
            format!("unknown_type/{message_type:#x}"),
            true,
            false,
            steps,
        ));
    }
    for message_type in [2u32, 4, 6, 8] {
        let msg = message(message_type, &[0; 16]);
        let error = ProtocolError::ResponseFromGuest { message_type };
        let steps = vec![BadStep::StopMessage(msg, error)];
        rows.push(BadRow::new(
            format!("response_type_from_guest/{message_type}"),
            true,
            false,
            steps,
        ));
    }
    let requests = [
        info_request("EFI"),
        read_request("big", 0, 10),
        rdma_request(1, "big", 0, 10, 0),
    ];
    for msg in requests {
        let message_type = u32_at(&msg, 0);
        let error = ProtocolError::RequestBeforeVersion { message_type };
        let steps = vec![BadStep::StopMessage(msg, error)];
        rows.push(BadRow::new(
            format!("request_before_version/{message_type}"),
            false,
            true,
            steps,
        ));
    }
    let error = ProtocolError::RepeatedVersion {
        negotiated: VERSION_WIN10,
        requested: VERSION_WIN10,
    };
    let steps = vec![BadStep::StopMessage(version_request(VERSION_WIN10), error)];
    rows.push(BadRow::new(
        "second_version_after_ready",
        true,
        false,
        steps,
    ));
    // Exactly the maximum is a valid (not found) request; one code unit
    // more is a message larger than the protocol allows.
    let long = "a".repeat((12288 - 8) / 2);
    let error = ProtocolError::MessageTooLong {
        len: 12290,
        max: 12288,
    };
    let steps = vec![
        BadStep::Reply(
            info_request(&long),
            MessageType::GET_FILE_INFO_RESPONSE,
            FileStatus::NOT_FOUND,
        ),
        BadStep::StopMessage(info_request(&format!("{long}a")), error),
    ];
    rows.push(BadRow::new(
        "path_longer_than_message_allows",
        true,
        false,
        steps,
    ));
    rows
}

fn path_rows() -> Vec<BadRow> {
    let read_error = |msg, kind| BadStep::ReadError(msg, kind);
    let mut rows = vec![
        BadRow::new(
            "read_file_shorter_than_body",
            true,
            false,
            vec![read_error(
                truncated(read_request("", 0, 1), 19),
                BadInput::TruncatedBody,
            )],
        ),
        BadRow::new(
            "read_file_rdma_shorter_than_body",
            true,
            true,
            vec![BadStep::RdmaError(
                truncated(rdma_request(1, "", 0, 1, 0), 31),
                BadInput::TruncatedBody,
            )],
        ),
        BadRow::new(
            "embedded_nul",
            true,
            false,
            vec![read_error(
                read_request_raw(10, 0, &path_with_units("big", &[0, u16::from(b'x')])),
                BadInput::EmbeddedNul,
            )],
        ),
    ];
    let mut surrogates: Vec<BadStep> = [0xD800u16, 0xDFFF]
        .into_iter()
        .map(|unit| {
            let msg = read_request_raw(10, 0, &path_with_units("big", &[unit]));
            read_error(msg, BadInput::UnpairedSurrogate)
        })
        .collect();
    // A high surrogate followed by something other than a low one.
    let msg = read_request_raw(10, 0, &path_with_units("", &[0xD800, u16::from(b'a')]));
    surrogates.push(read_error(msg, BadInput::UnpairedSurrogate));
    rows.push(BadRow::new("lone_surrogates", true, false, surrogates));
    let mut directory: Vec<BadStep> = ["", "EFI", "\\EFI\\BOOT\\"]
        .into_iter()
        .map(|path| read_error(read_request(path, 0, 100), BadInput::ReadOfDirectory))
        .collect();
    directory.push(setup_step(1, one_page()));
    directory.push(BadStep::RdmaError(
        rdma_request(1, "EFI", 0, 100, 0),
        BadInput::ReadOfDirectory,
    ));
    rows.push(BadRow::new("read_of_directory", true, true, directory));
    rows.push(BadRow::new(
        "offset_plus_byte_count_overflow",
        true,
        true,
        vec![
            read_error(read_request("big", u64::MAX, 1), BadInput::OffsetOverflow),
            read_error(
                read_request("big", u64::MAX - 99, 100),
                BadInput::OffsetOverflow,
            ),
            // The largest offset that does not overflow is merely past EOF.
            BadStep::Reply(
                read_request("big", u64::MAX - 100, 100),
                MessageType::READ_FILE_RESPONSE,
                FileStatus::END_OF_FILE,
            ),
            setup_step(1, one_page()),
            BadStep::RdmaError(
                rdma_request(1, "big", u64::MAX, 1, 0),
                BadInput::OffsetOverflow,
            ),
        ],
    ));
    rows
}

fn handle_rows() -> Vec<BadRow> {
    let rdma_error = |kind| BadStep::RdmaError(rdma_request(1, "big", 0, 100, 0), kind);
    let mut too_many: Vec<BadStep> = (0..MAX_GPA_DIRECT_BUFFERS as u32)
        .map(|handle| setup_step(handle, one_page()))
        .collect();
    too_many.push(BadStep::StopSetup {
        handle: 1000,
        ranges: one_page(),
        error: ProtocolError::TooManyHandles {
            handle: 1000,
            limit: MAX_GPA_DIRECT_BUFFERS,
        },
    });
    vec![
        BadRow::new(
            "rdma_without_registered_handle",
            true,
            true,
            vec![
                rdma_error(BadInput::UnknownHandle),
                setup_step(2, one_page()),
                rdma_error(BadInput::UnknownHandle),
            ],
        ),
        BadRow::new(
            "rdma_into_read_only_buffer",
            true,
            true,
            vec![
                BadStep::Setup {
                    handle: 1,
                    writable: false,
                    ranges: one_page(),
                },
                rdma_error(BadInput::ReadOnlyHandle),
            ],
        ),
        BadRow::new(
            "rdma_when_disabled",
            true,
            false,
            vec![
                setup_step(1, one_page()),
                rdma_error(BadInput::RdmaDisabled),
            ],
        ),
        BadRow::new(
            "teardown_of_unknown_handle",
            true,
            true,
            vec![
                setup_step(1, one_page()),
                BadStep::Teardown(1),
                BadStep::StopTeardown(1, ProtocolError::UnknownTeardown { handle: 1 }),
            ],
        ),
        BadRow::new(
            "setup_duplicate",
            true,
            true,
            vec![
                setup_step(1, one_page()),
                BadStep::StopSetup {
                    handle: 1,
                    ranges: one_page(),
                    error: ProtocolError::DuplicateSetup { handle: 1 },
                },
            ],
        ),
        BadRow::new(
            "setup_empty",
            true,
            true,
            vec![BadStep::StopSetup {
                handle: 5,
                ranges: vec![],
                error: ProtocolError::EmptySetup { handle: 5 },
            }],
        ),
        BadRow::new("setup_too_many", true, true, too_many),
    ]
}

/// Every row runs, even after a failing one; the failure names each
/// failing row with its panic message.
#[test]
fn bad_input_is_refused_or_stops() {
    let rows = stop_rows()
        .into_iter()
        .chain(path_rows())
        .chain(handle_rows());
    let failures: Vec<String> = rows
        .filter_map(|row| {
            let name = row.name.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row.run()));
            result
                .err()
                .map(|panic| format!("{name}: {}", panic_message(&*panic)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "bad-input rows failed:\n{}",
        failures.join("\n")
    );
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic".to_owned())
}

#[test]
fn bad_version_request_shorter_than_body_is_unsupported() {
    let (mut host, _) = new_host(false);
    let mut msg = version_request(VERSION_WIN10);
    msg.truncate(11);
    let reply = send(&mut host, &msg);
    assert_eq!(reply.len(), 12);
    assert_eq!(u32_at(&reply, 8), 1);
    assert_eq!(host.state(), ProtocolState::AwaitVersion);
    assert_eq!(host.stats().count(BadInput::TruncatedBody), 1);
}

#[test]
fn bad_odd_length_path_is_error() {
    let (mut host, _) = ready_host(false);
    let mut path = utf16("big");
    path.push(b'x');
    expect_read_error(
        &mut host,
        &read_request_raw(10, 0, &path),
        BadInput::OddLengthPath,
    );
    let reply = send(&mut host, &message(3, &path));
    assert_eq!(reply.len(), 24);
    expect_reply(
        &reply,
        MessageType::GET_FILE_INFO_RESPONSE,
        FileStatus::ERROR,
    );
    assert_eq!(host.stats().count(BadInput::OddLengthPath), 2);
}

#[test]
fn bad_byte_count_above_limit_is_error() {
    let (mut host, _) = ready_host(true);
    expect_read_error(
        &mut host,
        &read_request("big", 0, 12277),
        BadInput::ByteCountTooLarge,
    );
    expect_read_error(
        &mut host,
        &read_request("big", 0, u32::MAX),
        BadInput::ByteCountTooLarge,
    );
    let reply = send(&mut host, &read_request("big", 0, 12276));
    assert_eq!(reply.len(), 12 + 12276);
    let pages = (7 * 1024 * 1024 + 4096) / 4096;
    setup(
        &mut host,
        1,
        true,
        vec![GpaRange::new(7 * 1024 * 1024 + 4096, 0, (0..pages).collect()).unwrap()],
    );
    expect_rdma_error(
        &mut host,
        &rdma_request(1, "big", 0, 7 * 1024 * 1024 + 1, 0),
        BadInput::ByteCountTooLarge,
    );
}

#[test]
fn bad_rdma_range_smaller_than_byte_count_is_error() {
    let (mut host, memory) = ready_host(true);
    memory.fill(0, memory.size(), 0xEE).unwrap();
    setup(
        &mut host,
        1,
        true,
        vec![GpaRange::new(1000, 0, vec![3]).unwrap()],
    );
    expect_rdma_error(
        &mut host,
        &rdma_request(1, "big", 0, 1001, 0),
        BadInput::RdmaRangeTooSmall,
    );
    expect_rdma_error(
        &mut host,
        &rdma_request(1, "big", 0, 500, 501),
        BadInput::RdmaRangeTooSmall,
    );
    expect_rdma_error(
        &mut host,
        &rdma_request(1, "big", 0, 1, u64::MAX),
        BadInput::RdmaRangeTooSmall,
    );
    // Nothing was written before refusing.
    let mut page = vec![0u8; 4096];
    memory.read(3 * 4096, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0xEE));
    // Exactly fitting works.
    let reply = send(&mut host, &rdma_request(1, "big", 0, 500, 500));
    assert_eq!(
        expect_reply(
            &reply,
            MessageType::READ_FILE_RDMA_RESPONSE,
            FileStatus::SUCCESS
        ),
        500u32.to_le_bytes()
    );
}

#[test]
fn bad_rdma_range_outside_guest_memory_is_error() {
    let (mut host, memory) = ready_host(true);
    memory.fill(0, memory.size(), 0xEE).unwrap();
    // First page valid, second outside memory: refused before any write.
    let range = GpaRange::new(8192, 0, vec![4, MEMORY_PAGES]).unwrap();
    setup(&mut host, 1, true, vec![range]);
    expect_rdma_error(
        &mut host,
        &rdma_request(1, "big", 0, 8192, 0),
        BadInput::RdmaOutsideGuestMemory,
    );
    let mut page = vec![0u8; 4096];
    memory.read(4 * 4096, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0xEE), "no partial write");
    // The part inside memory alone is usable.
    let reply = send(&mut host, &rdma_request(1, "big", 0, 4096, 0));
    expect_reply(
        &reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
}

#[test]
fn bad_flood_of_unread_requests_keeps_no_backlog() {
    // The host answers each request as it is taken and holds nothing back:
    // a guest that never reads replies only fills its own ring, which the
    // glue stops reading once it cannot reserve room for a reply.
    let (mut host, _) = ready_host(false);
    let request = read_request("big", 0, 12276);
    for _ in 0..2000 {
        let step = host.start(VmbfsInput::Message(&request)).unwrap();
        let Step::Io(job) = step else {
            panic!("a read needs I/O")
        };
        let reply = host.finish(job.run());
        assert!(reply.as_bytes().len() <= VmbfsHost::max_reply_size());
    }
    assert_eq!(host.stats().replies, 2001);
    assert_eq!(host.stats().inputs, 2001);
    assert_eq!(host.stats().total_bad_input(), 0);
}

// ---- paths ----

#[test]
fn paths_resolve_inside_the_tree() {
    let (mut host, _) = ready_host(false);
    let expected = pattern(5000, 1);
    for path in [
        "\\EFI\\BOOT\\BOOTX64.EFI",
        "EFI/BOOT/BOOTX64.EFI",
        "\\EFI\\\\BOOT\\.\\BOOTX64.EFI",
        "\\..\\..\\EFI\\BOOT\\..\\BOOT\\BOOTX64.EFI",
        "/../EFI/BOOT/BOOTX64.EFI",
    ] {
        let reply = send(&mut host, &read_request(path, 0, 12276));
        let data = expect_reply(&reply, MessageType::READ_FILE_RESPONSE, FileStatus::SUCCESS);
        assert_eq!(data, expected, "{path}");
    }
}

#[test]
fn dotdot_at_root_is_clamped_and_empty_path_is_root() {
    let (mut host, _) = ready_host(false);
    for path in ["", "\\", "..", "\\..\\..", "EFI\\..\\..", "."] {
        let reply = send(&mut host, &info_request(path));
        let rest = expect_reply(
            &reply,
            MessageType::GET_FILE_INFO_RESPONSE,
            FileStatus::SUCCESS,
        );
        assert_eq!(u32_at(&rest, 0), 1, "{path:?} is the root directory");
        assert_eq!(u64_at(&rest, 4), 0);
    }
}

#[test]
fn trailing_nul_from_client_quirk_is_stripped() {
    let (mut host, _) = ready_host(false);
    let mut path = utf16("\\EFI\\BOOT\\BOOTX64.EFI");
    path.extend_from_slice(&[0, 0]);
    let reply = send(&mut host, &message(3, &path));
    let rest = expect_reply(
        &reply,
        MessageType::GET_FILE_INFO_RESPONSE,
        FileStatus::SUCCESS,
    );
    assert_eq!(u64_at(&rest, 4), 5000);
}

#[test]
fn missing_paths_are_not_found() {
    let (mut host, _) = ready_host(false);
    for path in ["nope", "EFI\\nope", "big\\x", "\\EFI\\BOOT\\BOOTX64.EFI\\x"] {
        let reply = send(&mut host, &info_request(path));
        assert_eq!(reply.len(), 24);
        let rest = expect_reply(
            &reply,
            MessageType::GET_FILE_INFO_RESPONSE,
            FileStatus::NOT_FOUND,
        );
        assert_eq!(rest, [0; 12]);
        let reply = send(&mut host, &read_request(path, 0, 10));
        assert_eq!(reply.len(), 12);
        expect_reply(
            &reply,
            MessageType::READ_FILE_RESPONSE,
            FileStatus::NOT_FOUND,
        );
    }
    assert_eq!(host.stats().total_bad_input(), 0);
}

// ---- GET_FILE_INFO flags ----

#[test]
fn file_info_flags_and_sizes() {
    for rdma in [false, true] {
        let (mut host, _) = ready_host(rdma);
        let reply = send(&mut host, &info_request("big"));
        assert_eq!(reply.len(), 24);
        let rest = expect_reply(
            &reply,
            MessageType::GET_FILE_INFO_RESPONSE,
            FileStatus::SUCCESS,
        );
        assert_eq!(u32_at(&rest, 0), if rdma { 2 } else { 0 });
        assert_eq!(u64_at(&rest, 4), BIG as u64);
        let reply = send(&mut host, &info_request("EFI\\BOOT"));
        let rest = expect_reply(
            &reply,
            MessageType::GET_FILE_INFO_RESPONSE,
            FileStatus::SUCCESS,
        );
        assert_eq!(u32_at(&rest, 0), 1, "directory, never rdma_capable");
        assert_eq!(u64_at(&rest, 4), 0);
    }
}

// ---- READ_FILE end-of-file rules ----

#[test]
fn eof_rules_at_boundary_sizes() {
    let (mut host, _) = ready_host(false);
    for size in EOF_SIZES {
        let content = pattern(size, size as u32);
        let path = format!("sizes\\f{size}");
        let size64 = size as u64;
        let offsets = [
            0,
            1,
            size64.saturating_sub(1),
            size64,
            size64 + 1,
            12276,
            1 << 40,
        ];
        for offset in offsets {
            for byte_count in [0u32, 1, 2, 12275, 12276] {
                let reply = send(&mut host, &read_request(&path, offset, byte_count));
                let (status, len) = model_read(size64, offset, byte_count);
                let data = expect_reply(&reply, MessageType::READ_FILE_RESPONSE, status);
                assert_eq!(
                    data.len() as u64,
                    len,
                    "size {size} offset {offset} count {byte_count}"
                );
                if len > 0 {
                    let start = offset as usize;
                    assert_eq!(data, content[start..start + len as usize]);
                    assert!(status == FileStatus::SUCCESS);
                }
                if status == FileStatus::SUCCESS && byte_count > 0 {
                    assert!(!data.is_empty(), "SUCCESS with 0 bytes before EOF");
                }
            }
        }
    }
}

#[test]
fn uefi_style_unclamped_chunked_read_gets_whole_file() {
    let (mut host, _) = ready_host(false);
    for size in EOF_SIZES {
        let path = format!("\\sizes\\f{size}");
        let mut got = Vec::new();
        // The client asks for min(buffer left, 12276) with a buffer larger
        // than the file, never clamping to its size.
        let mut left = size + 20000;
        loop {
            let ask = left.min(12276) as u32;
            let reply = send(&mut host, &read_request(&path, got.len() as u64, ask));
            match u32_at(&reply, 8) {
                0 => {
                    assert!(reply.len() > 12, "SUCCESS with no data would loop forever");
                    got.extend_from_slice(&reply[12..]);
                    left -= reply.len() - 12;
                }
                2 => break,
                s => panic!("status {s}"),
            }
        }
        assert_eq!(got, pattern(size, size as u32));
    }
}

// ---- RDMA ----

/// Non-contiguous, shuffled guest pages for a buffer of `len` bytes at
/// `byte_offset` into its first page.
fn scattered_range(len: u32, byte_offset: u32) -> GpaRange {
    let pages = (byte_offset as u64 + len as u64).div_ceil(4096);
    let gpns = (0..pages).map(|i| 200 - (i * 3 % 199) - 1).collect();
    GpaRange::new(len, byte_offset, gpns).unwrap()
}

/// Reads `len` bytes at `offset` into `range` straight from guest memory,
/// page by page, without using the code under test.
fn guest_bytes(memory: &GuestMemory, range: &GpaRange, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let pos = range.byte_offset() as u64 + offset + i;
        let gpa = range.gpns()[(pos / 4096) as usize] * 4096 + pos % 4096;
        let mut b = [0u8];
        memory.read(gpa, &mut b).unwrap();
        out.push(b[0]);
    }
    out
}

#[test]
fn rdma_into_non_contiguous_pages() {
    let (mut host, memory) = ready_host(true);
    memory.fill(0, memory.size(), 0xEE).unwrap();
    let range = scattered_range(BIG as u32 + 1000, 1234);
    setup(&mut host, 1, true, vec![range.clone()]);
    let reply = send(&mut host, &rdma_request(1, "big", 0, BIG as u32, 1000));
    assert_eq!(reply.len(), 16);
    let rest = expect_reply(
        &reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
    assert_eq!(u32_at(&rest, 0), BIG as u32);
    assert_eq!(guest_bytes(&memory, &range, 1000, BIG), pattern(BIG, 2));
    assert!(
        guest_bytes(&memory, &range, 0, 1000)
            .iter()
            .all(|&b| b == 0xEE)
    );
}

#[test]
fn rdma_across_several_ranges() {
    let (mut host, memory) = ready_host(true);
    let a = GpaRange::new(5000, 100, vec![10, 11]).unwrap();
    let b = GpaRange::new(3000, 0, vec![50]).unwrap();
    setup(&mut host, 7, true, vec![a.clone(), b.clone()]);
    let reply = send(&mut host, &rdma_request(7, "big", 10, 7000, 1000));
    let rest = expect_reply(
        &reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
    assert_eq!(u32_at(&rest, 0), 7000);
    let expected = pattern(BIG, 2)[10..7010].to_vec();
    assert_eq!(guest_bytes(&memory, &a, 1000, 4000), expected[..4000]);
    assert_eq!(guest_bytes(&memory, &b, 0, 3000), expected[4000..]);
}

#[test]
fn rdma_eof_rules_match_in_band() {
    let (mut host, memory) = ready_host(true);
    let range = scattered_range(20000, 0);
    setup(&mut host, 1, true, vec![range.clone()]);
    for size in EOF_SIZES {
        let content = pattern(size, size as u32);
        let path = format!("sizes/f{size}");
        for offset in [0u64, 1, size as u64, size as u64 + 5] {
            for byte_count in [0u32, 1, 12276, 20000] {
                memory.fill(0, memory.size(), 0xEE).unwrap();
                let reply = send(&mut host, &rdma_request(1, &path, offset, byte_count, 0));
                let (status, len) = model_read(size as u64, offset, byte_count);
                let rest = expect_reply(&reply, MessageType::READ_FILE_RDMA_RESPONSE, status);
                assert_eq!(u64::from(u32_at(&rest, 0)), len);
                let written = guest_bytes(&memory, &range, 0, len as usize + 1);
                if len > 0 {
                    let start = offset as usize;
                    assert_eq!(
                        written[..len as usize],
                        content[start..start + len as usize]
                    );
                }
                assert_eq!(written[len as usize], 0xEE, "nothing past the short read");
            }
        }
    }
}

#[test]
fn batched_teardown_setup_request_keep_order() {
    let (mut host, memory) = ready_host(true);
    memory.fill(0, memory.size(), 0).unwrap();
    let first = GpaRange::new(4096, 0, vec![20]).unwrap();
    let second = GpaRange::new(4096, 0, vec![30]).unwrap();
    setup(&mut host, 1, true, vec![first.clone()]);
    let reply = send(&mut host, &rdma_request(1, "big", 0, 4096, 0));
    expect_reply(
        &reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
    // The deferred teardown arrives together with the next setup and read.
    let next = rdma_request(1, "big", 4096, 4096, 0);
    let batch = [
        VmbfsInput::TeardownGpaDirect { handle: 1 },
        VmbfsInput::SetupGpaDirect {
            handle: 1,
            writable: true,
            ranges: vec![second.clone()],
        },
        VmbfsInput::Message(&next),
    ];
    let outputs: Vec<_> = batch.into_iter().map(|i| host.handle(i).unwrap()).collect();
    assert!(outputs[0].is_none() && outputs[1].is_none());
    let reply = outputs[2].as_ref().unwrap().as_bytes();
    expect_reply(
        reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
    let content = pattern(BIG, 2);
    assert_eq!(guest_bytes(&memory, &second, 0, 4096), content[4096..8192]);
    assert_eq!(
        guest_bytes(&memory, &first, 0, 4096),
        content[..4096],
        "old buffer untouched"
    );
    assert_eq!(host.gpa_direct_handles(), [1]);
}

#[test]
fn io_job_runs_on_another_thread() {
    let (mut host, memory) = ready_host(true);
    let range = GpaRange::new(100_000, 0, (100..125).collect()).unwrap();
    setup(&mut host, 1, true, vec![range.clone()]);
    let msg = rdma_request(1, "big", 5, 100_000, 0);
    let Step::Io(job) = host.start(VmbfsInput::Message(&msg)).unwrap() else {
        panic!("RDMA read needs I/O")
    };
    let done = std::thread::spawn(move || job.run()).join().unwrap();
    let reply = host.finish(done);
    let rest = expect_reply(
        reply.as_bytes(),
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
    assert_eq!(u32_at(&rest, 0), 100_000);
    assert_eq!(
        guest_bytes(&memory, &range, 0, 100_000),
        pattern(BIG, 2)[5..100_005]
    );
}

// ---- saved state and reset ----

#[test]
fn save_restore_mid_session() {
    let (mut host, memory) = ready_host(true);
    let range = scattered_range(8192, 0);
    setup(&mut host, 3, true, vec![range.clone()]);
    let saved = host.save();
    assert_eq!(
        saved.state,
        ProtocolState::Ready {
            version: VERSION_WIN10
        }
    );
    assert_eq!(saved.gpa_direct.len(), 1);

    let config = VmbfsConfig {
        tree: Arc::new(tree()),
        rdma_enabled: true,
    };
    let mut resumed = VmbfsHost::new(config, memory.clone());
    resumed.restore(&saved).unwrap();
    assert_eq!(resumed.save(), saved);
    // No new negotiation needed; the registered buffer still works.
    let reply = send(&mut resumed, &rdma_request(3, "big", 100, 8192, 0));
    expect_reply(
        &reply,
        MessageType::READ_FILE_RDMA_RESPONSE,
        FileStatus::SUCCESS,
    );
    assert_eq!(
        guest_bytes(&memory, &range, 0, 8192),
        pattern(BIG, 2)[100..8292]
    );
    assert_eq!(
        resumed.handle(VmbfsInput::TeardownGpaDirect { handle: 3 }),
        Ok(None)
    );
}

#[test]
fn restore_refuses_bad_saved_state() {
    let (mut host, _) = ready_host(true);
    let entry = SavedGpaDirect {
        handle: 1,
        writable: true,
        ranges: vec![GpaRange::new(10, 0, vec![1]).unwrap()],
    };
    let mut saved = VmbfsSavedState {
        state: ProtocolState::Ready { version: 5 },
        gpa_direct: vec![],
    };
    assert_eq!(
        host.restore(&saved),
        Err(RestoreError::UnsupportedVersion(5))
    );
    saved.state = ProtocolState::AwaitVersion;
    saved.gpa_direct = vec![entry.clone(), entry.clone()];
    assert_eq!(host.restore(&saved), Err(RestoreError::DuplicateHandle(1)));
    saved.gpa_direct = vec![SavedGpaDirect {
        ranges: vec![],
        ..entry.clone()
    }];
    assert_eq!(host.restore(&saved), Err(RestoreError::EmptyBuffer(1)));
    saved.gpa_direct = (0..17)
        .map(|handle| SavedGpaDirect {
            handle,
            ..entry.clone()
        })
        .collect();
    assert!(matches!(
        host.restore(&saved),
        Err(RestoreError::TooManyBuffers { count: 17, .. })
    ));
    // Failed restores changed nothing.
    assert!(matches!(host.state(), ProtocolState::Ready { .. }));
}

#[test]
fn reset_clears_everything() {
    let (mut host, _) = ready_host(true);
    setup(
        &mut host,
        1,
        true,
        vec![GpaRange::new(4096, 0, vec![1]).unwrap()],
    );
    host.reset();
    assert_eq!(host.state(), ProtocolState::AwaitVersion);
    assert!(host.gpa_direct_handles().is_empty());
    assert_eq!(
        host.save(),
        VmbfsSavedState {
            state: ProtocolState::AwaitVersion,
            gpa_direct: vec![]
        }
    );
    // A fresh open must negotiate again...
    let reply = send(&mut host, &version_request(VERSION_WIN10));
    assert_eq!(u32_at(&reply, 8), 0);
    // ...and the old handle is gone.
    expect_rdma_error(
        &mut host,
        &rdma_request(1, "big", 0, 10, 0),
        BadInput::UnknownHandle,
    );
    // Reset also revives a stopped channel.
    let _ = host.handle(VmbfsInput::Message(&[0]));
    assert_eq!(host.state(), ProtocolState::Stopped);
    host.reset();
    let reply = send(&mut host, &version_request(VERSION_WIN10));
    assert_eq!(u32_at(&reply, 8), 0);
}

// ---- arbitrary input ----

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any message yields exactly one well-formed reply of the matching
    /// type, or a protocol violation; never a panic.
    #[test]
    fn arbitrary_messages_get_one_reply_or_stop(
        message_type in 0u32..10,
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        rdma in proptest::prelude::any::<bool>(),
    ) {
        let (mut host, _) = ready_host(rdma);
        setup(&mut host, 1, true, vec![GpaRange::new(4096, 0, vec![MEMORY_PAGES - 1]).unwrap()]);
        let msg = message(message_type, &body);
        match host.handle(VmbfsInput::Message(&msg)) {
            Ok(Some(reply)) => {
                let reply = reply.as_bytes();
                proptest::prop_assert!(reply.len() <= 12288);
                proptest::prop_assert_eq!(u32_at(reply, 0), message_type + 1);
                let expected_len = match message_type {
                    3 => Some(24),
                    7 => Some(16),
                    _ => None,
                };
                if let Some(len) = expected_len {
                    proptest::prop_assert_eq!(reply.len(), len);
                }
                let ready = matches!(host.state(), ProtocolState::Ready { .. });
                proptest::prop_assert!(ready);
            }
            Ok(None) => proptest::prop_assert!(false, "a message always gets a reply"),
            Err(e) => {
                proptest::prop_assert!(e.kind().is_some());
                proptest::prop_assert_eq!(host.state(), ProtocolState::Stopped);
            }
        }
    }
}

#[test]
fn ten_thousand_bad_requests_are_counted_exactly_and_logged_boundedly() {
    use crate::violation::tests::EventCounter;
    use crate::violation::{ManualClock, ViolationLog, ViolationPolicy};
    let clock = Arc::new(ManualClock::default());
    let log = Arc::new(ViolationLog::with_policy(
        "vmbfs",
        ViolationPolicy {
            logged_per_kind: 5,
            summary_interval: std::time::Duration::from_secs(10),
        },
        clock.clone(),
    ));
    let (host, _) = ready_host(false);
    let mut host = host.with_violation_log(log.clone());
    let mut odd = utf16("big");
    odd.push(b'x');
    let bad = read_request_raw(10, 0, &odd);
    let events = EventCounter::default();
    tracing::subscriber::with_default(events.clone(), || {
        for i in 0..10_000u32 {
            if i == 5_000 {
                // Half way the interval passes once: one summary.
                clock.advance(std::time::Duration::from_secs(10));
            }
            let reply = send(&mut host, &bad);
            expect_reply(&reply, MessageType::READ_FILE_RESPONSE, FileStatus::ERROR);
        }
    });
    assert_eq!(host.stats().count(BadInput::OddLengthPath), 10_000);
    assert_eq!(host.stats().total_bad_input(), 10_000);
    assert_eq!(log.count("OddLengthPath"), 10_000);
    // Five individual events and one summary, not ten thousand lines.
    assert_eq!(events.count(), 6);
    // The channel was never stopped: each request failed on its own.
    assert_eq!(host.stats().channel_stops, 0);
}
