//! vmbfs end to end over the loopback VM: the device on the bus contract,
//! the UEFI-like client, raw hostile guests, backpressure and saved state.

use futures_lite::future::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use vmbdev_device::bus::{ChannelError, VmbusDevice};
use vmbdev_device::vmbfs::{
    BadInput, ProtocolError, ProtocolState, VmbfsConfig, VmbfsDevice, VmbfsSavedState,
    encode_saved_state,
};
use vmbdev_fs::{FileTree, MemoryTree};
use vmbdev_guest::vmbfs::{ClientError, VmbfsClientError};
use vmbdev_loopback::vm::{GuestChannel, LoopbackVm, RingShape, VmConfig};
use vmbdev_loopback::vmbfs::{ResumeDevice, VmbfsClient, VmbfsLoopback};
use vmbdev_protocol::vmbfs::MAX_READ_SIZE;
use vmbdev_ring::pipe::MAX_MESSAGE_LEN;
use vmbdev_ring::{GpaRange, OutgoingPacket, PipeMessage};

const MIB: usize = 1 << 20;

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// A tree of boundary-sized and multi-MiB files, and the same as a map.
fn random_tree(seed: u64) -> (Arc<dyn FileTree>, BTreeMap<String, Vec<u8>>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sizes = [
        ("empty", 0),
        ("one", 1),
        ("EFI/BOOT/below", 12275),
        ("EFI/BOOT/exact", 12276),
        ("EFI/BOOT/above", 12277),
        ("EFI/Microsoft/Boot/big.bin", 3 * MIB + 77),
        ("deep/a/b/c/over-rdma-chunk.bin", 7 * MIB + 4099),
        ("sp ace/Ünï.txt", 5000),
    ];
    let mut files = BTreeMap::new();
    let mut builder = MemoryTree::builder();
    for (path, len) in sizes {
        let data = random_bytes(&mut rng, len);
        builder.add_file(path, data.clone()).unwrap();
        files.insert(path.to_owned(), data);
    }
    (Arc::new(builder.build()), files)
}

fn device(tree: Arc<dyn FileTree>, rdma_enabled: bool) -> Arc<VmbfsDevice> {
    Arc::new(VmbfsDevice::new(VmbfsConfig { tree, rdma_enabled }))
}

fn vm() -> LoopbackVm {
    LoopbackVm::new(&VmConfig::default()).unwrap()
}

#[test]
fn every_file_reads_back_in_band_and_by_rdma() {
    let (tree, files) = random_tree(1);
    let dev = device(tree, true);
    for use_rdma in [false, true] {
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), dev.clone()), use_rdma);
        block_on(async {
            client.open_volume().await.unwrap();
            for (path, data) in &files {
                let got = client.read_all(path).await.unwrap();
                assert!(got == *data, "{path} differs (rdma {use_rdma})");
            }
            client.close().await.unwrap();
        });
        let stats = client.stats();
        let total: u64 = files.values().map(|d| d.len() as u64).sum();
        if use_rdma {
            assert_eq!(stats.rdma_bytes, total);
            assert_eq!(stats.in_band_bytes, 0);
            // The 7 MiB + 4099 file needs two chunks.
            assert!(stats.rdma_chunks > files.len() as u64 - 2);
        } else {
            assert_eq!(stats.in_band_bytes, total);
            assert_eq!(stats.rdma_bytes, 0);
        }
    }
    let stats = dev.stats();
    assert_eq!(stats.protocol.total_bad_input(), 0);
    assert_eq!(stats.protocol.channel_stops, 0);
}

#[test]
fn rdma_disabled_device_is_read_in_band_by_an_rdma_client() {
    let (tree, files) = random_tree(2);
    let dev = device(tree, false);
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), dev.clone()), true);
    block_on(async {
        for (path, data) in &files {
            assert!(client.read_all(path).await.unwrap() == *data, "{path}");
        }
    });
    assert_eq!(client.stats().rdma_bytes, 0);
    assert_eq!(dev.stats().rdma_bytes, 0);
}

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

