//! A vmbfs session over a real loopback ring: the guest sends arbitrary
//! sequences of well-formed messages with arbitrary fields, raw messages,
//! raw pipe payloads, pipe SETUP/TEARDOWN_GPA_DIRECT with arbitrary
//! ranges, raw ring bytes and control-page tampering, and reopens the
//! channel (fresh rings, host reset). The target plays the device glue:
//! reserve reply space, read one packet, unframe the pipe message, feed
//! `VmbfsHost::handle`, send the reply.
//!
//! Invariants: no panic; every reply is at most 12288 bytes, of the type
//! that answers the request, of the exact size the protocol fixes, with a
//! status the protocol defines; READ never answers SUCCESS with no data for
//! a non-zero byte count; one reply per message and none for pipe control;
//! after a protocol error every input fails until reset. For requests
//! naming files of the in-memory tree, the answer (status, size, data,
//! RDMA bytes in guest memory) matches a model of vmbfs.md. With no raw
//! bytes or tampering since the last reopen, the guest receives exactly the
//! replies the host sent, in order.

use crate::{Outcome, decode_and_run};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::channel::{Channel, Field, RangeSpec, WireRange};
use crate::{le32, le64};
use arbitrary::Arbitrary;
use vmbdev_device::vmbfs::{ProtocolError, VmbfsConfig, VmbfsHost, VmbfsInput};
use vmbdev_fs::MemoryTree;
use vmbdev_protocol::vmbfs::{MAX_MESSAGE_SIZE, MAX_READ_SIZE, VERSION_WIN10};
use vmbdev_ring::pipe::{
    MAX_MESSAGE_LEN, PIPE_DATA, PIPE_SETUP_GPA_DIRECT, PIPE_TEARDOWN_GPA_DIRECT,
};
use vmbdev_ring::{GpaRange, OutgoingPacket, PipeMessage, pipe_data_ring_len};

/// Files of the served tree: path and length (content from `content`).
const FILES: [(&str, usize); 4] = [
    ("EFI/BOOT/BOOTX64.EFI", 20000),
    ("imc.hiv", 4097),
    ("empty.bin", 0),
    ("a/b/c.txt", 12276),
];
const DIRS: [&str; 5] = ["EFI", "EFI/BOOT", "a", "a/b", "emptydir"];
const MISSING: [&str; 3] = ["missing", "EFI/nothing.efi", "imc.hiv/x"];

fn make_content(file: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) + file * 7 + i / 251) as u8)
        .collect()
}

/// File contents, built once (per-byte loops are slow under coverage
/// instrumentation).
fn content(file: usize) -> &'static [u8] {
    static CONTENT: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    &CONTENT.get_or_init(|| {
        FILES
            .iter()
            .enumerate()
            .map(|(i, (_, len))| make_content(i, *len))
            .collect()
    })[file]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(usize),
    Dir,
    Missing,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Style {
    Plain,
    LeadingBackslash,
    ForwardSlashes,
    TrailingNul,
    DotDots,
    Doubled,
}

#[derive(Debug, Arbitrary)]
enum PathSpec {
    Known(u8, Style),
    Utf16(Vec<u16>),
    Bytes(Vec<u8>),
}

