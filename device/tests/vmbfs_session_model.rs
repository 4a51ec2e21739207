//! Property test of the vmbfs session: random sequences of guest input
//! (version requests with any version, GET_FILE_INFO, READ_FILE and
//! READ_FILE_RDMA with good and bad paths, counts and offsets, before and
//! after negotiation, pipe SETUP/TEARDOWN of GPA-direct buffers, response
//! and unknown types, short and overlong messages, resets and
//! save/restore between inputs) against a small model written from the
//! wire facts. Every reply is compared byte for byte, every stop by its
//! error, and guest memory after every RDMA read with the model's copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use vmbdev_device::vmbfs::{
    ProtocolError, ProtocolState, VmbfsConfig, VmbfsHost, VmbfsInput, decode_saved_state,
    encode_saved_state,
};
use vmbdev_fs::MemoryTree;
use vmbdev_ring::{GpaRange, GuestMemory};

const PAGE: usize = 4096;
const MEMORY_PAGES: u64 = 16;
/// A page number outside guest memory.
const OUTSIDE_PAGE: u64 = 1 << 20;

// Wire facts.
const WIN10: u32 = 0x0001_0000;
const MAX_MESSAGE: usize = 12288;
const MAX_READ: u32 = 12276;
const MAX_RDMA_READ: u32 = 7 * 1024 * 1024;
const MAX_BUFFERS: usize = 16;

const VERSION_REQUEST: u32 = 1;
const VERSION_RESPONSE: u32 = 2;
const GET_FILE_INFO: u32 = 3;
const GET_FILE_INFO_RESPONSE: u32 = 4;
const READ_FILE: u32 = 5;
const READ_FILE_RESPONSE: u32 = 6;
const READ_FILE_RDMA: u32 = 7;
const READ_FILE_RDMA_RESPONSE: u32 = 8;

const SUCCESS: u32 = 0;
const NOT_FOUND: u32 = 1;
const END_OF_FILE: u32 = 2;
const ERROR: u32 = 3;

/// The served files: path and size (contents from [`contents`]).
const FILES: [(&str, usize); 4] = [
    ("EFI/BOOT/BOOTX64.EFI", 5000),
    ("empty", 0),
    ("dir/big", 13000),
    ("dir/sub/one", 1),
];
/// Names that make up random paths: every served name, one that is
/// missing, and the components that resolve away.
const NAMES: [&str; 12] = [
    "EFI",
    "BOOT",
    "BOOTX64.EFI",
    "empty",
    "dir",
    "big",
    "sub",
    "one",
    "missing",
    ".",
    "..",
    "",
];

fn contents(index: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7).wrapping_add(index * 53) % 251) as u8)
        .collect()
}

fn tree() -> MemoryTree {
    let mut t = MemoryTree::builder();
    for (i, (path, len)) in FILES.iter().enumerate() {
        t.add_file(path, contents(i, *len)).unwrap();
    }
    t.build()
}

/// A path as the guest sends it.
#[derive(Debug, Clone)]
struct Path {
    components: Vec<&'static str>,
    /// Separator before each component (`\` or `/`), and a leading one.
    separators: Vec<bool>,
    leading: bool,
    /// Trailing NUL code units (stripped by the host).
    trailing_nuls: usize,
    damage: Damage,
}

/// How a path is broken, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    None,
    /// One byte more than a whole number of code units.
    OddLength,
    /// A NUL followed by another code unit.
    EmbeddedNul,
    /// A lone low surrogate at this code unit.
    Surrogate(usize),
}

impl Path {
    fn text(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 || self.leading {
                s.push(if self.separators.get(i).copied().unwrap_or(true) {
                    '\\'
                } else {
                    '/'
                });
            }
            s.push_str(c);
        }
        s
    }

    fn bytes(&self) -> Vec<u8> {
        let mut units: Vec<u16> = self.text().encode_utf16().collect();
        match self.damage {
            Damage::EmbeddedNul => units.extend([0, u16::from(b'x')]),
            Damage::Surrogate(at) => units.insert(at.min(units.len()), 0xDC00),
            Damage::None | Damage::OddLength => {}
        }
        units.extend(std::iter::repeat_n(0, self.trailing_nuls));
        let mut bytes: Vec<u8> = units.into_iter().flat_map(u16::to_le_bytes).collect();
        if self.damage == Damage::OddLength {
            bytes.push(b'A');
        }
        bytes
    }
}