#[test]
fn uefi_sequence_with_its_quirks() {
    let mut builder = MemoryTree::builder();
    let boot = b"MZ boot loader".repeat(2000);
    builder
        .add_file("EFI/BOOT/BOOTX64.EFI", boot.clone())
        .unwrap();
    builder.add_file("hive", vec![7u8; 100]).unwrap();
    let dev = device(Arc::new(builder.build()), true);
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), dev.clone()), false);
    block_on(async {
        // Empty path = root, a directory of size 0.
        let root = client.open_volume().await.unwrap();
        assert!(root.path.is_empty());
        assert!(root.info.directory && root.info.size == 0);

        // The boot manager's full path, verbatim with a leading `\`.
        let loader = client
            .open(&root, "\\EFI\\BOOT\\BOOTX64.EFI")
            .await
            .unwrap();
        assert_eq!(loader.path, utf16("\\EFI\\BOOT\\BOOTX64.EFI"));
        assert_eq!(loader.info.size, boot.len() as u64);
        assert!(!loader.info.directory && loader.info.rdma_capable);

        // Component by component: `\EFI\` ends in `\`, so the next child
        // carries the firmware's trailing NUL.
        let efi = client.open(&root, "\\EFI\\").await.unwrap();
        assert!(efi.info.directory);
        let boot_dir = client.open(&efi, "BOOT").await.unwrap();
        assert_eq!(*boot_dir.path.last().unwrap(), 0, "quirk NUL present");
        assert!(boot_dir.info.directory);
        let file = client.open(&boot_dir, "BOOTX64.EFI").await.unwrap();
        assert_eq!(file.info, loader.info);

        // Doubled separators, `.`, `..` (clamped at the root).
        for odd in [
            "\\\\EFI\\\\BOOT\\BOOTX64.EFI",
            "\\EFI\\.\\BOOT\\.\\BOOTX64.EFI",
            "\\EFI\\..\\EFI\\BOOT\\BOOTX64.EFI",
            "\\..\\..\\EFI\\BOOT\\BOOTX64.EFI",
        ] {
            let f = client.open(&root, odd).await.unwrap();
            assert_eq!(f.info, loader.info, "{odd}");
        }
        let err = client.open(&root, "\\EFI\\nope").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");

        // Unclamped chunks: a 3-chunk buffer over a 100-byte file gets a
        // short read of 100, not END_OF_FILE.
        let hive = client.open(&root, "hive").await.unwrap();
        let mut buf = vec![0u8; 3 * MAX_READ_SIZE as usize];
        let n = client.read_file(&hive, 0, &mut buf).await.unwrap();
        assert_eq!(n, 100);
        assert!(buf[..100].iter().all(|&b| b == 7));
        // A read at EOF asks nothing (the loop stops at the size).
        assert_eq!(client.read_file(&hive, 100, &mut buf).await.unwrap(), 0);

        // The whole loader through the quirky path, in chunks.
        let mut whole = vec![0u8; boot.len()];
        assert_eq!(
            client.read_file(&file, 0, &mut whole).await.unwrap(),
            boot.len()
        );
        assert!(whole == boot);

        // Reading a directory fails with a device error.
        let err = client.read_file(&root, 0, &mut buf).await.unwrap_err();
        assert!(matches!(err, VmbfsClientError::IsADirectory(_)), "{err}");

        // A second volume open reopens the channel from a clean state.
        client.open_volume().await.unwrap();
        let again = client.read_all("EFI/BOOT/BOOTX64.EFI").await.unwrap();
        assert!(again == boot);
    });
    assert_eq!(client.stats().volume_opens, 2);
    let stats = dev.stats();
    assert_eq!(stats.opens, 2);
    assert_eq!(stats.protocol.total_bad_input(), 0);
}

// ---- raw hostile guests ------------------------------------------------

fn sample_tree() -> Arc<dyn FileTree> {
    let mut builder = MemoryTree::builder();
    builder
        .add_file("dir/file", b"0123456789".repeat(3000))
        .unwrap();
    Arc::new(builder.build())
}

fn raw_open(vm: &LoopbackVm, dev: &Arc<VmbfsDevice>) -> GuestChannel {
    let dyn_dev: Arc<dyn VmbusDevice> = dev.clone();
    vm.open_channel(dyn_dev.clone(), 0, RingShape::from_offer(&*dyn_dev))
        .unwrap()
}

