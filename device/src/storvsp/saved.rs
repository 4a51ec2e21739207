//! Saved state: what a channel remembers across save/restore, the checks
//! a saved state must pass before a channel resumes from it, and the byte
//! encoding of a storvsp device's saved state — a versioned, little-endian
//! record of the primary channel's protocol state and every request taken
//! from a ring and not answered. Decoding treats the bytes like guest
//! input: every count is checked against what is left.

use vmbdev_protocol::vstor::ProtocolVersion;
use vmbdev_ring::GpaRange;

use super::runner::PendingRequest;
use super::{Completion, CompletionBytes, InitState, StorvspConfig};

/// What a channel must remember across save/restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedState {
    /// Init progress.
    pub state: InitState,
    /// Negotiated protocol version (`(major << 8) | minor`).
    pub version: Option<u16>,
    /// Sub-channels the guest created.
    pub sub_channels: u16,
    /// Whether this is the primary channel.
    pub primary: bool,
}

impl SavedState {
    /// Checks that a channel with `config` can resume from this state.
    pub fn validate(&self, config: &StorvspConfig) -> Result<(), RestoreError> {
        if let Some(v) = self.version {
            if !ProtocolVersion(v).is_known() {
                return Err(RestoreError::Version(v));
            }
        }
        let needs_version = !matches!(self.state, InitState::AwaitBegin | InitState::AwaitVersion);
        if needs_version && self.version.is_none() {
            return Err(RestoreError::MissingVersion(self.state));
        }
        if self.sub_channels > config.max_sub_channels {
            return Err(RestoreError::SubChannels {
                count: self.sub_channels,
                max: config.max_sub_channels,
            });
        }
        Ok(())
    }
}

/// A saved state that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The version is not one the host speaks.
    #[error("saved protocol version {0:#06x} is not supported")]
    Version(u16),
    /// The state needs a version but none is saved.
    #[error("saved state {0:?} has no protocol version")]
    MissingVersion(InitState),
    /// More sub-channels than the configuration allows.
    #[error("saved sub-channel count {count} exceeds the maximum {max}")]
    SubChannels {
        /// Saved count.
        count: u16,
        /// Configured maximum.
        max: u16,
    },
}

/// Why storvsp refused saved-state bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorvspSavedStateError {
    /// The bytes are not a valid encoding.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The decoded state does not fit this device's configuration.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The state lists requests for a channel its protocol state never
    /// created.
    #[error("saved state has requests for channel {index} but only {created} sub-channels")]
    SavedChannel {
        /// Channel index in the saved state.
        index: u16,
        /// Sub-channels the saved state created.
        created: u16,
    },
}

/// The device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SavedDevice {
    /// Protocol state of the primary channel (`None`: never opened).
    pub primary: Option<SavedState>,
    /// Requests taken and not answered, per channel index, oldest first.
    pub pending: Vec<(u16, Vec<PendingRequest>)>,
}

/// Leading magic of the encoding.
const MAGIC: &[u8; 4] = b"STVS";
/// Encoding version.
const FORMAT_VERSION: u32 = 1;
/// Largest payload kept for one request (the ring caps a packet far
/// below this; vstor packets are 0x40 bytes).
const MAX_PAYLOAD: usize = 4096;
/// Most ranges one saved request may carry.
const MAX_RANGES: usize = 16;

/// Saved-state bytes that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before a field.
    #[error("saved state ends at byte {offset} while reading {field}")]
    Truncated {
        /// Offset of the missing field.
        offset: usize,
        /// The field.
        field: &'static str,
    },
    /// A field has a value the format does not allow.
    #[error("saved state field {field} at byte {offset} has bad value {value:#x}")]
    BadValue {
        /// Offset of the field.
        offset: usize,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes follow the last record.
    #[error("saved state has {0} trailing bytes")]
    Trailing(usize),
}

fn init_state_code(state: InitState) -> u8 {
    match state {
        InitState::AwaitBegin => 0,
        InitState::AwaitVersion => 1,
        InitState::AwaitProperties => 2,
        InitState::AwaitEnd => 3,
        InitState::Ready => 4,
    }
}

fn init_state_from(code: u8) -> Option<InitState> {
    Some(match code {
        0 => InitState::AwaitBegin,
        1 => InitState::AwaitVersion,
        2 => InitState::AwaitProperties,
        3 => InitState::AwaitEnd,
        4 => InitState::Ready,
        _ => return None,
    })
}