#[derive(Debug, Clone)]
enum Input {
    Version {
        version: u32,
        /// Cut the message to this many bytes (under 12: truncated body).
        cut: Option<usize>,
        extra: usize,
    },
    Info(Path),
    Read {
        path: Path,
        offset: u64,
        count: u32,
        cut: Option<usize>,
    },
    Rdma {
        handle: u32,
        path: Path,
        offset: u64,
        count: u32,
        token: u64,
        cut: Option<usize>,
    },
    Setup {
        handle: u32,
        writable: bool,
        ranges: Vec<Range>,
    },
    Teardown(u32),
    /// A message of a type the guest may not send (responses, unknown).
    OtherType(u32, Vec<u8>),
    /// Fewer bytes than the 8-byte header.
    Short(Vec<u8>),
    /// A GET_FILE_INFO longer than a message may be.
    TooLong(usize),
    /// The channel is reopened.
    Reset,
    /// Save, encode, decode and restore into a fresh host.
    SaveRestore,
}

/// One range of a GPA-direct buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    byte_count: u32,
    byte_offset: u32,
    pages: Vec<u64>,
}

impl Range {
    fn gpa_range(&self) -> GpaRange {
        GpaRange::new(self.byte_count, self.byte_offset, self.pages.clone()).unwrap()
    }

    /// Guest pages touched by `len` bytes at `at` into the range, with the
    /// byte offset into the first page and the byte count per page.
    fn pieces(&self, at: u64, len: u64) -> Vec<(u64, usize, usize)> {
        let mut out = Vec::new();
        let mut pos = u64::from(self.byte_offset) + at;
        let end = pos + len;
        while pos < end {
            let page = self.pages[(pos / PAGE as u64) as usize];
            let in_page = (pos % PAGE as u64) as usize;
            let n = (PAGE - in_page).min((end - pos) as usize);
            out.push((page, in_page, n));
            pos += n as u64;
        }
        out
    }
}

fn message(message_type: u32, body: &[u8]) -> Vec<u8> {
    let mut m = message_type.to_le_bytes().to_vec();
    m.extend([0; 4]);
    m.extend_from_slice(body);
    m
}

fn cut(mut m: Vec<u8>, at: Option<usize>) -> Vec<u8> {
    if let Some(at) = at {
        m.truncate(at);
    }
    m
}

impl Input {
    fn message(&self) -> Option<Vec<u8>> {
        Some(match self {
            Input::Version {
                version,
                cut: at,
                extra,
            } => {
                let mut body = version.to_le_bytes().to_vec();
                body.extend(std::iter::repeat_n(0xEE, *extra));
                cut(message(VERSION_REQUEST, &body), *at)
            }
            Input::Info(path) => message(GET_FILE_INFO, &path.bytes()),
            Input::Read {
                path,
                offset,
                count,
                cut: at,
            } => {
                let mut body = count.to_le_bytes().to_vec();
                body.extend(offset.to_le_bytes());
                body.extend(path.bytes());
                cut(message(READ_FILE, &body), *at)
            }
            Input::Rdma {
                handle,
                path,
                offset,
                count,
                token,
                cut: at,
            } => {
                let mut body = handle.to_le_bytes().to_vec();
                body.extend(count.to_le_bytes());
                body.extend(offset.to_le_bytes());
                body.extend(token.to_le_bytes());
                body.extend(path.bytes());
                cut(message(READ_FILE_RDMA, &body), *at)
            }
            Input::OtherType(t, body) => message(*t, body),
            Input::Short(bytes) => bytes.clone(),
            Input::TooLong(len) => {
                let mut m = message(GET_FILE_INFO, &[]);
                m.resize(*len, b'a');
                m
            }
            _ => return None,
        })
    }
}

/// What the host did with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Reply(Vec<u8>),
    NoReply,
    Stop(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(usize),
    Directory,
}