impl PathSpec {
    /// The path bytes and, for a known entry, what it names.
    fn encode(&self) -> (Vec<u8>, Option<Entry>) {
        match self {
            PathSpec::Known(i, style) => {
                let i = usize::from(*i) % (FILES.len() + DIRS.len() + MISSING.len() + 1);
                let (name, entry) = if i < FILES.len() {
                    (FILES[i].0, Entry::File(i))
                } else if i < FILES.len() + DIRS.len() {
                    (DIRS[i - FILES.len()], Entry::Dir)
                } else if i < FILES.len() + DIRS.len() + MISSING.len() {
                    (MISSING[i - FILES.len() - DIRS.len()], Entry::Missing)
                } else {
                    ("", Entry::Dir)
                };
                let text = match style {
                    Style::Plain => name.replace('/', "\\"),
                    Style::LeadingBackslash => format!("\\{}", name.replace('/', "\\")),
                    Style::ForwardSlashes => name.to_string(),
                    Style::TrailingNul => format!("\\{}\0", name.replace('/', "\\")),
                    Style::DotDots => format!("..\\..\\{}", name.replace('/', "\\.\\")),
                    Style::Doubled => format!("\\\\{}", name.replace('/', "\\\\")),
                };
                (utf16(&text), Some(entry))
            }
            PathSpec::Utf16(units) => (
                units
                    .iter()
                    .take(6200)
                    .flat_map(|u| u.to_le_bytes())
                    .collect(),
                None,
            ),
            PathSpec::Bytes(b) => (b.iter().take(12400).copied().collect(), None),
        }
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[derive(Debug, Arbitrary)]
enum Action {
    Version(Option<u32>),
    FileInfo(PathSpec),
    Read {
        path: PathSpec,
        offset: u64,
        small_offset: Option<u16>,
        byte_count: u32,
        small_count: bool,
    },
    ReadRdma {
        handle: u8,
        path: PathSpec,
        file_offset: u64,
        small_offset: Option<u16>,
        byte_count: u32,
        small_count: bool,
        token_offset: u64,
        small_token: Option<u16>,
    },
    RawMessage {
        message_type: u32,
        small_type: bool,
        reserved: u32,
        body: Vec<u8>,
    },
    RawPipe(Vec<u8>),
    RawPacket {
        bytes: Vec<u8>,
        advance8: u16,
    },
    Setup {
        handle: u8,
        writable: bool,
        ranges: Vec<RangeSpec>,
        trailing: Vec<u8>,
    },
    Teardown(u8),
    Tamper(Field, u32),
    Reopen,
    Drain,
    Pump,
}

#[derive(Debug, Arbitrary)]
struct Input {
    rdma_enabled: bool,
    scatter: bool,
    actions: Vec<Action>,
}

/// What a request naming a known entry must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Info(Entry),
    Read {
        entry: Entry,
        offset: u64,
        count: u32,
    },
    Rdma {
        entry: Entry,
        handle: u32,
        /// Which registration of `handle` the request named: a reply
        /// checked after the guest tore the buffer down and registered
        /// the handle again must not be compared with the new pages.
        /// `None`: no registration, or not known which (the same request
        /// bytes were sent under two registrations).
        epoch: Option<u64>,
        offset: u64,
        count: u32,
        token: u64,
    },
}

struct Session {
    channel: Channel,
    host: VmbfsHost,
    rdma_enabled: bool,
    /// Expectations by exact message bytes.
    oracle: HashMap<Vec<u8>, Expect>,
    /// Buffers the guest registered, as it believes (valid ranges only).
    buffers: BTreeMap<u32, Vec<GpaRange>>,
    /// The registration each buffer handle holds now (bumped on every
    /// registration).
    epochs: BTreeMap<u32, u64>,
    next_epoch: u64,
    /// Replies sent and not yet received by the guest.
    sent: VecDeque<Vec<u8>>,
}

fn file_len(entry: Entry) -> Option<usize> {
    match entry {
        Entry::File(i) => Some(FILES[i].1),
        _ => None,
    }
}

impl Session {
    fn send_message(&mut self, msg: Vec<u8>, expect: Option<Expect>) {
        if let Some(mut e) = expect {
            // The same request bytes sent again under another registration
            // of the handle (torn down and set up anew in between): the
            // oracle, keyed by bytes, cannot tell which registration a reply
            // used, so neither reply's guest bytes are compared.
            if let (Some(Expect::Rdma { epoch: earlier, .. }), Expect::Rdma { epoch, .. }) =
                (self.oracle.get(&msg), &mut e)
                && earlier != epoch
            {
                *epoch = None;
            }
            self.oracle.insert(msg.clone(), e);
        }
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&PIPE_DATA.to_le_bytes());
        header[4..].copy_from_slice(&(msg.len() as u32).to_le_bytes());
        let packet = OutgoingPacket::in_band(&msg).with_prefix(&header);
        if !self.channel.guest_send(&packet) {
            // The ring is full: let the host catch up and try once more.
            self.pump();
            self.drain();
            self.channel.guest_send(&packet);
        }
    }

