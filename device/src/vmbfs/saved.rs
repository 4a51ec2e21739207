//! The byte encoding of [`VmbfsSavedState`] carried by the bus contract's
//! save/restore. Decoding treats the bytes as untrusted: every length is
//! checked before use and nothing is allocated beyond what the bytes hold.
//!
//! Layout (little-endian): magic `b"VMBFSSV1"`, state `u8` (0 awaiting
//! version, 1 ready, 2 stopped), negotiated version `u32`, buffer count
//! `u32`, then per buffer `handle u32, writable u8, range_count u32` and
//! the ranges in GPA-direct wire form.

use super::host::{MAX_GPA_DIRECT_BUFFERS, ProtocolState, SavedGpaDirect, VmbfsSavedState};
use vmbdev_ring::{GpaError, GpaRange};

const MAGIC: &[u8; 8] = b"VMBFSSV1";

/// Why vmbfs refused saved-state bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmbfsSavedStateError {
    /// The bytes are not a valid encoding.
    #[error(transparent)]
    Decode(#[from] SavedStateError),
    /// The decoded state cannot be loaded into the host.
    #[error(transparent)]
    Restore(#[from] super::host::RestoreError),
}

/// Why saved-state bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedStateError {
    /// The bytes do not start with the format's magic.
    #[error("saved state does not start with the vmbfs magic")]
    BadMagic,
    /// The bytes end inside a field.
    #[error("saved state truncated at offset {offset} reading {field}")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// The field.
        field: &'static str,
    },
    /// An unknown protocol-state tag.
    #[error("saved state has unknown protocol state {tag} at offset 8")]
    BadState {
        /// The tag.
        tag: u8,
    },
    /// More buffers than the host allows.
    #[error("saved state lists {count} GPA-direct buffers, more than {MAX_GPA_DIRECT_BUFFERS}")]
    TooManyBuffers {
        /// The count.
        count: u32,
    },
    /// A bad range list.
    #[error("saved GPA-direct handle {handle:#x} at offset {offset}: {source}")]
    BadRanges {
        /// The handle.
        handle: u32,
        /// Offset of its range list.
        offset: usize,
        /// What was wrong.
        source: GpaError,
    },
    /// Bytes after the last buffer.
    #[error("saved state has {extra} bytes after its last buffer")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
}

/// Encodes saved state to bytes.
pub fn encode_saved_state(saved: &VmbfsSavedState) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let (tag, version) = match saved.state {
        ProtocolState::AwaitVersion => (0u8, 0u32),
        ProtocolState::Ready { version } => (1, version),
        ProtocolState::Stopped => (2, 0),
    };
    out.push(tag);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(saved.gpa_direct.len() as u32).to_le_bytes());
    for buffer in &saved.gpa_direct {
        out.extend_from_slice(&buffer.handle.to_le_bytes());
        out.push(u8::from(buffer.writable));
        out.extend_from_slice(&(buffer.ranges.len() as u32).to_le_bytes());
        for range in &buffer.ranges {
            range.encode_into(&mut out);
        }
    }
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], SavedStateError> {
        let slice = self
            .at
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(SavedStateError::Truncated {
                offset: self.at,
                field,
            })?;
        self.at += len;
        Ok(slice)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, SavedStateError> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SavedStateError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes bytes made by [`encode_saved_state`].
pub fn decode_saved_state(bytes: &[u8]) -> Result<VmbfsSavedState, SavedStateError> {
    let mut cur = Cursor { bytes, at: 0 };
    if cur.take(MAGIC.len(), "magic").ok() != Some(&MAGIC[..]) {
        return Err(SavedStateError::BadMagic);
    }
    let tag = cur.u8("state")?;
    let version = cur.u32("version")?;
    let state = match tag {
        0 => ProtocolState::AwaitVersion,
        1 => ProtocolState::Ready { version },
        2 => ProtocolState::Stopped,
        tag => return Err(SavedStateError::BadState { tag }),
    };
    let count = cur.u32("buffer count")?;
    if count as usize > MAX_GPA_DIRECT_BUFFERS {
        return Err(SavedStateError::TooManyBuffers { count });
    }
    let mut gpa_direct = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let handle = cur.u32("handle")?;
        let writable = cur.u8("writable")? != 0;
        let range_count = cur.u32("range count")?;
        let offset = cur.at;
        let rest = bytes.get(offset..).unwrap_or_default();
        let (ranges, used) = GpaRange::parse_list(rest, range_count).map_err(|source| {
            SavedStateError::BadRanges {
                handle,
                offset,
                source,
            }
        })?;
        cur.at += used;
        gpa_direct.push(SavedGpaDirect {
            handle,
            writable,
            ranges,
        });
    }
    if cur.at != bytes.len() {
        return Err(SavedStateError::TrailingBytes {
            extra: bytes.len() - cur.at,
        });
    }
    Ok(VmbfsSavedState { state, gpa_direct })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmbfsSavedState {
        VmbfsSavedState {
            state: ProtocolState::Ready { version: 0x10000 },
            gpa_direct: vec![
                SavedGpaDirect {
                    handle: 1,
                    writable: true,
                    ranges: vec![GpaRange::new(5000, 2, vec![9, 4]).unwrap()],
                },
                SavedGpaDirect {
                    handle: 7,
                    writable: false,
                    ranges: vec![
                        GpaRange::new(10, 0, vec![3]).unwrap(),
                        GpaRange::new(4096, 0, vec![5]).unwrap(),
                    ],
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let saved = sample();
        let bytes = encode_saved_state(&saved);
        assert_eq!(decode_saved_state(&bytes).unwrap(), saved);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = encode_saved_state(&sample());
        for len in 0..bytes.len() {
            assert!(decode_saved_state(&bytes[..len]).is_err(), "len {len}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_saved_state(&long),
            Err(SavedStateError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn hostile_counts_are_refused_without_allocating() {
        let mut bytes = encode_saved_state(&VmbfsSavedState {
            state: ProtocolState::AwaitVersion,
            gpa_direct: Vec::new(),
        });
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_saved_state(&bytes),
            Err(SavedStateError::TooManyBuffers { count: u32::MAX })
        );
        bytes[8] = 9;
        assert_eq!(
            decode_saved_state(&bytes),
            Err(SavedStateError::BadState { tag: 9 })
        );
    }
}