struct Model {
    rdma: bool,
    state: ProtocolState,
    buffers: BTreeMap<u32, (bool, Vec<Range>)>,
    /// What guest memory must hold.
    memory: Vec<u8>,
}

fn reply(message_type: u32, status: u32, rest: &[u8]) -> Answer {
    let mut m = message(message_type, &status.to_le_bytes());
    m.extend_from_slice(rest);
    Answer::Reply(m)
}

fn info_reply(status: u32, flags: u32, size: u64) -> Answer {
    let mut rest = flags.to_le_bytes().to_vec();
    rest.extend(size.to_le_bytes());
    reply(GET_FILE_INFO_RESPONSE, status, &rest)
}

fn rdma_reply(status: u32, count: u32) -> Answer {
    reply(READ_FILE_RDMA_RESPONSE, status, &count.to_le_bytes())
}

fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(m[at..at + 4].try_into().unwrap())
}

fn u64_at(m: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(m[at..at + 8].try_into().unwrap())
}

/// What a path names: lexical resolution (`\` and `/` separate, empty and
/// `.` dropped, `..` pops and stays at the root), then a walk of
/// [`FILES`]. `None` for a path that names nothing or passes through a
/// file.
fn resolve(path: &Path) -> Option<Entry> {
    let mut parts: Vec<&str> = Vec::new();
    let text = path.text();
    for part in text.split(['\\', '/']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Some(Entry::Directory);
    }
    let wanted = parts.join("/");
    for (i, (file, _)) in FILES.iter().enumerate() {
        if *file == wanted {
            return Some(Entry::File(i));
        }
        if file.starts_with(&format!("{wanted}/")) {
            return Some(Entry::Directory);
        }
    }
    None
}

/// Whether a path decodes at all.
fn decodes(path: &Path) -> bool {
    path.damage == Damage::None
}

impl Model {
    fn new(rdma: bool) -> Self {
        Self {
            rdma,
            state: ProtocolState::AwaitVersion,
            buffers: BTreeMap::new(),
            memory: vec![0; MEMORY_PAGES as usize * PAGE],
        }
    }

    fn stop(&mut self, error: ProtocolError) -> Answer {
        self.state = ProtocolState::Stopped;
        Answer::Stop(error)
    }

    fn step(&mut self, input: &Input) -> Answer {
        if self.state == ProtocolState::Stopped {
            return Answer::Stop(ProtocolError::Stopped);
        }
        match input {
            Input::Setup {
                handle,
                writable,
                ranges,
            } => {
                let handle = *handle;
                if ranges.is_empty() {
                    self.stop(ProtocolError::EmptySetup { handle })
                } else if self.buffers.contains_key(&handle) {
                    self.stop(ProtocolError::DuplicateSetup { handle })
                } else if self.buffers.len() >= MAX_BUFFERS {
                    self.stop(ProtocolError::TooManyHandles {
                        handle,
                        limit: MAX_BUFFERS,
                    })
                } else {
                    self.buffers.insert(handle, (*writable, ranges.clone()));
                    Answer::NoReply
                }
            }
            Input::Teardown(handle) => match self.buffers.remove(handle) {
                Some(_) => Answer::NoReply,
                None => self.stop(ProtocolError::UnknownTeardown { handle: *handle }),
            },
            Input::Reset | Input::SaveRestore => unreachable!("host actions"),
            _ => {
                let m = input.message().unwrap();
                self.message(input, &m)
            }
        }
    }