    fn send_pipe(&mut self, payload: &[u8]) {
        if !self.channel.guest_send(&OutgoingPacket::in_band(payload)) {
            self.pump();
            self.drain();
            self.channel.guest_send(&OutgoingPacket::in_band(payload));
        }
    }

    /// The host glue: handle messages while reply space is reserved.
    fn pump(&mut self) {
        for _ in 0..64 {
            if self.channel.dead {
                return;
            }
            let host = &mut self.channel.lb.host;
            match host.writer.free() {
                Ok(free) if free as usize > pipe_data_ring_len(VmbfsHost::max_reply_size()) => {}
                Ok(_) => return,
                Err(_) => {
                    self.channel.dead = true;
                    return;
                }
            }
            let packet = match host.try_read() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(_) => {
                    self.channel.dead = true;
                    return;
                }
            };
            let message = match PipeMessage::from_packet(&packet, MAX_MESSAGE_LEN) {
                Ok(m) => m,
                Err(_) => {
                    self.channel.dead = true;
                    return;
                }
            };
            let (input, request) = match &message {
                PipeMessage::Data(d) => (VmbfsInput::Message(d), Some(d.clone())),
                PipeMessage::SetupGpaDirect {
                    handle,
                    writable,
                    ranges,
                } => (
                    VmbfsInput::SetupGpaDirect {
                        handle: *handle,
                        writable: *writable,
                        ranges: ranges.clone(),
                    },
                    None,
                ),
                PipeMessage::TeardownGpaDirect { handle } => {
                    (VmbfsInput::TeardownGpaDirect { handle: *handle }, None)
                }
            };
            match self.host.handle(input) {
                Ok(reply) => {
                    let Some(request) = request else {
                        assert!(reply.is_none(), "reply to a pipe control message");
                        continue;
                    };
                    let reply = reply.expect("one reply per message");
                    let bytes = reply.into_bytes();
                    self.check_reply(&request, &bytes);
                    let mut header = [0u8; 8];
                    header[..4].copy_from_slice(&PIPE_DATA.to_le_bytes());
                    header[4..].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
                    let packet = OutgoingPacket::in_band(&bytes).with_prefix(&header);
                    match self.channel.lb.host.try_write(&packet) {
                        Ok(true) => self.sent.push_back(bytes),
                        Ok(false) | Err(_) => {
                            assert!(self.channel.tampered, "reserved reply space vanished");
                            self.channel.dead = true;
                            return;
                        }
                    }
                }
                Err(e) => {
                    assert_ne!(e, ProtocolError::Stopped, "input after a stop was taken");
                    let again = self
                        .host
                        .handle(VmbfsInput::TeardownGpaDirect { handle: 0 });
                    assert_eq!(
                        again,
                        Err(ProtocolError::Stopped),
                        "stopped host took input"
                    );
                    self.channel.dead = true;
                    return;
                }
            }
        }
    }

    /// The guest reads every reply; with a clean ring they are exactly
    /// the ones sent, in order.
    fn drain(&mut self) {
        for _ in 0..64 {
            let packet = match self.channel.lb.guest.try_read() {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => return,
            };
            if self.channel.tampered {
                continue;
            }
            let message = PipeMessage::from_packet(&packet, MAX_MESSAGE_LEN)
                .expect("host sent a well-framed pipe message");
            let expected = self
                .sent
                .pop_front()
                .expect("guest received an unsent reply");
            assert_eq!(
                message,
                PipeMessage::Data(expected),
                "reply changed in transit"
            );
        }
    }

    fn check_reply(&self, request: &[u8], reply: &[u8]) {
        assert!(
            reply.len() <= MAX_MESSAGE_SIZE,
            "reply of {} bytes",
            reply.len()
        );
        let request_type = le32(request, 0);
        let reply_type = le32(reply, 0);
        let status = le32(reply, 8);
        assert_eq!(le32(reply, 4), 0, "reserved field");
        match request_type {
            1 => {
                assert_eq!((reply_type, reply.len()), (2, 12), "VERSION_RESPONSE shape");
                let supported = request.len() >= 12 && le32(request, 8) == VERSION_WIN10;
                assert_eq!(status, u32::from(!supported), "version status");
            }
            3 => {
                assert_eq!(
                    (reply_type, reply.len()),
                    (4, 24),
                    "GET_FILE_INFO_RESPONSE shape"
                );
                assert!(status <= 3);
                let flags = le32(reply, 12);
                assert_eq!(flags & !3, 0, "undefined info flags");
                if status != 0 {
                    assert_eq!((flags, le64(reply, 16)), (0, 0));
                }
                if flags & 1 != 0 {
                    assert_eq!(flags & 2, 0, "rdma on a directory");
                    assert_eq!(le64(reply, 16), 0, "directory size");
                }
                if !self.rdma_enabled {
                    assert_eq!(flags & 2, 0, "rdma_capable with RDMA off");
                }
            }
            5 => {
                assert_eq!(reply_type, 6, "READ_FILE_RESPONSE type");
                assert!(reply.len() >= 12 && status <= 3);
                let data = reply.len() - 12;
                if status != 0 {
                    assert_eq!(data, 0, "data with an error status");
                }
                if request.len() >= 20 {
                    let count = le32(request, 8);
                    assert!(data as u64 <= u64::from(count), "more data than asked");
                    if status == 0 && count > 0 {
                        assert!(data > 0, "SUCCESS with no data for a non-zero read");
                    }
                }
            }
            7 => {
                assert_eq!(
                    (reply_type, reply.len()),
                    (8, 16),
                    "READ_FILE_RDMA_RESPONSE shape"
                );
                assert!(status <= 3);
                let written = le32(reply, 12);
                if status != 0 {
                    assert_eq!(written, 0);
                }
                if request.len() >= 32 {
                    let count = le32(request, 12);
                    assert!(written <= count, "RDMA wrote more than asked");
                    if status == 0 && count > 0 {
                        assert!(written > 0, "RDMA SUCCESS with no data");
                    }
                }
            }
            other => panic!("reply {reply:?} to message type {other}"),
        }
        if let Some(expect) = self.oracle.get(request) {
            self.check_model(*expect, reply);
        }
    }

    fn check_model(&self, expect: Expect, reply: &[u8]) {
        let status = le32(reply, 8);
        match expect {
            Expect::Info(entry) => {
                let want = match entry {
                    Entry::Missing => (1, 0, 0),
                    Entry::Dir => (0, 1, 0),
                    Entry::File(i) => (0, if self.rdma_enabled { 2 } else { 0 }, FILES[i].1 as u64),
                };
                assert_eq!(
                    (status, le32(reply, 12), le64(reply, 16)),
                    want,
                    "{entry:?}"
                );
            }
            Expect::Read {
                entry,
                offset,
                count,
            } => {
                let (want_status, want_data) = model_read(entry, offset, count);
                assert_eq!(
                    status, want_status,
                    "READ status for {entry:?} @{offset} x{count}"
                );
                assert_eq!(&reply[12..], &want_data[..], "READ data");
            }
            Expect::Rdma {
                entry,
                handle,
                epoch,
                offset,
                count,
                token,
            } => {
                if status != 0 {
                    return;
                }
                let (want_status, want_data) = model_read(entry, offset, count.min(MAX_READ_SIZE));
                if count > MAX_READ_SIZE {
                    // The model's data is cut for size; compare the length.
                    assert_eq!(want_status, 0);
                } else {
                    assert_eq!(want_status, 0, "RDMA SUCCESS where a read fails");
                }
                let written = le32(reply, 12) as usize;
                let size = file_len(entry).expect("SUCCESS on a file") as u64;
                let expected_len = u64::from(count).min(size - offset.min(size));
                assert_eq!(written as u64, expected_len, "RDMA byte count");
                if self.channel.tampered || count > MAX_READ_SIZE {
                    return;
                }
                // The bytes landed in the guest buffer at the token offset
                // (if the guest still holds the registration it named).
                if epoch.is_some()
                    && self.epochs.get(&handle).copied() == epoch
                    && let Some(ranges) = self.buffers.get(&handle)
                {
                    let got = read_buffer(&self.channel, ranges, token, written);
                    if let Some(got) = got {
                        assert_eq!(got, want_data, "RDMA bytes in guest memory");
                    }
                }
            }
        }
    }
}