fn message(message_type: u32, body: &[u8]) -> Vec<u8> {
    let mut m = message_type.to_le_bytes().to_vec();
    m.extend([0; 4]);
    m.extend_from_slice(body);
    m
}

fn path_bytes(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn version(v: u32) -> Vec<u8> {
    message(1, &v.to_le_bytes())
}

fn info(path: &[u8]) -> Vec<u8> {
    message(3, path)
}

fn read(byte_count: u32, offset: u64, path: &[u8]) -> Vec<u8> {
    let mut body = byte_count.to_le_bytes().to_vec();
    body.extend(offset.to_le_bytes());
    body.extend_from_slice(path);
    message(5, &body)
}

fn rdma(handle: u32, byte_count: u32, offset: u64, token: u64, path: &str) -> Vec<u8> {
    let mut body = handle.to_le_bytes().to_vec();
    body.extend(byte_count.to_le_bytes());
    body.extend(offset.to_le_bytes());
    body.extend(token.to_le_bytes());
    body.extend(path_bytes(path));
    message(7, &body)
}

/// What the device did with one raw message.
#[derive(Debug)]
enum Outcome {
    Reply(Vec<u8>),
    Stopped(ChannelError),
}

fn exchange(ch: &mut GuestChannel, msg: &[u8]) -> Outcome {
    let exit = ch.exit_handle();
    let got = block_on(exit.race(async {
        ch.endpoint.send_data(msg).await.unwrap();
        ch.endpoint.recv_pipe(MAX_MESSAGE_LEN).await.unwrap()
    }));
    match got {
        Some(PipeMessage::Data(reply)) => Outcome::Reply(reply),
        Some(other) => panic!("host sent {other:?}"),
        None => Outcome::Stopped(block_on(ch.wait_device_end()).unwrap_err()),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn negotiate(ch: &mut GuestChannel) {
    match exchange(ch, &version(0x0001_0000)) {
        Outcome::Reply(r) => assert_eq!(r, message(2, &0u32.to_le_bytes())),
        other => panic!("{other:?}"),
    }
}

/// Expects a reply of `reply_type` with `status`.
fn expect_status(outcome: Outcome, reply_type: u32, status: u32) {
    match outcome {
        Outcome::Reply(r) => {
            assert_eq!(u32_at(&r, 0), reply_type, "reply type");
            assert_eq!(u32_at(&r, 8), status, "status");
        }
        Outcome::Stopped(e) => panic!("channel stopped: {e}"),
    }
}

fn expect_stop(outcome: Outcome, check: impl Fn(&ProtocolError) -> bool) {
    match outcome {
        Outcome::Stopped(e) => {
            let p = e
                .protocol_error::<ProtocolError>()
                .unwrap_or_else(|| panic!("not a protocol error: {e}"));
            assert!(check(p), "unexpected {p:?}");
        }
        Outcome::Reply(r) => panic!("replied {r:?} instead of stopping"),
    }
}

/// After bad input, a fresh open of the channel serves a file again.
fn fresh_open_works(vm: &LoopbackVm, dev: &Arc<VmbfsDevice>) {
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm.clone(), dev.clone()), true);
    let data = block_on(client.read_all("dir/file")).unwrap();
    assert_eq!(data, b"0123456789".repeat(3000));
    block_on(client.close()).unwrap();
}

fn setup(ch: &mut GuestChannel, handle: u32, range: GpaRange) {
    block_on(ch.endpoint.send_setup(handle, true, &[range])).unwrap();
}

/// What the device must do with one bad message.
enum Expect {
    /// Answer with this reply type and status.
    Status { reply_type: u32, status: u32 },
    /// Stop the channel with a protocol error this accepts.
    Stop(fn(&ProtocolError) -> bool),
}

/// One bad-input case: a raw guest (negotiated or not) optionally
/// prepares the channel, sends each message and checks what came back;
/// then `after` runs, every message must have been counted as `kind`, and
/// a fresh open must serve a file again.
struct BadRow {
    name: &'static str,
    negotiated: bool,
    kind: BadInput,
    prepare: fn(&mut GuestChannel),
    exchanges: Vec<(Vec<u8>, Expect)>,
    after: fn(&mut GuestChannel),
}

impl BadRow {
    fn new(name: &'static str, negotiated: bool, kind: BadInput) -> Self {
        Self {
            name,
            negotiated,
            kind,
            prepare: |_| {},
            exchanges: Vec::new(),
            after: |_| {},
        }
    }

    fn prepare(mut self, prepare: fn(&mut GuestChannel)) -> Self {
        self.prepare = prepare;
        self
    }

    fn status(mut self, msg: Vec<u8>, reply_type: u32, status: u32) -> Self {
        let expect = Expect::Status { reply_type, status };
        self.exchanges.push((msg, expect));
        self
    }

    fn stop(mut self, msg: Vec<u8>, check: fn(&ProtocolError) -> bool) -> Self {
        self.exchanges.push((msg, Expect::Stop(check)));
        self
    }

    fn after(mut self, after: fn(&mut GuestChannel)) -> Self {
        self.after = after;
        self
    }

    fn run(self) {
        let vm = vm();
        let dev = device(sample_tree(), true);
        let mut ch = raw_open(&vm, &dev);
        if self.negotiated {
            negotiate(&mut ch);
        }
        (self.prepare)(&mut ch);
        let count = self.exchanges.len() as u64;
        for (msg, expect) in self.exchanges {
            let outcome = exchange(&mut ch, &msg);
            match expect {
                Expect::Status { reply_type, status } => expect_status(outcome, reply_type, status),
                Expect::Stop(check) => expect_stop(outcome, check),
            }
        }
        (self.after)(&mut ch);
        let kind = self.kind;
        assert_eq!(dev.stats().protocol.count(kind), count, "{kind:?} counted");
        let _ = block_on(ch.close());
        fresh_open_works(&vm, &dev);
    }
}

fn odd_length_path() -> Vec<u8> {
    let mut p = path_bytes("dir");
    p.push(b'x');
    p
}

fn lone_surrogate_path() -> Vec<u8> {
    let mut p = path_bytes("dir\\");
    p.extend(0xD800u16.to_le_bytes());
    p
}

fn bad_rows() -> Vec<BadRow> {
    let file = || path_bytes("dir\\file");
    vec![
        BadRow::new("message_shorter_than_header", true, BadInput::ShortHeader)
            .stop(vec![3, 0, 0], |e| {
                matches!(e, ProtocolError::ShortHeader { len: 3 })
            }),
        BadRow::new("message_shorter_than_body", true, BadInput::TruncatedBody).status(
            message(5, &[1, 0, 0, 0]),
            6,
            3,
        ),
        BadRow::new("unknown_type", true, BadInput::UnknownType).stop(message(99, &[]), |e| {
            matches!(e, ProtocolError::UnknownType { message_type: 99 })
        }),
        BadRow::new(
            "response_type_from_guest",
            true,
            BadInput::ResponseFromGuest,
        )
        .stop(message(6, &[0; 4]), |e| {
            matches!(e, ProtocolError::ResponseFromGuest { message_type: 6 })
        }),
        BadRow::new(
            "request_before_version",
            false,
            BadInput::RequestBeforeVersion,
        )
        .stop(info(&path_bytes("dir")), |e| {
            matches!(e, ProtocolError::RequestBeforeVersion { message_type: 3 })
        }),
        BadRow::new(
            "second_version_after_ready",
            true,
            BadInput::RepeatedVersion,
        )
        .stop(version(0x0001_0000), |e| {
            matches!(e, ProtocolError::RepeatedVersion { .. })
        }),
        BadRow::new(
            "unsupported_version_then_supported",
            false,
            BadInput::UnsupportedVersion,
        )
        .status(version(0x0002_0000), 2, 1)
        .after(negotiate),
        BadRow::new("odd_length_path", true, BadInput::OddLengthPath).status(
            info(&odd_length_path()),
            4,
            3,
        ),
        BadRow::new("embedded_nul", true, BadInput::EmbeddedNul).status(
            info(&path_bytes("dir\0file")),
            4,
            3,
        ),
        BadRow::new(
            "invalid_utf16_lone_surrogate",
            true,
            BadInput::UnpairedSurrogate,
        )
        .status(read(10, 0, &lone_surrogate_path()), 6, 3),
        BadRow::new(
            "path_longer_than_message_allows",
            true,
            BadInput::MessageTooLong,
        )
        .stop(info(&path_bytes(&"a".repeat(6200))), |e| {
            matches!(e, ProtocolError::MessageTooLong { .. })
        }),
        BadRow::new("byte_count_above_limit", true, BadInput::ByteCountTooLarge).status(
            read(MAX_READ_SIZE + 1, 0, &file()),
            6,
            3,
        ),
        BadRow::new(
            "offset_plus_byte_count_overflow",
            true,
            BadInput::OffsetOverflow,
        )
        .status(read(16, u64::MAX - 3, &file()), 6, 3),
        BadRow::new("read_of_directory", true, BadInput::ReadOfDirectory).status(
            read(16, 0, &path_bytes("dir")),
            6,
            3,
        ),
        BadRow::new(
            "rdma_without_registered_handle",
            true,
            BadInput::UnknownHandle,
        )
        .status(rdma(1, 100, 0, 0, "dir\\file"), 8, 3),
        BadRow::new(
            "rdma_range_smaller_than_byte_count",
            true,
            BadInput::RdmaRangeTooSmall,
        )
        .prepare(|ch| {
            let range = ch.vm().pages().alloc_range(4096).unwrap();
            setup(ch, 1, range);
        })
        .status(rdma(1, 4097, 0, 0, "dir\\file"), 8, 3)
        // token_offset pushes a fitting count past the end too.
        .status(rdma(1, 4096, 0, 1, "dir\\file"), 8, 3),
        BadRow::new(
            "rdma_range_outside_guest_memory",
            true,
            BadInput::RdmaOutsideGuestMemory,
        )
        .prepare(|ch| {
            let pages = ch.vm().memory().page_count();
            let range = GpaRange::new(8192, 0, vec![pages - 1, pages]).unwrap();
            setup(ch, 1, range);
        })
        .status(rdma(1, 8192, 0, 0, "dir\\file"), 8, 3),
        BadRow::new(
            "teardown_of_unknown_handle",
            true,
            BadInput::UnknownTeardown,
        )
        .prepare(|ch| block_on(ch.endpoint.send_teardown(42)).unwrap())
        .stop(info(&[]), |e| {
            matches!(e, ProtocolError::UnknownTeardown { handle: 42 })
        }),
    ]
}

/// Every row runs, even after a failing one; the failure names each
/// failing row with its panic message.
#[test]
fn bad_input_is_answered_or_stops_and_a_fresh_open_works() {
    let failures: Vec<String> = bad_rows()
        .into_iter()
        .filter_map(|row| {
            let name = row.name;
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
fn bad_pipe_frame_and_non_pipe_packet_stop_the_channel() {
    let vm = vm();
    let dev = device(sample_tree(), true);
    for packet in [
        // A pipe header claiming more bytes than the packet carries.
        vec![1, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3, 4],
        // A pipe type that is not valid on the wire.
        vec![2, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut ch = raw_open(&vm, &dev);
        negotiate(&mut ch);
        block_on(ch.endpoint.write(&OutgoingPacket::in_band(&packet))).unwrap();
        let err = block_on(ch.wait_device_end()).unwrap_err();
        assert!(matches!(err, ChannelError::Pipe { .. }), "{err}");
        let _ = block_on(ch.close());
    }
    assert_eq!(dev.stats().transport_errors, 2);
    fresh_open_works(&vm, &dev);
}

#[test]
fn flood_without_reading_replies_is_held_back_then_resumes() {
    let vm = vm();
    let dev = device(sample_tree(), true);
    let mut ch = raw_open(&vm, &dev);
    negotiate(&mut ch);
    let base = dev.stats().messages;
    let requests: Vec<Vec<u8>> = (0..2000)
        .map(|i| {
            let path = if i % 2 == 0 { "dir\\file" } else { "dir" };
            info(&path_bytes(path))
        })
        .collect();
    let header = |m: &[u8]| {
        let mut h = 1u32.to_le_bytes().to_vec();
        h.extend((m.len() as u32).to_le_bytes());
        h
    };
    // Phase 1: write until the guest→host ring is full, reading nothing.
    let mut sent = 0;
    loop {
        let h = header(&requests[sent]);
        let packet = OutgoingPacket::in_band(&requests[sent]).with_prefix(&h);
        if ch.endpoint.try_write(&packet).unwrap() {
            sent += 1;
            continue;
        }
        // Full: wait until the device has stopped taking more.
        let mut last = dev.stats().messages;
        loop {
            std::thread::sleep(Duration::from_millis(30));
            let now = dev.stats().messages;
            if now == last {
                break;
            }
            last = now;
        }
        if !ch.endpoint.try_write(&packet).unwrap() {
            break;
        }
        sent += 1;
    }
    let stalled = dev.stats();
    let consumed = stalled.messages - base;
    assert!(stalled.backpressure_waits > 0);
    assert!(
        (consumed as usize) < sent,
        "device consumed {consumed} of {sent} with no reader"
    );
    // What it consumed is what fits the host→guest ring beside one
    // reserved worst-case reply: bounded by the ring, not by the flood.
    let reply_ring_len = vmbdev_ring::pipe_data_ring_len(24) as u64;
    assert!(consumed * reply_ring_len <= 4 * 4096, "consumed {consumed}");
    assert!(ch.endpoint.reader.available().unwrap() > 0);

    // Phase 2: read replies (in order) while sending the rest.
    let mut received = 0;
    block_on(async {
        while received < requests.len() {
            while sent < requests.len() {
                let h = header(&requests[sent]);
                let packet = OutgoingPacket::in_band(&requests[sent]).with_prefix(&h);
                if !ch.endpoint.try_write(&packet).unwrap() {
                    break;
                }
                sent += 1;
            }
            let reply = match ch.endpoint.recv_pipe(MAX_MESSAGE_LEN).await.unwrap() {
                PipeMessage::Data(r) => r,
                other => panic!("{other:?}"),
            };
            assert_eq!(u32_at(&reply, 0), 4);
            assert_eq!(u32_at(&reply, 8), 0);
            let is_dir = u32_at(&reply, 12) & 1 == 1;
            assert_eq!(is_dir, received % 2 == 1, "reply {received} out of order");
            received += 1;
        }
    });
    assert_eq!(dev.stats().messages - base, requests.len() as u64);
    block_on(ch.close()).unwrap();
}

#[test]
fn save_and_restore_in_the_middle_of_a_session() {
    let (tree, files) = random_tree(3);
    let path = "EFI/Microsoft/Boot/big.bin";
    let data = &files[path];
    let first = VmbfsDevice::new(VmbfsConfig {
        tree: tree.clone(),
        rdma_enabled: true,
    });
    let first: Arc<VmbfsDevice> = Arc::new(first);
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), first.clone()), true);
    let half = data.len() / 2;
    let mut got = block_on(client.read(path, 0, half)).unwrap();
    // The client's last RDMA buffer is still registered (its teardown is
    // deferred): the saved state must carry it.
    block_on(client.suspend_device()).unwrap();
    let saved = first.save().unwrap();
    let opens_before = first.stats().opens;

    let second = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree,
        rdma_enabled: true,
    }));
    second.restore(&saved).unwrap();
    client.resume_device(second.clone()).unwrap();
    got.extend(block_on(client.read(path, half as u64, data.len())).unwrap());
    assert!(got == *data);
    let stats = second.stats();
    assert_eq!(stats.protocol.total_bad_input(), 0);
    assert_eq!(stats.protocol.channel_stops, 0);
    // No renegotiation: the restored device saw no VERSION_REQUEST, so a
    // second one would be a violation; and it served the rest.
    assert!(stats.rdma_bytes > 0);
    assert_eq!(first.stats().opens, opens_before);
    assert!(
        second.restore(&saved[..saved.len() - 1]).is_err(),
        "truncated saved state refused"
    );
    assert!(second.save().is_err(), "save refused while running");
    block_on(client.close()).unwrap();
}