/// Encodes `saved`.
pub fn encode(saved: &SavedDevice) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    match &saved.primary {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            out.push(init_state_code(p.state));
            out.push(u8::from(p.version.is_some()));
            out.extend_from_slice(&p.version.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&p.sub_channels.to_le_bytes());
            out.push(u8::from(p.primary));
        }
    }
    out.extend_from_slice(&(saved.pending.len() as u32).to_le_bytes());
    for (index, requests) in &saved.pending {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(requests.len() as u32).to_le_bytes());
        for request in requests {
            encode_request(&mut out, request);
        }
    }
    out
}

fn encode_request(out: &mut Vec<u8>, request: &PendingRequest) {
    let (kind, tid, payload, ranges): (u8, u64, &[u8], &[GpaRange]) = match request {
        PendingRequest::Rerun {
            payload,
            ranges,
            transaction_id,
        } => (0, *transaction_id, payload, ranges),
        PendingRequest::Reply(c) => (1, c.transaction_id, &c.bytes, &[]),
    };
    out.push(kind);
    out.extend_from_slice(&tid.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for range in ranges {
        out.extend_from_slice(&range.byte_count().to_le_bytes());
        out.extend_from_slice(&range.byte_offset().to_le_bytes());
        out.extend_from_slice(&(range.gpns().len() as u32).to_le_bytes());
        for gpn in range.gpns() {
            out.extend_from_slice(&gpn.to_le_bytes());
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(len).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                offset: self.at,
                field,
            });
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bad(&self, field: &'static str, value: u64) -> DecodeError {
        DecodeError::BadValue {
            offset: self.at,
            field,
            value,
        }
    }

    /// A count of records each at least `min_len` bytes long, checked
    /// against the bytes left.
    fn count(&mut self, field: &'static str, min_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > (self.bytes.len() - self.at) / min_len.max(1) {
            return Err(self.bad(field, n as u64));
        }
        Ok(n)
    }
}

/// Decodes bytes made by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<SavedDevice, DecodeError> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err(DecodeError::BadValue {
            offset: 0,
            field: "magic",
            value: 0,
        });
    }
    let version = c.u32("format version")?;
    if version != FORMAT_VERSION {
        return Err(c.bad("format version", u64::from(version)));
    }
    let primary = match c.u8("primary present")? {
        0 => None,
        1 => {
            let code = c.u8("init state")?;
            let state = init_state_from(code).ok_or_else(|| c.bad("init state", code.into()))?;
            let has_version = c.u8("version present")?;
            let v = c.u16("version")?;
            let version = match has_version {
                0 => None,
                1 => Some(v),
                other => return Err(c.bad("version present", other.into())),
            };
            let sub_channels = c.u16("sub-channel count")?;
            let primary = match c.u8("primary flag")? {
                0 => false,
                1 => true,
                other => return Err(c.bad("primary flag", other.into())),
            };
            Some(SavedState {
                state,
                version,
                sub_channels,
                primary,
            })
        }
        other => return Err(c.bad("primary present", other.into())),
    };
    let channels = c.count("channel count", 6)?;
    let mut pending = Vec::with_capacity(channels);
    for _ in 0..channels {
        let index = c.u16("channel index")?;
        let n = c.count("request count", 17)?;
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            requests.push(decode_request(&mut c)?);
        }
        pending.push((index, requests));
    }
    if c.at != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - c.at));
    }
    Ok(SavedDevice { primary, pending })
}

fn decode_request(c: &mut Cursor<'_>) -> Result<PendingRequest, DecodeError> {
    let kind = c.u8("request kind")?;
    let transaction_id = c.u64("transaction id")?;
    let len = c.u32("payload length")? as usize;
    if len > MAX_PAYLOAD {
        return Err(c.bad("payload length", len as u64));
    }
    let payload = c.take(len, "payload")?.to_vec();
    let range_count = c.count("range count", 12)?;
    if range_count > MAX_RANGES {
        return Err(c.bad("range count", range_count as u64));
    }
    let mut ranges = Vec::with_capacity(range_count);
    for _ in 0..range_count {
        let byte_count = c.u32("range byte count")?;
        let byte_offset = c.u32("range byte offset")?;
        let pages = c.count("range page count", 8)?;
        let mut gpns = Vec::with_capacity(pages);
        for _ in 0..pages {
            gpns.push(c.u64("range page")?);
        }
        let range = GpaRange::new(byte_count, byte_offset, gpns)
            .map_err(|_| c.bad("range", u64::from(byte_count)))?;
        ranges.push(range);
    }
    match kind {
        0 => Ok(PendingRequest::Rerun {
            payload,
            ranges,
            transaction_id,
        }),
        1 if ranges.is_empty() => match CompletionBytes::from_slice(&payload) {
            Some(bytes) => Ok(PendingRequest::Reply(Completion {
                transaction_id,
                bytes,
            })),
            None => Err(c.bad("completion length", payload.len() as u64)),
        },
        other => Err(c.bad("request kind", other.into())),
    }
}