/// `len` bytes at `offset` of a buffer made of `ranges` end to end.
fn read_buffer(channel: &Channel, ranges: &[GpaRange], offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut base = 0u64;
    let end = offset + len as u64;
    for r in ranges {
        let r_end = base + u64::from(r.byte_count());
        let start = offset.max(base);
        let stop = end.min(r_end);
        if start < stop {
            let mut buf = vec![0u8; (stop - start) as usize];
            r.read_at(&channel.lb.memory, start - base, &mut buf).ok()?;
            out.extend_from_slice(&buf);
        }
        base = r_end;
    }
    (out.len() == len).then_some(out)
}

/// vmbfs.md's read rules for a known entry: status and data.
fn model_read(entry: Entry, offset: u64, count: u32) -> (u32, Vec<u8>) {
    if count > MAX_READ_SIZE || offset.checked_add(u64::from(count)).is_none() {
        return (3, Vec::new());
    }
    let file = match entry {
        Entry::Missing => return (1, Vec::new()),
        Entry::Dir => return (3, Vec::new()),
        Entry::File(i) => i,
    };
    let size = FILES[file].1 as u64;
    if count == 0 {
        return (0, Vec::new());
    }
    if offset >= size {
        return (2, Vec::new());
    }
    let end = (offset + u64::from(count)).min(size);
    (0, content(file)[offset as usize..end as usize].to_vec())
}