#[test]
fn restore_without_the_rdma_handle_makes_the_deferred_teardown_a_violation() {
    // The check above is only meaningful if a host without the handle
    // would stop: prove it with a device restored from a fresh state.
    let (tree, files) = random_tree(4);
    let path = "EFI/Microsoft/Boot/big.bin";
    let first = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree: tree.clone(),
        rdma_enabled: true,
    }));
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), first.clone()), true);
    let half = files[path].len() / 2;
    block_on(client.read(path, 0, half)).unwrap();
    block_on(client.suspend_device()).unwrap();
    let blank = encode_saved_state(&VmbfsSavedState {
        state: ProtocolState::Ready {
            version: 0x0001_0000,
        },
        gpa_direct: Vec::new(),
    });
    let second = Arc::new(VmbfsDevice::new(VmbfsConfig {
        tree,
        rdma_enabled: true,
    }));
    second.restore(&blank).unwrap();
    client.resume_device(second.clone()).unwrap();
    let err = block_on(client.read(path, half as u64, 100)).unwrap_err();
    assert!(matches!(err, VmbfsClientError::DeviceStopped(_)), "{err}");
    let stats = second.stats().protocol;
    assert_eq!(stats.channel_stops, 1);
    assert_eq!(stats.count(BadInput::UnknownTeardown), 1);
}