    fn message(&mut self, input: &Input, m: &[u8]) -> Answer {
        if m.len() > MAX_MESSAGE {
            return self.stop(ProtocolError::MessageTooLong {
                len: m.len(),
                max: MAX_MESSAGE,
            });
        }
        if m.len() < 8 {
            return self.stop(ProtocolError::ShortHeader { len: m.len() });
        }
        let message_type = u32_at(m, 0);
        match message_type {
            VERSION_REQUEST | GET_FILE_INFO | READ_FILE | READ_FILE_RDMA => {}
            VERSION_RESPONSE
            | GET_FILE_INFO_RESPONSE
            | READ_FILE_RESPONSE
            | READ_FILE_RDMA_RESPONSE => {
                return self.stop(ProtocolError::ResponseFromGuest { message_type });
            }
            _ => return self.stop(ProtocolError::UnknownType { message_type }),
        }
        let version = (m.len() >= 12).then(|| u32_at(m, 8));
        match (self.state, message_type) {
            (ProtocolState::AwaitVersion, VERSION_REQUEST) => {
                if version == Some(WIN10) {
                    self.state = ProtocolState::Ready { version: WIN10 };
                    reply(VERSION_RESPONSE, 0, &[])
                } else {
                    reply(VERSION_RESPONSE, 1, &[])
                }
            }
            (ProtocolState::AwaitVersion, _) => {
                self.stop(ProtocolError::RequestBeforeVersion { message_type })
            }
            (
                ProtocolState::Ready {
                    version: negotiated,
                },
                VERSION_REQUEST,
            ) => self.stop(ProtocolError::RepeatedVersion {
                negotiated,
                requested: version.unwrap_or(0),
            }),
            (_, GET_FILE_INFO) => {
                let Input::Info(path) = input else {
                    unreachable!()
                };
                if !decodes(path) {
                    return info_reply(ERROR, 0, 0);
                }
                match resolve(path) {
                    None => info_reply(NOT_FOUND, 0, 0),
                    Some(Entry::Directory) => info_reply(SUCCESS, 1, 0),
                    Some(Entry::File(i)) => {
                        info_reply(SUCCESS, if self.rdma { 2 } else { 0 }, FILES[i].1 as u64)
                    }
                }
            }
            (_, READ_FILE) => self.read(input, m),
            _ => self.read_rdma(input, m),
        }
    }

    /// The checks both reads make after the ones of their own: the path
    /// must name a file, then the EOF rules. Returns the file bytes.
    fn read_range(path: &Path, offset: u64, count: u32) -> Result<Vec<u8>, u32> {
        let file = match resolve(path) {
            None => return Err(NOT_FOUND),
            Some(Entry::Directory) => return Err(ERROR),
            Some(Entry::File(i)) => i,
        };
        let data = contents(file, FILES[file].1);
        let size = data.len() as u64;
        if count == 0 {
            return Ok(vec![]);
        }
        if offset >= size {
            return Err(END_OF_FILE);
        }
        let end = (offset + u64::from(count)).min(size);
        Ok(data[offset as usize..end as usize].to_vec())
    }

    fn read(&mut self, input: &Input, m: &[u8]) -> Answer {
        let Input::Read {
            path,
            offset,
            count,
            ..
        } = input
        else {
            unreachable!()
        };
        let failed = |status| reply(READ_FILE_RESPONSE, status, &[]);
        if m.len() < 20
            || !decodes(path)
            || *count > MAX_READ
            || offset.checked_add(u64::from(*count)).is_none()
        {
            return failed(ERROR);
        }
        match Self::read_range(path, *offset, *count) {
            Ok(data) => reply(READ_FILE_RESPONSE, SUCCESS, &data),
            Err(status) => failed(status),
        }
    }

    fn read_rdma(&mut self, input: &Input, m: &[u8]) -> Answer {
        let Input::Rdma {
            handle,
            path,
            offset,
            count,
            token,
            ..
        } = input
        else {
            unreachable!()
        };
        if m.len() < 32
            || !decodes(path)
            || !self.rdma
            || *count > MAX_RDMA_READ
            || offset.checked_add(u64::from(*count)).is_none()
        {
            return rdma_reply(ERROR, 0);
        }
        let Some((writable, ranges)) = self.buffers.get(handle) else {
            return rdma_reply(ERROR, 0);
        };
        let buffer_len: u64 = ranges.iter().map(|r| u64::from(r.byte_count)).sum();
        let fits = token
            .checked_add(u64::from(*count))
            .is_some_and(|end| end <= buffer_len);
        if !writable || !fits {
            return rdma_reply(ERROR, 0);
        }
        let pieces = buffer_pieces(ranges, *token, u64::from(*count));
        if pieces.iter().any(|&(page, _, _)| page >= MEMORY_PAGES) {
            return rdma_reply(ERROR, 0);
        }
        match Self::read_range(path, *offset, *count) {
            Ok(data) => {
                let pieces = buffer_pieces(ranges, *token, data.len() as u64);
                let mut from = 0;
                for (page, in_page, n) in pieces {
                    let at = page as usize * PAGE + in_page;
                    self.memory[at..at + n].copy_from_slice(&data[from..from + n]);
                    from += n;
                }
                rdma_reply(SUCCESS, data.len() as u32)
            }
            Err(status) => rdma_reply(status, 0),
        }
    }
}