fn tree() -> Arc<MemoryTree> {
    static TREE: std::sync::OnceLock<Arc<MemoryTree>> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let mut builder = MemoryTree::builder();
        for (i, (path, _)) in FILES.iter().enumerate() {
            builder.add_file(path, content(i)).expect("file");
        }
        for dir in DIRS {
            builder.add_dir(dir).expect("dir");
        }
        Arc::new(builder.build())
    })
    .clone()
}

fn pick_offset(offset: u64, small: Option<u16>) -> u64 {
    small.map_or(offset, u64::from)
}

fn pick_count(count: u32, small: bool) -> u32 {
    if small { count % 0x4000 } else { count }
}

fn check(input: Input) {
    let channel = Channel::new(input.scatter, 48);
    let host = VmbfsHost::new(
        VmbfsConfig {
            tree: tree(),
            rdma_enabled: input.rdma_enabled,
        },
        channel.lb.memory.clone(),
    );
    let mut s = Session {
        channel,
        host,
        rdma_enabled: input.rdma_enabled,
        oracle: HashMap::new(),
        buffers: BTreeMap::new(),
        epochs: BTreeMap::new(),
        next_epoch: 0,
        sent: VecDeque::new(),
    };
    for action in input.actions.iter().take(96) {
        match action {
            Action::Version(v) => {
                let mut msg = vec![1, 0, 0, 0, 0, 0, 0, 0];
                msg.extend_from_slice(&v.unwrap_or(VERSION_WIN10).to_le_bytes());
                s.send_message(msg, None);
            }
            Action::FileInfo(path) => {
                let (path, entry) = path.encode();
                let mut msg = vec![3, 0, 0, 0, 0, 0, 0, 0];
                msg.extend_from_slice(&path);
                s.send_message(msg, entry.map(Expect::Info));
            }
            Action::Read {
                path,
                offset,
                small_offset,
                byte_count,
                small_count,
            } => {
                let (path, entry) = path.encode();
                let (offset, count) = (
                    pick_offset(*offset, *small_offset),
                    pick_count(*byte_count, *small_count),
                );
                let mut msg = vec![5, 0, 0, 0, 0, 0, 0, 0];
                msg.extend_from_slice(&count.to_le_bytes());
                msg.extend_from_slice(&offset.to_le_bytes());
                msg.extend_from_slice(&path);
                s.send_message(
                    msg,
                    entry.map(|entry| Expect::Read {
                        entry,
                        offset,
                        count,
                    }),
                );
            }
            Action::ReadRdma {
                handle,
                path,
                file_offset,
                small_offset,
                byte_count,
                small_count,
                token_offset,
                small_token,
            } => {
                let (path, entry) = path.encode();
                let handle = u32::from(*handle % 4);
                let offset = pick_offset(*file_offset, *small_offset);
                let count = pick_count(*byte_count, *small_count);
                let token = pick_offset(*token_offset, *small_token);
                let mut msg = vec![7, 0, 0, 0, 0, 0, 0, 0];
                msg.extend_from_slice(&handle.to_le_bytes());
                msg.extend_from_slice(&count.to_le_bytes());
                msg.extend_from_slice(&offset.to_le_bytes());
                msg.extend_from_slice(&token.to_le_bytes());
                msg.extend_from_slice(&path);
                let epoch = s.epochs.get(&handle).copied();
                let expect = entry.map(|entry| Expect::Rdma {
                    entry,
                    handle,
                    epoch,
                    offset,
                    count,
                    token,
                });
                s.send_message(msg, expect);
            }
            Action::RawMessage {
                message_type,
                small_type,
                reserved,
                body,
            } => {
                let ty = if *small_type {
                    message_type % 10
                } else {
                    *message_type
                };
                let mut msg = ty.to_le_bytes().to_vec();
                msg.extend_from_slice(&reserved.to_le_bytes());
                msg.extend(body.iter().take(12400));
                s.send_message(msg, None);
            }
            Action::RawPipe(bytes) => {
                s.channel.tampered = true;
                let payload: Vec<u8> = bytes.iter().take(12400).copied().collect();
                s.send_pipe(&payload);
            }
            Action::RawPacket { bytes, advance8 } => s.channel.raw_ring_bytes(bytes, *advance8),
            Action::Setup {
                handle,
                writable,
                ranges,
                trailing,
            } => {
                let handle = u32::from(*handle % 4);
                let wire: Vec<WireRange> = ranges
                    .iter()
                    .take(4)
                    .map(|r| s.channel.wire_range(r))
                    .collect();
                let mut body = handle.to_le_bytes().to_vec();
                body.push(u8::from(*writable));
                body.extend_from_slice(&(wire.len() as u32).to_le_bytes());
                for w in &wire {
                    body.extend_from_slice(&w.bytes);
                }
                body.extend(trailing.iter().take(8));
                let valid: Option<Vec<GpaRange>> = wire.iter().map(|w| w.range.clone()).collect();
                if trailing.is_empty()
                    && !wire.is_empty()
                    && let Some(valid) = valid
                    && let std::collections::btree_map::Entry::Vacant(slot) =
                        s.buffers.entry(handle)
                {
                    slot.insert(valid);
                    s.next_epoch += 1;
                    s.epochs.insert(handle, s.next_epoch);
                }
                let mut payload = PIPE_SETUP_GPA_DIRECT.to_le_bytes().to_vec();
                payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
                payload.extend_from_slice(&body);
                s.send_pipe(&payload);
            }
            Action::Teardown(handle) => {
                let handle = u32::from(*handle % 4);
                s.buffers.remove(&handle);
                s.epochs.remove(&handle);
                let mut payload = PIPE_TEARDOWN_GPA_DIRECT.to_le_bytes().to_vec();
                payload.extend_from_slice(&4u32.to_le_bytes());
                payload.extend_from_slice(&handle.to_le_bytes());
                s.send_pipe(&payload);
            }
            Action::Tamper(field, value) => s.channel.tamper(*field, *value),
            Action::Reopen => {
                s.channel.reopen();
                s.host.reset();
                s.sent.clear();
                s.buffers.clear();
                s.epochs.clear();
            }
            Action::Drain => s.drain(),
            Action::Pump => s.pump(),
        }
    }
    s.pump();
    s.drain();
    s.pump();
    s.drain();
}

/// Decodes `data` as the fuzz target's input (as libfuzzer-sys does) and
/// runs the checks on it; a failed check panics.
pub fn run(data: &[u8]) -> Outcome {
    decode_and_run::<Input>(data, check)
}
