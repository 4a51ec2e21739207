//! Text the tool shows people: system errors without Rust's decoration,
//! names from images escaped so they cannot drive the terminal, SCSI sense
//! data in words, and counts with the right plural.

use std::fmt::Write as _;

/// A system error as a person reads it: `No such file or directory`, not
/// `No such file or directory (os error 2)`.
pub fn os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// Whether `c` must not reach a terminal as itself: control characters
/// (C0, DEL, C1) and the invisible characters that reorder or split lines.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}' | '\u{feff}'
        )
}

/// Writes `c` as a C-style escape: `\n`, `\t` and friends by name, anything
/// else as the octal value of each UTF-8 byte (`\033`, `\177`, `\302\233`),
/// as `ls -b` does.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\u{b}' => out.push_str("\\v"),
        '\u{c}' => out.push_str("\\f"),
        '\r' => out.push_str("\\r"),
        _ => {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "\\{byte:03o}");
            }
        }
    }
}

/// A name for human output: control and invisible characters escaped (see
/// [`push_escaped`]) and a backslash doubled, so every name prints on one
/// line and reads back unambiguously.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// A message for stderr: control characters escaped (a name from an
/// image cannot start a new line or recolour the terminal); backslashes
/// are left alone, as paths may hold them.
pub fn escape_message(message: &str) -> String {
    if !message.chars().any(needs_escape) {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// `1 file`, `2 files`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The sense key's name.
pub fn sense_key_name(key: u8) -> &'static str {
    match key & 0xf {
        0x0 => "no sense",
        0x1 => "recovered error",
        0x2 => "not ready",
        0x3 => "medium error",
        0x4 => "hardware error",
        0x5 => "illegal request",
        0x6 => "unit attention",
        0x7 => "data protect",
        0x8 => "blank check",
        0x9 => "vendor specific",
        0xa => "copy aborted",
        0xb => "aborted command",
        0xd => "volume overflow",
        0xe => "miscompare",
        _ => "reserved sense key",
    }
}

/// The additional sense code's meaning, for the codes a virtual disk
/// reports.
pub fn asc_name(asc: u8) -> Option<&'static str> {
    Some(match asc {
        0x00 => "no additional sense information",
        0x04 => "logical unit not ready",
        0x11 => "unrecovered read error",
        0x0c => "write error",
        0x20 => "invalid command operation code",
        0x21 => "logical block address out of range",
        0x24 => "invalid field in CDB",
        0x25 => "logical unit not supported",
        0x27 => "write protected",
        0x29 => "power on or reset occurred",
        0x3a => "medium not present",
        0x44 => "internal target failure",
        _ => return None,
    })
}

/// Sense key and ASC in words: `medium error: unrecovered read error`.
pub fn sense_text(key: u8, asc: u8) -> String {
    match asc_name(asc) {
        Some(what) => format!("{}: {what}", sense_key_name(key)),
        None => format!("{} (additional sense code {asc:#04x})", sense_key_name(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_like_ls_b() {
        assert_eq!(escape_name("plain name.txt"), "plain name.txt");
        assert_eq!(escape_name("a\nb"), "a\\nb");
        assert_eq!(escape_name("\u{1b}[31mred"), "\\033[31mred");
        assert_eq!(escape_name("del\u{7f}"), "del\\177");
        assert_eq!(escape_name("back\\slash"), "back\\\\slash");
        assert_eq!(escape_name("csi\u{9b}"), "csi\\302\\233");
        assert_eq!(escape_name("é"), "é");
    }

    #[test]
    fn os_errors_lose_the_code() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(os_error(&e), "No such file or directory");
    }

    #[test]
    fn sense_in_words() {
        assert_eq!(sense_text(3, 0x11), "medium error: unrecovered read error");
        assert_eq!(count(1, "file", "files"), "1 file");
        assert_eq!(count(0, "file", "files"), "0 files");
    }
}