/// Guest pages touched by `len` bytes at `at` into a buffer made of
/// `ranges` laid end to end.
fn buffer_pieces(ranges: &[Range], at: u64, len: u64) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut base = 0u64;
    let end = at + len;
    for r in ranges {
        let r_end = base + u64::from(r.byte_count);
        let start = at.max(base);
        let stop = end.min(r_end);
        if start < stop {
            out.extend(r.pieces(start - base, stop - start));
        }
        base = r_end;
    }
    out
}

fn observe(host: &mut VmbfsHost, input: &Input) -> Answer {
    let result = match input {
        Input::Setup {
            handle,
            writable,
            ranges,
        } => host.handle(VmbfsInput::SetupGpaDirect {
            handle: *handle,
            writable: *writable,
            ranges: ranges.iter().map(Range::gpa_range).collect(),
        }),
        Input::Teardown(handle) => host.handle(VmbfsInput::TeardownGpaDirect { handle: *handle }),
        _ => host.handle(VmbfsInput::Message(&input.message().unwrap())),
    };
    match result {
        Ok(Some(reply)) => Answer::Reply(reply.into_bytes()),
        Ok(None) => Answer::NoReply,
        Err(e) => Answer::Stop(e),
    }
}

fn new_host(rdma: bool, memory: &GuestMemory) -> VmbfsHost {
    let config = VmbfsConfig {
        tree: Arc::new(tree()),
        rdma_enabled: rdma,
    };
    VmbfsHost::new(config, memory.clone())
}

fn run(rdma: bool, inputs: &[Input]) -> Result<(), TestCaseError> {
    let memory = GuestMemory::new(MEMORY_PAGES * PAGE as u64).unwrap();
    let mut host = new_host(rdma, &memory);
    let mut model = Model::new(rdma);
    for (i, input) in inputs.iter().enumerate() {
        match input {
            Input::Reset => {
                host.reset();
                model.state = ProtocolState::AwaitVersion;
                model.buffers.clear();
            }
            Input::SaveRestore => {
                let saved = host.save();
                prop_assert_eq!(saved.state, model.state, "saved state, step {}", i);
                let handles: Vec<u32> = saved.gpa_direct.iter().map(|b| b.handle).collect();
                let expected: Vec<u32> = model.buffers.keys().copied().collect();
                prop_assert_eq!(handles, expected, "saved handles, step {}", i);
                let decoded = decode_saved_state(&encode_saved_state(&saved)).unwrap();
                prop_assert_eq!(&decoded, &saved);
                host = new_host(rdma, &memory);
                host.restore(&decoded).unwrap();
            }
            _ => {
                let expected = model.step(input);
                let got = observe(&mut host, input);
                prop_assert_eq!(got, expected, "step {}: {:?}", i, input);
            }
        }
        prop_assert_eq!(host.state(), model.state, "state after step {}", i);
        let handles: Vec<u32> = model.buffers.keys().copied().collect();
        prop_assert_eq!(
            host.gpa_direct_handles(),
            handles,
            "handles after step {}",
            i
        );
        if matches!(input, Input::Rdma { .. }) {
            let mut got = vec![0u8; model.memory.len()];
            memory.read(0, &mut got).unwrap();
            prop_assert!(got == model.memory, "guest memory after step {}", i);
        }
    }
    Ok(())
}

// ---- strategies ----