#[test]
fn not_found_and_directory_errors_through_the_client() {
    let dev = device(sample_tree(), true);
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), dev), true);
    block_on(async {
        let err = client.read_all("missing").await.unwrap_err();
        assert!(matches!(
            err,
            VmbfsClientError::Protocol(ClientError::NotFound)
        ));
        let err = client.read_all("dir/file/below").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let err = client.read_all("dir").await.unwrap_err();
        assert!(matches!(err, VmbfsClientError::IsADirectory(_)), "{err}");
        assert_eq!(
            client.read("dir/file", 29_995, 100).await.unwrap(),
            b"56789".to_vec()
        );
    });
}

#[test]
fn bus_contract_rules() {
    let vm = vm();
    let dev = device(sample_tree(), true);
    let dyn_dev: Arc<dyn VmbusDevice> = dev.clone();
    let offer = dyn_dev.offer();
    assert_eq!(offer.interface_id, vmbdev_protocol::vmbfs::INTERFACE_ID);
    assert_eq!(offer.pipe_mode, vmbdev_device::bus::PipeMode::Message);
    assert_eq!(offer.max_sub_channels, 0);
    assert!(matches!(
        vm.open_channel(dyn_dev.clone(), 1, RingShape::from_offer(&*dyn_dev)),
        Err(vmbdev_loopback::vm::VmError::Bus(
            vmbdev_device::bus::BusError::NoSuchChannel { index: 1, .. }
        ))
    ));
    assert!(matches!(
        dyn_dev.close(0),
        Err(vmbdev_device::bus::BusError::NotOpen(0))
    ));
    let mut ch = raw_open(&vm, &dev);
    assert!(dev.is_running());
    assert!(matches!(
        vm.open_channel(dyn_dev.clone(), 0, RingShape::from_offer(&*dyn_dev)),
        Err(vmbdev_loopback::vm::VmError::Bus(
            vmbdev_device::bus::BusError::AlreadyOpen(0)
        ))
    ));
    negotiate(&mut ch);
    assert!(dyn_dev.save().is_err(), "save while running");
    // Close ends the task with Ok; the negotiated state is saved.
    block_on(ch.close()).unwrap();
    assert!(!dev.is_running());
    let saved = dyn_dev.save().unwrap();
    let decoded = vmbdev_device::vmbfs::decode_saved_state(&saved).unwrap();
    assert_eq!(
        decoded.state,
        ProtocolState::Ready {
            version: 0x0001_0000
        }
    );
    // A fresh open starts clean: a file request before VERSION stops it.
    let mut ch = raw_open(&vm, &dev);
    expect_stop(exchange(&mut ch, &info(&[])), |e| {
        matches!(e, ProtocolError::RequestBeforeVersion { .. })
    });
}

