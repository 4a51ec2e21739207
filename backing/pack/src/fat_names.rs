//! Names in a FAT directory written by [`fat_writer`](crate::fat_writer):
//! which long names FAT can hold, the 8.3 alias each one gets (unique in
//! its directory, with a `~N` tail when the basis is lossy or taken), and
//! the long-name (LFN) entries that carry the full UTF-16 name.

use std::collections::HashSet;

use vmbdev_fs::fat_format::{ATTR_LONG_NAME, DIR_ENTRY_SIZE, short_name_checksum};

/// Longest long name, in UTF-16 units.
pub const MAX_LONG_NAME_UNITS: usize = 255;
/// UTF-16 units carried by one long-name entry.
const UNITS_PER_ENTRY: usize = 13;
/// Byte offsets of the 13 units inside a long-name entry.
const UNIT_OFFSETS: [usize; UNITS_PER_ENTRY] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// Characters a long name may not contain (besides control characters).
const FORBIDDEN_LONG: &[char] = &['"', '*', '/', ':', '<', '>', '?', '\\', '|'];
/// Punctuation allowed in an 8.3 name besides upper-case letters and digits.
const SHORT_PUNCTUATION: &[u8] = b"$%'-_@~`!(){}^#&";

/// Why a host name cannot be a FAT long name.
pub fn long_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("empty name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| FORBIDDEN_LONG.contains(c) || u32::from(*c) < 0x20)
    {
        return Some(format!("character {c:?} is not allowed in FAT names"));
    }
    if name.ends_with(['.', ' ']) {
        return Some("FAT names cannot end with a dot or a space".into());
    }
    let units = name.encode_utf16().count();
    if units > MAX_LONG_NAME_UNITS {
        return Some(format!(
            "{units} UTF-16 units, more than FAT's {MAX_LONG_NAME_UNITS}"
        ));
    }
    None
}

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_PUNCTUATION.contains(&b)
}

/// The 11-byte directory form of `name` when it already is a valid
/// upper-case 8.3 name (then no long-name entries are needed).
pub fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    let valid = |part: &str, max: usize| part.len() <= max && part.bytes().all(is_short_char);
    if base.is_empty() || !valid(base, 8) || !valid(ext, 3) || name.ends_with('.') {
        return None;
    }
    Some(pad_short(base.as_bytes(), ext.as_bytes()))
}

fn pad_short(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut raw = [b' '; 11];
    raw[..base.len()].copy_from_slice(base);
    raw[8..8 + ext.len()].copy_from_slice(ext);
    raw
}

/// Maps one character of a long name to its 8.3 form: `None` drops it,
/// and the flag says whether information was lost.
fn short_char(c: char) -> (Option<u8>, bool) {
    if c == ' ' {
        return (None, true);
    }
    if !c.is_ascii() {
        return (Some(b'_'), true);
    }
    let upper = c.to_ascii_uppercase() as u8;
    if is_short_char(upper) {
        (Some(upper), false)
    } else {
        (Some(b'_'), true)
    }
}

/// The basis of an 8.3 alias (base, extension) and whether it lost
/// information, following the Microsoft algorithm: upper-case, drop spaces
/// and leading dots, the extension after the last dot, truncate to 8.3.
fn alias_basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let trimmed = name.trim_start_matches('.');
    let mut lossy = trimmed.len() != name.len();
    let (stem, ext) = match trimmed.rfind('.') {
        Some(at) => (&trimmed[..at], &trimmed[at + 1..]),
        None => (trimmed, ""),
    };
    let mut convert = |part: &str, max: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for c in part.chars() {
            if c == '.' {
                lossy = true;
                continue;
            }
            let (mapped, lost) = short_char(c);
            lossy |= lost;
            if let Some(b) = mapped {
                if out.len() < max {
                    out.push(b);
                } else {
                    lossy = true;
                }
            }
        }
        out
    };
    let mut base = convert(stem, 8);
    let ext = convert(ext, 3);
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    (base, ext, lossy)
}

/// Assigns 8.3 aliases to the names of one directory.
///
/// Names that already are exact upper-case 8.3 names are reserved first, so
/// a generated alias never takes one of them.
#[derive(Debug, Default)]
pub struct ShortNameAllocator {
    taken: HashSet<[u8; 11]>,
}

impl ShortNameAllocator {
    /// An allocator that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves an exact 8.3 name; false when it was already taken.
    pub fn reserve(&mut self, raw: [u8; 11]) -> bool {
        self.taken.insert(raw)
    }

    /// A fresh alias for `long_name`: the basis itself when nothing was
    /// lost and it is free, else the basis with the first free `~N` tail.
    /// `None` only when a million tails are all taken.
    pub fn alias(&mut self, long_name: &str) -> Option<[u8; 11]> {
        let (base, ext, lossy) = alias_basis(long_name);
        if !lossy {
            let raw = pad_short(&base, &ext);
            if self.taken.insert(raw) {
                return Some(raw);
            }
        }
        for n in 1..1_000_000u32 {
            let tail = format!("~{n}");
            let keep = base.len().min(8 - tail.len());
            let mut with_tail = base[..keep].to_vec();
            with_tail.extend_from_slice(tail.as_bytes());
            let raw = pad_short(&with_tail, &ext);
            if self.taken.insert(raw) {
                return Some(raw);
            }
        }
        None
    }
}