fn path() -> impl Strategy<Value = Path> {
    let known = prop::sample::select(FILES.iter().map(|f| f.0).collect::<Vec<_>>())
        .prop_map(|p| -> Vec<&'static str> { p.split('/').collect() });
    let random = prop::collection::vec(prop::sample::select(NAMES.to_vec()), 0..5);
    let damage = prop_oneof![
        12 => Just(Damage::None),
        1 => Just(Damage::OddLength),
        1 => Just(Damage::EmbeddedNul),
        1 => (0usize..30).prop_map(Damage::Surrogate),
    ];
    (
        prop_oneof![2 => known, 1 => random],
        prop::collection::vec(any::<bool>(), 5),
        any::<bool>(),
        prop_oneof![4 => Just(0usize), 1 => 1usize..3],
        damage,
    )
        .prop_map(
            |(components, separators, leading, trailing_nuls, damage)| Path {
                components,
                separators,
                leading,
                trailing_nuls,
                damage,
            },
        )
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(vec![0u64, 1, 4999, 5000, 5001, 12999, 13000, 13001]),
        3 => 0u64..13_100,
        1 => prop::sample::select(vec![u64::MAX, u64::MAX - 1, u64::MAX - 12276, 1 << 40]),
    ]
}

fn read_count() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => prop::sample::select(vec![0u32, 1, 12276, 12277, u32::MAX]),
        3 => 0u32..13_000,
    ]
}

fn rdma_count() -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => prop::sample::select(vec![0u32, 1, MAX_RDMA_READ, MAX_RDMA_READ + 1, u32::MAX]),
        4 => 0u32..9000,
    ]
}

fn ranges() -> impl Strategy<Value = Vec<Range>> {
    let range = (
        1u32..9000,
        prop::sample::select(vec![0u32, 2, 100, 4094]),
        prop::collection::vec(0..MEMORY_PAGES, 4),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(byte_count, byte_offset, mut pages, outside)| {
            let needed = vmbdev_ring::gpa::pages_spanned(byte_offset, byte_count) as usize;
            pages.truncate(needed);
            if outside {
                let last = pages.len() - 1;
                pages[last] = OUTSIDE_PAGE;
            }
            Range {
                byte_count,
                byte_offset,
                pages,
            }
        });
    prop_oneof![
        1 => Just(vec![]),
        20 => prop::collection::vec(range, 1..3),
    ]
}

fn handle() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..4, 1 => any::<u32>()]
}

fn input() -> impl Strategy<Value = Input> {
    let version = prop_oneof![
        3 => Just(WIN10),
        1 => prop::sample::select(vec![0u32, 0x0001_0001, 0x0000_0001, 0x0002_0000, u32::MAX]),
        1 => any::<u32>(),
    ];
    let version_cut = prop_oneof![6 => Just(None), 1 => (8usize..12).prop_map(Some)];
    let read_cut = prop_oneof![8 => Just(None), 1 => (8usize..20).prop_map(Some)];
    let rdma_cut = prop_oneof![8 => Just(None), 1 => (8usize..32).prop_map(Some)];
    prop_oneof![
        4 => (version, version_cut, prop_oneof![3 => Just(0usize), 1 => 1usize..8])
            .prop_map(|(version, cut, extra)| Input::Version { version, cut, extra }),
        4 => path().prop_map(Input::Info),
        6 => (path(), offset(), read_count(), read_cut)
            .prop_map(|(path, offset, count, cut)| Input::Read { path, offset, count, cut }),
        6 => (handle(), path(), offset(), rdma_count(),
              prop_oneof![3 => 0u64..6000, 1 => Just(u64::MAX - 2)], rdma_cut)
            .prop_map(|(handle, path, offset, count, token, cut)| Input::Rdma {
                handle, path, offset, count, token, cut,
            }),
        4 => (handle(), prop::bool::weighted(0.85), ranges())
            .prop_map(|(handle, writable, ranges)| Input::Setup { handle, writable, ranges }),
        2 => handle().prop_map(Input::Teardown),
        1 => (
            prop::sample::select(vec![0u32, 2, 4, 6, 8, 9, 10, 100, u32::MAX]),
            prop::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(t, body)| Input::OtherType(t, body)),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Input::Short),
        1 => (MAX_MESSAGE + 1..MAX_MESSAGE + 8).prop_map(Input::TooLong),
        3 => prop_oneof![1 => Just(Input::Reset), 2 => Just(Input::SaveRestore)],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random input from a fresh channel.
    #[test]
    fn session_matches_model(
        rdma in any::<bool>(),
        inputs in prop::collection::vec(input(), 1..40),
    ) {
        run(rdma, &inputs)?;
    }

    /// Random input after a negotiated version and one registered buffer
    /// (as the UEFI client sets it up), so reads get most of the steps.
    #[test]
    fn negotiated_session_matches_model(
        rdma in prop::bool::weighted(0.8),
        buffer in ranges().prop_filter("a buffer", |r| !r.is_empty()),
        inputs in prop::collection::vec(input(), 1..40),
    ) {
        let mut all = vec![
            Input::Version { version: WIN10, cut: None, extra: 0 },
            Input::Setup { handle: 1, writable: true, ranges: buffer },
        ];
        all.extend(inputs);
        run(rdma, &all)?;
    }
}

