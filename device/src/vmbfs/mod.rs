//! The vmbfs host: serves a read-only [`FileTree`](vmbdev_fs::FileTree)
//! to a guest over a pipe-mode, message-mode channel.
//!
//! [`VmbfsHost`] is an explicit state machine with no hidden I/O: each
//! received pipe message goes in as a [`VmbfsInput`], at most one
//! [`Reply`] (≤ 12288 bytes) or a [`ProtocolError`] comes out. Requests
//! that need the tree come out of [`VmbfsHost::start`] as an [`IoJob`]
//! whose [`IoJob::run`] is the only code that calls the tree (it may block,
//! so async glue runs it on a blocking pool) and whose result goes back
//! through [`VmbfsHost::finish`]. [`VmbfsHost::handle`] does all three on
//! the calling thread. Exactly one reply per request, in order; pipe
//! SETUP/TEARDOWN produce none; nothing is sent unsolicited. The host keeps
//! no queue, so a guest that never reads replies cannot grow host memory:
//! the glue reserves [`VmbfsHost::max_reply_size`] bytes of outgoing ring
//! space before taking the next message, and waits otherwise.
//!
//! States: `AwaitVersion` → (VERSION_REQUEST 0x00010000) → `Ready`. An
//! unsupported version is answered with status 1 and the state stays
//! `AwaitVersion`. A protocol violation moves to `Stopped`, where every
//! input fails until [`VmbfsHost::reset`], which every channel open calls.
//!
//! Paths: UTF-16LE filling the rest of the message; trailing NULs are
//! stripped; `\` and `/` separate; empty and `.` components are dropped;
//! `..` at the root **stays at the root** (clamped, never NOT_FOUND), so no
//! path resolves outside the tree; an empty path is the root.
//!
//! # Bad input
//!
//! Where the protocol can answer (the request type is known and valid in
//! the current state) the packet fails: the answer is a status and the
//! channel keeps serving. Otherwise the channel stops: a message that is
//! too short to have a type, of an unknown type, or out of order leaves
//! host and guest disagreeing about the conversation, and the UEFI client
//! recovers by reopening. Every row is counted under the [`BadInput`] kind
//! named (its [`BadInput::name`]) in the device's
//! [`ViolationLog`](crate::violation::ViolationLog), shown in
//! [`VmbfsStats`], and logged at the shared rate limit (see
//! [`crate::bus`]). A malformed pipe frame also stops the channel and is
//! counted as `malformed pipe frame`.
//!
//! | input | outcome | kind |
//! |---|---|---|
//! | message < 8 bytes | stop | `ShortHeader` |
//! | VERSION_REQUEST < 12 bytes | status 1 (unsupported), stay | `TruncatedBody` |
//! | READ_FILE < 20 / READ_FILE_RDMA < 32 bytes | ERROR | `TruncatedBody` |
//! | message > 12288 bytes (path longer than a message allows) | stop | `MessageTooLong` |
//! | unknown type | stop | `UnknownType` |
//! | response type sent by the guest | stop | `ResponseFromGuest` |
//! | file request before version negotiation | stop | `RequestBeforeVersion` |
//! | second VERSION_REQUEST after `Ready` | stop | `RepeatedVersion` |
//! | unsupported version | status 1, stay | `UnsupportedVersion` |
//! | odd-length path | ERROR | `OddLengthPath` |
//! | NUL before the end of the path | ERROR | `EmbeddedNul` |
//! | unpaired surrogate | ERROR | `UnpairedSurrogate` |
//! | byte_count > 12276 (READ_FILE) / > 7 MiB (RDMA) | ERROR | `ByteCountTooLarge` |
//! | offset + byte_count overflows u64 | ERROR | `OffsetOverflow` |
//! | read (in-band or RDMA) of a directory | ERROR | `ReadOfDirectory` |
//! | path not in the tree, or through a file | NOT_FOUND | (not counted) |
//! | READ_FILE_RDMA with RDMA disabled | ERROR | `RdmaDisabled` |
//! | READ_FILE_RDMA, handle not registered | ERROR | `UnknownHandle` |
//! | READ_FILE_RDMA into a read-only buffer | ERROR | `ReadOnlyHandle` |
//! | buffer < token_offset + byte_count | ERROR | `RdmaRangeTooSmall` |
//! | buffer pages outside guest memory | ERROR | `RdmaOutsideGuestMemory` |
//! | TEARDOWN of an unknown handle | stop | `UnknownTeardown` |
//! | SETUP of a registered handle | stop | `DuplicateSetup` |
//! | SETUP beyond 16 buffers | stop | `TooManyHandles` |
//! | SETUP with no ranges | stop | `EmptySetup` |
//! | requests while replies are never read | no backlog (see above) | — |
//!
//! Reads: SUCCESS with the bytes that exist when the range runs past the
//! end; END_OF_FILE only when offset ≥ size and byte_count > 0; SUCCESS
//! with no data only for byte_count 0; never SUCCESS with 0 bytes while
//! offset < size (a tree that ends early yields ERROR). RDMA reads copy the
//! file through a reused 64 KiB buffer straight into the registered guest
//! pages at `token_offset` and reply with the bytes written.
//!
//! Once warm, a read allocates nothing on the host: requests are copied
//! into one reused buffer and decoded in place, the last path decoded is
//! cached by its wire bytes, replies are built in a buffer handed back with
//! [`VmbfsHost::recycle`], and torn-down GPA-direct buffers are reused by
//! the next setup (`bench/tests/vmbfs_alloc_free.rs` counts it).
//! [`IoPolicy::BlockingPool`] still allocates its hand-off to the pool.
//!
//! [`VmbfsDevice`] puts the host on the bus (see [`crate::bus`]): it runs
//! the state machine over an opened channel with backpressure, a blocking
//! pool for tree I/O, saved state and live statistics.

mod buffer;
mod device;
mod handles;
mod host;
mod io;
mod path;
mod reply;
mod saved;
mod stats;
#[cfg(test)]
mod tests;

pub use device::{IoPolicy, RING_PAGES, VmbfsDevice, VmbfsDeviceStats};
pub use host::{
    MAX_GPA_DIRECT_BUFFERS, ProtocolError, ProtocolState, RestoreError, SavedGpaDirect, Step,
    VmbfsConfig, VmbfsHost, VmbfsInput, VmbfsSavedState,
};
pub use io::{BOUNCE_SIZE, IoDone, IoJob};
pub use path::{PathError, decode_path};
pub use reply::Reply;
pub use saved::{SavedStateError, VmbfsSavedStateError, decode_saved_state, encode_saved_state};
pub use stats::{BadInput, VmbfsStats};
