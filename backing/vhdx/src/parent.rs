//! Parent locators of differencing disks: parsing the key/value table and
//! turning `relative_path` / `absolute_win32_path` into candidate paths.

use std::path::{Path, PathBuf};

use zerocopy::FromBytes;

use crate::error::VhdxError;
use crate::format::{Guid, PARENT_LOCATOR_TYPE, ParentLocatorEntry, ParentLocatorHeader};

/// The parsed parent locator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// Required: the parent's data write GUID.
    pub parent_linkage: Guid,
    /// Optional alternative linkage.
    pub parent_linkage2: Option<Guid>,
    /// Path relative to the child's directory (Windows separators).
    pub relative_path: Option<String>,
    /// Absolute Windows path.
    pub absolute_win32_path: Option<String>,
    /// Volume path.
    pub volume_path: Option<String>,
}

fn bad(reason: &'static str, offset: u64) -> VhdxError {
    VhdxError::BadParentLocator { reason, offset }
}

fn utf16(item: &[u8], offset: u32, length: u16) -> Result<String, VhdxError> {
    let start = offset as usize;
    let bytes = item
        .get(start..start + usize::from(length))
        .ok_or_else(|| bad("key or value outside the item", u64::from(offset)))?;
    if length % 2 != 0 {
        return Err(bad("odd UTF-16 length", u64::from(offset)));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| bad("invalid UTF-16", u64::from(offset)))
}

impl ParentLocator {
    /// Parses the locator item.
    pub fn parse(item: &[u8]) -> Result<Self, VhdxError> {
        let (header, _) = ParentLocatorHeader::read_from_prefix(item)
            .map_err(|_| bad("item shorter than its header", 0))?;
        if header.locator_type != PARENT_LOCATOR_TYPE {
            return Err(bad("unknown locator type", 0));
        }
        let mut locator = ParentLocator::default();
        let mut linkage = None;
        for i in 0..usize::from(header.key_value_count.get()) {
            let at = 20 + i * 12;
            let entry = item
                .get(at..at + 12)
                .and_then(|b| ParentLocatorEntry::read_from_bytes(b).ok())
                .ok_or_else(|| bad("entry outside the item", at as u64))?;
            let key = utf16(item, entry.key_offset.get(), entry.key_length.get())?;
            let value = utf16(item, entry.value_offset.get(), entry.value_length.get())?;
            let value_at = u64::from(entry.value_offset.get());
            match key.as_str() {
                "parent_linkage" => {
                    linkage = Some(
                        value
                            .parse()
                            .map_err(|_| bad("parent_linkage is not a GUID", value_at))?,
                    )
                }
                "parent_linkage2" => {
                    locator.parent_linkage2 = value.parse().ok();
                }
                "relative_path" => locator.relative_path = Some(value),
                "absolute_win32_path" => locator.absolute_win32_path = Some(value),
                "volume_path" => locator.volume_path = Some(value),
                _ => {}
            }
        }
        locator.parent_linkage = linkage.ok_or_else(|| bad("parent_linkage missing", 0))?;
        Ok(locator)
    }

    /// Candidate parent paths, in the order they are tried: the relative
    /// path (against the child's directory), then the absolute path.
    pub fn candidates(&self, child: &Path) -> Vec<PathBuf> {
        let dir = child.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        if let Some(rel) = &self.relative_path {
            out.push(dir.join(windows_to_unix(rel)));
        }
        if let Some(abs) = &self.absolute_win32_path {
            let unix = windows_to_unix(abs);
            // Drop a drive letter ("C:") so the path stays usable here.
            let unix = match unix.as_bytes() {
                [d, b':', ..] if d.is_ascii_alphabetic() => unix[2..].to_string(),
                _ => unix,
            };
            out.push(PathBuf::from(unix));
        }
        out
    }
}

fn windows_to_unix(path: &str) -> String {
    path.replace('\\', "/")
}

/// Encodes a locator with the given key/value pairs.
pub(crate) fn encode_locator(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&PARENT_LOCATOR_TYPE.0);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut data_offset = 20 + 12 * pairs.len();
    let mut data = Vec::new();
    for (key, value) in pairs {
        let k: Vec<u8> = key.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let v: Vec<u8> = value.encode_utf16().flat_map(u16::to_le_bytes).collect();
        out.extend_from_slice(&(data_offset as u32).to_le_bytes());
        out.extend_from_slice(&((data_offset + k.len()) as u32).to_le_bytes());
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        data_offset += k.len() + v.len();
        data.extend_from_slice(&k);
        data.extend_from_slice(&v);
    }
    out.extend_from_slice(&data);
    out
}