// ---- the model against hand-written facts ----

fn plain(p: &'static str) -> Path {
    Path {
        components: p.split('\\').collect(),
        separators: vec![true; 8],
        leading: false,
        trailing_nuls: 0,
        damage: Damage::None,
    }
}

/// The model resolves what the wire facts say: `..` clamps at the root,
/// a file is not a directory, the empty path is the root.
#[test]
fn model_resolves_paths_like_the_wire_facts() {
    assert_eq!(
        resolve(&plain("EFI\\BOOT\\BOOTX64.EFI")),
        Some(Entry::File(0))
    );
    assert_eq!(resolve(&plain("..\\..\\empty")), Some(Entry::File(1)));
    assert_eq!(
        resolve(&plain("dir\\..\\dir\\.\\big")),
        Some(Entry::File(2))
    );
    assert_eq!(resolve(&plain("")), Some(Entry::Directory));
    assert_eq!(resolve(&plain("dir\\sub")), Some(Entry::Directory));
    assert_eq!(resolve(&plain("empty\\x")), None);
    assert_eq!(resolve(&plain("di")), None);
    let mut p = plain("\\EFI\\BOOT\\");
    p.trailing_nuls = 1;
    assert_eq!(p.bytes().len() % 2, 0);
    assert_eq!(&p.bytes()[p.bytes().len() - 2..], &[0, 0]);
}

/// Written-out sessions through the same checker: a bad version is
/// answered 1 and keeps the channel waiting (a file request then stops
/// it); after negotiation a chunked read of the big file returns it
/// whole with a short last chunk and END_OF_FILE past the end.
#[test]
fn bad_version_then_chunked_read() {
    let version = |version| Input::Version {
        version,
        cut: None,
        extra: 0,
    };
    let read = |offset| Input::Read {
        path: plain("\\dir\\big"),
        offset,
        count: MAX_READ,
        cut: None,
    };
    run(
        false,
        &[version(0x0001_0001), version(0), Input::Info(plain("dir"))],
    )
    .unwrap();
    let mut model = Model::new(false);
    let bad = model.step(&version(0x0002_0000));
    assert_eq!(bad, reply(VERSION_RESPONSE, 1, &[]));
    assert_eq!(model.state, ProtocolState::AwaitVersion);
    assert!(matches!(
        model.step(&read(0)),
        Answer::Stop(ProtocolError::RequestBeforeVersion { message_type: 5 })
    ));

    let mut inputs = vec![version(WIN10)];
    inputs.extend((0..3).map(|i| read(u64::from(i * MAX_READ))));
    inputs.push(read(13_000));
    run(false, &inputs).unwrap();
    let mut model = Model::new(false);
    model.step(&version(WIN10));
    let mut whole = Vec::new();
    for i in 0..2 {
        let Answer::Reply(r) = model.step(&read(u64::from(i * MAX_READ))) else {
            panic!("a reply")
        };
        assert_eq!(u32_at(&r, 8), SUCCESS);
        whole.extend_from_slice(&r[12..]);
    }
    assert_eq!(whole, contents(2, 13_000));
    assert_eq!(
        model.step(&read(13_000)),
        reply(READ_FILE_RESPONSE, END_OF_FILE, &[])
    );
    let Answer::Reply(r) = model.step(&Input::Info(plain("dir\\big"))) else {
        panic!("a reply")
    };
    assert_eq!((u32_at(&r, 12), u64_at(&r, 16)), (0, 13_000));
}