/// A tree whose reads block until released.
struct GatedTree {
    inner: Arc<dyn FileTree>,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl FileTree for GatedTree {
    fn lookup(
        &self,
        path: &vmbdev_fs::TreePath,
    ) -> Result<vmbdev_fs::Metadata, vmbdev_fs::TreeError> {
        self.inner.lookup(path)
    }

    fn read_at(
        &self,
        path: &vmbdev_fs::TreePath,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, vmbdev_fs::TreeError> {
        let _ = self.gate.lock().unwrap().recv();
        self.inner.read_at(path, offset, buf)
    }

    fn read_dir(
        &self,
        path: &vmbdev_fs::TreePath,
    ) -> Result<Vec<(String, vmbdev_fs::Metadata)>, vmbdev_fs::TreeError> {
        self.inner.read_dir(path)
    }
}

#[test]
fn a_blocked_read_does_not_stall_another_channel() {
    // One executor thread runs both devices' tasks: only the blocking pool
    // keeps the stuck read from stalling the other channel.
    let vm = LoopbackVm::new(&VmConfig {
        executor_threads: 1,
        ..VmConfig::default()
    })
    .unwrap();
    let (release, gate) = std::sync::mpsc::channel();
    let slow = device(
        Arc::new(GatedTree {
            inner: sample_tree(),
            gate: std::sync::Mutex::new(gate),
        }),
        false,
    );
    let fast = device(sample_tree(), false);
    let slow_vm = vm.clone();
    let slow_stats = slow.clone();
    let slow_reader = std::thread::spawn(move || {
        let mut client = VmbfsClient::new(VmbfsLoopback::new(slow_vm, slow), false);
        block_on(client.read("dir/file", 0, 10)).unwrap()
    });
    // Wait until the slow device has taken the READ_FILE (version, root
    // info, file info, read) and is stuck inside it.
    while slow_stats.stats().messages < 4 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut client = VmbfsClient::new(VmbfsLoopback::new(vm.clone(), fast), false);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let fast_reader = std::thread::spawn(move || {
        let data = block_on(client.read_all("dir/file")).unwrap();
        done_tx.send(data).unwrap();
    });
    let data = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the fast channel is stalled behind the blocked read");
    assert_eq!(data, b"0123456789".repeat(3000));
    fast_reader.join().unwrap();
    assert!(!slow_reader.is_finished(), "the slow read is still blocked");
    release.send(()).unwrap();
    assert_eq!(slow_reader.join().unwrap(), b"0123456789".to_vec());
}

#[test]
fn the_host_never_sends_completions_even_when_asked() {
    let vm = vm();
    let dev = device(sample_tree(), true);
    let mut ch = raw_open(&vm, &dev);
    let pipe = |m: &[u8]| {
        let mut p = 1u32.to_le_bytes().to_vec();
        p.extend((m.len() as u32).to_le_bytes());
        p.extend_from_slice(m);
        p
    };
    let requests = [
        pipe(&version(0x0001_0000)),
        pipe(&info(&path_bytes("dir\\file"))),
    ];
    for (i, payload) in requests.iter().enumerate() {
        // Completion requested, with a transaction id: still exactly one
        // in-band DATA reply with transaction id 0 and no flags.
        block_on(
            ch.endpoint
                .write(&OutgoingPacket::request(0x1234 + i as u64, payload)),
        )
        .unwrap();
        let packet = block_on(ch.endpoint.read()).unwrap();
        assert_eq!(packet.kind, vmbdev_ring::PacketKind::InBand);
        assert_eq!(packet.transaction_id, 0);
        assert!(!packet.completion_requested);
        let PipeMessage::Data(reply) = PipeMessage::from_packet(&packet, MAX_MESSAGE_LEN).unwrap()
        else {
            panic!("not a DATA message");
        };
        assert_eq!(u32_at(&reply, 0), [2, 4][i]);
        assert_eq!(u32_at(&reply, 8), 0);
    }
    // Nothing else was sent by the time the task has stopped.
    block_on(ch.suspend_device()).unwrap();
    assert_eq!(ch.endpoint.reader.available().unwrap(), 0);
    assert_eq!(dev.stats().messages, 2);
}

#[test]
fn inline_io_policy_serves_the_same_bytes() {
    let (tree, files) = random_tree(5);
    let dev = Arc::new(
        VmbfsDevice::new(VmbfsConfig {
            tree,
            rdma_enabled: true,
        })
        .with_io_policy(vmbdev_device::vmbfs::IoPolicy::Inline),
    );
    for use_rdma in [false, true] {
        let mut client = VmbfsClient::new(VmbfsLoopback::new(vm(), dev.clone()), use_rdma);
        for (path, data) in files.iter().filter(|(_, d)| d.len() < 4 * MIB) {
            assert!(block_on(client.read_all(path)).unwrap() == *data, "{path}");
        }
        block_on(client.close()).unwrap();
    }
}
