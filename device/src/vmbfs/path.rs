//! Decoding of vmbfs paths: UTF-16LE code units filling the rest of a
//! message, turned into a [`TreePath`] that cannot leave the served tree;
//! and [`PathCache`], which spares a guest reading one file chunk by chunk
//! the decoding (and its allocations) on every request.

use std::sync::Arc;
use vmbdev_fs::TreePath;

/// Why a path in a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path bytes are not a whole number of UTF-16 code units.
    #[error("path of {len} bytes is not a whole number of UTF-16 code units")]
    OddLength {
        /// Length of the path in bytes.
        len: usize,
    },
    /// A NUL code unit followed by a non-NUL one.
    #[error("path has a NUL at code unit {index} before its end")]
    EmbeddedNul {
        /// Index of the NUL code unit.
        index: usize,
    },
    /// A surrogate without its partner.
    #[error("path has an unpaired surrogate {unit:#06x} at code unit {index}")]
    UnpairedSurrogate {
        /// Index of the surrogate code unit.
        index: usize,
        /// The surrogate itself.
        unit: u16,
    },
}

/// Decodes a path from its UTF-16LE bytes.
///
/// Trailing NUL code units are stripped (the UEFI client appends one when
/// the parent path ends in `\`). `\` and `/` both separate components;
/// empty and `.` components are dropped and `..` at the root stays at the
/// root, so the result always names something inside the tree. An empty
/// path is the root.
pub fn decode_path(bytes: &[u8]) -> Result<TreePath, PathError> {
    if bytes.len() % 2 != 0 {
        return Err(PathError::OddLength { len: bytes.len() });
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    let end = units
        .iter()
        .rposition(|&u| u != 0)
        .map_or(0, |last| last + 1);
    let units = &units[..end];
    if let Some(index) = units.iter().position(|&u| u == 0) {
        return Err(PathError::EmbeddedNul { index });
    }
    let mut text = String::with_capacity(units.len());
    let mut index = 0usize;
    for decoded in char::decode_utf16(units.iter().copied()) {
        match decoded {
            Ok(c) => {
                text.push(c);
                index += c.len_utf16();
            }
            Err(e) => {
                return Err(PathError::UnpairedSurrogate {
                    index,
                    unit: e.unpaired_surrogate(),
                });
            }
        }
    }
    Ok(TreePath::parse(&text))
}

/// The last path decoded, by its wire bytes: a request naming the same
/// bytes gets the same [`TreePath`] without decoding or allocating.
#[derive(Debug, Default)]
pub(super) struct PathCache {
    /// Wire bytes of `path` (capacity kept across misses).
    bytes: Vec<u8>,
    path: Option<Arc<TreePath>>,
}

impl PathCache {
    /// [`decode_path`] of `bytes`, from the cache when the last path
    /// decoded had the same bytes. Refused paths are not cached.
    pub(super) fn decode(&mut self, bytes: &[u8]) -> Result<Arc<TreePath>, PathError> {
        if let Some(path) = self.path.as_ref().filter(|_| self.bytes == bytes) {
            return Ok(path.clone());
        }
        self.path = None;
        let path = Arc::new(decode_path(bytes)?);
        self.bytes.clear();
        self.bytes.extend_from_slice(bytes);
        self.path = Some(path.clone());
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_answers_equal_bytes_and_decodes_others() {
        let mut cache = PathCache::default();
        let a = cache.decode(&utf16("\\a\\b")).unwrap();
        let again = cache.decode(&utf16("\\a\\b")).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "same bytes, same decoded path");
        let c = cache.decode(&utf16("\\a\\c")).unwrap();
        assert_eq!(c.components(), ["a", "c"]);
        assert_eq!(cache.decode(&[0x41]), Err(PathError::OddLength { len: 1 }));
        // A refused path leaves no entry that a later one could match.
        assert_eq!(
            cache.decode(&utf16("\\a\\c")).unwrap().components(),
            ["a", "c"]
        );
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn separators_dots_and_root() {
        let p = decode_path(&utf16("\\EFI\\BOOT/./x\\..\\BOOTX64.EFI")).unwrap();
        assert_eq!(p.components(), ["EFI", "BOOT", "BOOTX64.EFI"]);
        assert!(decode_path(&[]).unwrap().is_root());
        assert!(decode_path(&utf16("\\..\\..")).unwrap().is_root());
    }

    #[test]
    fn trailing_nuls_stripped_embedded_refused() {
        let mut bytes = utf16("a\\b");
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_path(&bytes).unwrap().components(), ["a", "b"]);
        let mut bytes = utf16("a");
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&utf16("b"));
        assert_eq!(
            decode_path(&bytes),
            Err(PathError::EmbeddedNul { index: 1 })
        );
        assert!(decode_path(&[0, 0]).unwrap().is_root());
    }

    #[test]
    fn surrogates() {
        // A valid pair decodes; its index accounting covers two units.
        let mut bytes = utf16("\u{1F600}");
        bytes.extend_from_slice(&0xDC00u16.to_le_bytes());
        assert_eq!(
            decode_path(&bytes),
            Err(PathError::UnpairedSurrogate {
                index: 2,
                unit: 0xDC00
            })
        );
        assert_eq!(
            decode_path(&0xD800u16.to_le_bytes()),
            Err(PathError::UnpairedSurrogate {
                index: 0,
                unit: 0xD800
            })
        );
    }
}