/// Number of long-name entries `name` needs.
pub fn long_entry_count(name: &str) -> usize {
    name.encode_utf16().count().div_ceil(UNITS_PER_ENTRY)
}

/// The long-name entries for `name` in on-disk order (the last fragment,
/// flagged 0x40, first), each carrying the checksum of `short`.
pub fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; DIR_ENTRY_SIZE]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let count = units.len().div_ceil(UNITS_PER_ENTRY);
    // A name that does not fill its last entry ends with NUL, then 0xFFFF.
    if units.len() % UNITS_PER_ENTRY != 0 {
        units.push(0);
        units.resize(count * UNITS_PER_ENTRY, 0xFFFF);
    }
    let checksum = short_name_checksum(short);
    (1..=count)
        .rev()
        .map(|ordinal| {
            let mut e = [0u8; DIR_ENTRY_SIZE];
            e[0] = ordinal as u8 | if ordinal == count { 0x40 } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = checksum;
            let chunk = &units[(ordinal - 1) * UNITS_PER_ENTRY..ordinal * UNITS_PER_ENTRY];
            for (unit, at) in chunk.iter().zip(UNIT_OFFSETS) {
                e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &[u8; 11]) -> String {
        String::from_utf8_lossy(raw).into_owned()
    }

    #[test]
    fn exact_names_need_no_alias() {
        assert_eq!(text(&exact_short_name("README").unwrap()), "README     ");
        assert_eq!(text(&exact_short_name("A.B").unwrap()), "A       B  ");
        for long in [
            "readme",
            "a.txt",
            "TOOLONGNAME",
            "A.TEXT",
            "A B",
            "A.B.C",
            "A.",
        ] {
            assert!(exact_short_name(long).is_none(), "{long}");
        }
    }

    #[test]
    fn aliases_follow_the_basis_and_tail_rules() {
        let mut names = ShortNameAllocator::new();
        assert_eq!(text(&names.alias("readme.txt").unwrap()), "README  TXT");
        // Lossless but taken: a tail.
        assert_eq!(text(&names.alias("ReadMe.txt").unwrap()), "README~1TXT");
        assert_eq!(
            text(&names.alias("a rather long name.html").unwrap()),
            "ARATHE~1HTM"
        );
        assert_eq!(
            text(&names.alias("a rather long name.html").unwrap()),
            "ARATHE~2HTM"
        );
        assert_eq!(text(&names.alias(".bashrc").unwrap()), "BASHRC~1   ");
        assert_eq!(text(&names.alias("Grüße.txt").unwrap()), "GR__E~1 TXT");
        assert_eq!(text(&names.alias("日本").unwrap()), "__~1       ");
        assert_eq!(text(&names.alias("a+b.c.d").unwrap()), "A_BC~1  D  ");
        for _ in 0..20 {
            names.alias("x long.txt").unwrap();
        }
        assert_eq!(text(&names.alias("x long.txt").unwrap()), "XLONG~21TXT");
    }

    #[test]
    fn long_entries_split_pad_and_checksum() {
        let short = *b"ARATHE~1HTM";
        // The Microsoft specification's formulation of the checksum.
        let mut sum = 0u8;
        for &c in &short {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(c);
        }
        let name = "a rather long name.html"; // 23 units: two entries
        let entries = long_entries(name, &short);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0], 0x42);
        assert_eq!(entries[1][0], 0x01);
        for e in &entries {
            assert_eq!(e[11], 0x0F);
            assert_eq!(e[13], sum);
            assert_eq!(&e[26..28], &[0, 0]);
        }
        let units: Vec<u16> = entries
            .iter()
            .rev()
            .flat_map(|e| UNIT_OFFSETS.map(|at| u16::from_le_bytes([e[at], e[at + 1]])))
            .collect();
        let expected: Vec<u16> = name.encode_utf16().collect();
        assert_eq!(&units[..23], &expected[..]);
        assert_eq!(units[23], 0);
        assert_eq!(&units[24..], &[0xFFFF, 0xFFFF]);
        // Exactly 13 units: no terminator.
        let full = long_entries("abcdefghijklm", &short);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0][0], 0x41);
        assert_eq!(
            u16::from_le_bytes([full[0][30], full[0][31]]),
            u16::from(b'm')
        );
    }

    #[test]
    fn bad_long_names_are_named() {
        for bad in ["a:b", "a?", "tab\there", "dot.", "space ", ""] {
            assert!(long_name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(long_name_problem(&"x".repeat(256)).is_some());
        assert!(long_name_problem(&"x".repeat(255)).is_none());
        assert!(long_name_problem("Grüße – 日本語.txt").is_none());
    }
}
