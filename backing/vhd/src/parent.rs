//! Parent locators of differencing disks: reading each entry's data and
//! turning it into candidate parent paths, relative paths first.

use std::path::{Path, PathBuf};

use crate::error::VhdError;
use crate::format::{DynamicHeader, PARENT_LOCATORS, platform};

/// Most bytes of locator data read for one entry (a path).
pub const MAX_LOCATOR_BYTES: u32 = 64 * 1024;

/// One decoded parent locator entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// Entry index in the dynamic header (0–7).
    pub index: usize,
    /// Platform code as stored.
    pub code: [u8; 4],
    /// Platform code as text (`"W2ru"`).
    pub platform: String,
    /// File offset of the locator data.
    pub offset: u64,
    /// Bytes of locator data.
    pub length: u32,
    /// The path the data names, when the platform's encoding is one this
    /// reader decodes (`W2ru`, `W2ku`, `Wi2r`, `Wi2k`, `MacX`).
    pub path: Option<String>,
}

impl ParentLocator {
    /// Whether the path is relative to the child's directory.
    pub fn is_relative(&self) -> bool {
        self.code == platform::W2RU || self.code == platform::WI2R
    }
}

/// Text of a four-character code, with unprintable bytes escaped.
pub fn code_text(code: &[u8; 4]) -> String {
    code.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// The used locator entries of `header`, with the file range of their data
/// (not yet read).
pub(crate) fn locator_entries(header: &DynamicHeader) -> Vec<ParentLocator> {
    (0..PARENT_LOCATORS)
        .filter_map(|index| {
            let entry = &header.parent_locators[index];
            (entry.platform_code != platform::NONE).then(|| ParentLocator {
                index,
                code: entry.platform_code,
                platform: code_text(&entry.platform_code),
                offset: entry.platform_data_offset.get(),
                length: entry.platform_data_length.get(),
                path: None,
            })
        })
        .collect()
}

fn bad(locator: &ParentLocator, reason: &'static str) -> VhdError {
    VhdError::BadParentLocator {
        index: locator.index,
        platform: locator.platform.clone(),
        reason,
    }
}

/// Decodes the data of `locator` into its path. Unknown platforms and Mac
/// alias records ([`platform::MAC`]) decode to no path: they are skipped,
/// not refused.
pub(crate) fn decode_path(
    locator: &ParentLocator,
    data: &[u8],
) -> Result<Option<String>, VhdError> {
    let text = match locator.code {
        platform::W2RU | platform::W2KU => {
            if data.len() % 2 != 0 {
                return Err(bad(locator, "odd length for UTF-16LE data"));
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| bad(locator, "invalid UTF-16LE"))?
        }
        platform::WI2R | platform::WI2K => {
            if !data.is_ascii() {
                return Err(bad(locator, "non-ASCII bytes in an ANSI path"));
            }
            String::from_utf8_lossy(data).into_owned()
        }
        platform::MACX => {
            let url = std::str::from_utf8(data).map_err(|_| bad(locator, "invalid UTF-8"))?;
            let rest = url
                .strip_prefix("file://")
                .ok_or_else(|| bad(locator, "not a file:// URL"))?;
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            rest.to_string()
        }
        // Alias records need the Mac OS to resolve.
        platform::MAC => return Ok(None),
        _ => return Ok(None),
    };
    // Writers pad with NULs; a NUL ends the path.
    let text = text.split('\0').next().unwrap_or_default().to_string();
    Ok((!text.is_empty()).then_some(text))
}

/// Candidate parent paths in the order they are tried: relative locators
/// (against the child's directory), then absolute ones, then the parent's
/// file name from the dynamic header beside the child.
pub(crate) fn candidates(
    child: &Path,
    locators: &[ParentLocator],
    parent_name: &str,
) -> Vec<PathBuf> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for locator in locators.iter().filter(|l| l.is_relative()) {
        if let Some(path) = &locator.path {
            push(dir.join(windows_to_unix(path)));
        }
    }
    for locator in locators.iter().filter(|l| !l.is_relative()) {
        if let Some(path) = &locator.path {
            push(PathBuf::from(strip_drive(&windows_to_unix(path))));
        }
    }
    if !parent_name.is_empty() {
        let name = windows_to_unix(parent_name);
        let base = name.rsplit('/').next().unwrap_or_default();
        if !base.is_empty() {
            push(dir.join(base));
        }
    }
    out
}

/// The parent's file name from the dynamic header (UTF-16BE, NUL padded);
/// an undecodable name is empty (it is only a last-resort hint).
pub(crate) fn parent_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).unwrap_or_default()
}

fn windows_to_unix(path: &str) -> String {
    path.replace('\\', "/")
}

/// Drops a drive letter (`C:`) so an absolute Windows path is usable here.
fn strip_drive(path: &str) -> String {
    match path.as_bytes() {
        [d, b':', ..] if d.is_ascii_alphabetic() => path[2..].to_string(),
        _ => path.to_string(),
    }
}
