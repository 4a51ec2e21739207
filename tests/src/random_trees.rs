//! Seeded random source trees for differential tests, with names drawn to
//! stress the naming rules of one file-system family, and the listing a
//! host directory gives of itself (the expected side of every comparison).
//!
//! The same seed always writes the same tree, so a failure names the seed
//! that reproduces it. Names never differ only by letter case where the
//! family folds case (FAT, NTFS); on ext4 such siblings are drawn on
//! purpose.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::images::run;

/// Which naming rules a generated tree stresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// FAT with 8.3 names written in OEM code page 437 or 850.
    Fat(u32),
    /// ext4: byte names, case siblings, links, FIFOs, sparse files.
    Ext4,
    /// NTFS: UTF-16 names folded for lookup, sparse files.
    Ntfs,
}

/// Letters every family accepts in a name.
const ASCII: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// Letters beyond ASCII that exist, with their other case, in both code
/// pages, so mtools stores them unchanged in a short name.
const BOTH_PAGES: &str = "ÉéÜüÅåÇçÑñÄäÖöÆæ";

/// Letters in one code page only, each with its other case in the same
/// page (mtools replaces a letter whose other case is missing).
fn page_letters(code_page: u32) -> &'static str {
    if code_page == 850 {
        "ÕõØøÁáÊêÃã"
    } else {
        "Σσ"
    }
}

/// The character stored as byte 0xE5 in each code page (the on-disk
/// "deleted" marker, which a name starting with it replaces by 0x05).
fn e5_letter(code_page: u32) -> char {
    if code_page == 850 { 'Õ' } else { 'σ' }
}

/// Pieces of long names: spaces, punctuation FAT and NTFS accept in long
/// names, and characters outside every OEM code page.
const LONG_PIECES: [&str; 10] = [
    " ",
    "日本語",
    "ディレクトリ",
    "Grüße",
    "–",
    "résumé",
    "a,b;c",
    "[x]",
    "+=",
    "Ωmega",
];

fn pick(rng: &mut SmallRng, letters: &str) -> char {
    let chars: Vec<char> = letters.chars().collect();
    chars[rng.random_range(0..chars.len())]
}

/// A word of `letters` whose length is drawn from `lens`.
fn word(rng: &mut SmallRng, letters: &str, lens: std::ops::Range<usize>) -> String {
    let len = rng.random_range(lens);
    (0..len).map(|_| pick(rng, letters)).collect()
}

/// An 8.3 name whose letters exist in `code_page`: upper case, lower case
/// (the NT case flags) or mixed (which needs a long name).
fn short_name(rng: &mut SmallRng, code_page: u32) -> String {
    let letters = format!("{ASCII}{BOTH_PAGES}{}", page_letters(code_page));
    let base = word(rng, &letters, 1..9);
    let ext = word(rng, &letters, 0..4);
    let name = if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    };
    let mut name = match rng.random_range(0..3) {
        0 => name.to_uppercase(),
        1 => lower(&name),
        _ => name,
    };
    if rng.random_bool(0.2) {
        // After the case change, which could turn it into another letter.
        name.replace_range(..name.chars().next().unwrap().len_utf8(), "");
        name.insert(0, e5_letter(code_page));
    }
    name
}

/// A long name from words, spaces and non-code-page characters.
fn long_name(rng: &mut SmallRng, extra: &str) -> String {
    let mut name = word(rng, &format!("{ASCII}{extra}"), 1..6);
    // Longer than 8.3 (12 characters), so a long name is always stored:
    // mtools would otherwise keep a short-fitting name in the code page,
    // replacing characters the page lacks.
    let mut pieces = rng.random_range(1..5u32);
    while pieces > 0 || name.chars().count() <= 12 {
        name.push_str(LONG_PIECES[rng.random_range(0..LONG_PIECES.len())]);
        name.push_str(&word(rng, ASCII, 1..6));
        pieces = pieces.saturating_sub(1);
    }
    name
}

/// `text` in lower case letter by letter: `str::to_lowercase` turns a
/// final Σ into ς, which no OEM code page holds and no file system's
/// case folding produces.
pub fn lower(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// A name for `family` not yet used in the directory (`taken` holds the
/// names as the family compares them).
fn fresh_name(rng: &mut SmallRng, family: Family, taken: &mut BTreeSet<String>) -> String {
    loop {
        let name = match family {
            Family::Fat(cp) if rng.random_bool(0.6) => short_name(rng, cp),
            Family::Fat(cp) => long_name(rng, page_letters(cp)),
            Family::Ntfs | Family::Ext4 => long_name(rng, BOTH_PAGES),
        };
        let key = match family {
            Family::Ext4 => name.clone(),
            _ => lower(&name),
        };
        if taken.insert(key) {
            return name;
        }
    }
}

/// The other-case spellings of `name` (ext4 keeps them all as siblings).
fn case_siblings(name: &str) -> Vec<String> {
    let mut out = vec![name.to_uppercase(), lower(name)];
    out.retain(|n| n != name);
    out.dedup();
    out
}

/// A file of `size` random bytes.
fn write_file(rng: &mut SmallRng, path: &Path, size: usize) {
    let mut data = vec![0u8; size];
    rng.fill(&mut data[..]);
    fs::write(path, data).unwrap();
}

/// A sparse file: a length of up to 8 MiB with a few islands of data.
fn write_sparse(rng: &mut SmallRng, path: &Path) {
    let file = fs::File::create(path).unwrap();
    let len = rng.random_range(1u64 << 20..8 << 20);
    file.set_len(len).unwrap();
    for _ in 0..rng.random_range(1..4) {
        let mut island = vec![0u8; rng.random_range(1..5000)];
        rng.fill(&mut island[..]);
        let at = rng.random_range(0..len - island.len() as u64);
        file.write_all_at(&island, at).unwrap();
    }
}

/// A random file size: mostly small, some around a block, a few of a MiB.
fn file_size(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..10) {
        0 => 0,
        1..=4 => rng.random_range(1..600),
        5..=8 => rng.random_range(3000..70_000),
        _ => rng.random_range(500_000..1_200_000),
    }
}

/// Writes a random tree of 20 to 40 entries under `root` (created) for
/// `family`, the same for the same seed.
pub fn make_random_tree(root: &Path, family: Family, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    fs::create_dir_all(root).unwrap();
    let mut dirs: Vec<(PathBuf, BTreeSet<String>)> = vec![(root.to_owned(), BTreeSet::new())];
    let total = rng.random_range(20..=40);
    let mut made = 0;
    while made < total {
        let at = rng.random_range(0..dirs.len());
        let name = fresh_name(&mut rng, family, &mut dirs[at].1);
        let path = dirs[at].0.join(&name);
        made += 1;
        match rng.random_range(0..10) {
            0 | 1 if dirs.len() < 8 => {
                fs::create_dir(&path).unwrap();
                dirs.push((path, BTreeSet::new()));
            }
            2 if family != Family::Fat(437) && family != Family::Fat(850) => {
                write_sparse(&mut rng, &path)
            }
            3 if family == Family::Ext4 => special(&mut rng, &path),
            4 if family == Family::Ext4 => {
                write_file(&mut rng, &path, 10);
                for other in case_siblings(&name) {
                    if dirs[at].1.insert(other.clone()) {
                        write_file(&mut rng, &dirs[at].0.join(other), 20);
                        made += 1;
                    }
                }
            }
            _ => {
                let size = file_size(&mut rng);
                write_file(&mut rng, &path, size)
            }
        }
    }
}

/// A fast symbolic link (target shorter than the 60 bytes an inode holds),
/// a slow one, or a FIFO.
fn special(rng: &mut SmallRng, path: &Path) {
    match rng.random_range(0..3) {
        0 => {
            let target = word(rng, ASCII, 1..59);
            std::os::unix::fs::symlink(target, path).unwrap();
        }
        1 => {
            // Components of at most 255 bytes: the reader cannot decode
            // a target with a longer one (it lists such a link without
            // its target).
            let target = format!(
                "../{}/{}",
                word(rng, ASCII, 60..256),
                word(rng, ASCII, 1..256)
            );
            std::os::unix::fs::symlink(target, path).unwrap();
        }
        _ => run(std::process::Command::new("mkfifo").arg(path)),
    }
}

/// One entry of a listing: absolute path, type (`file`, `dir`, `link`,
/// `fifo`), size (a link's is its target's length) and link target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    /// `/`-separated path from the root, starting with `/`.
    pub path: String,
    /// The kind, as `vmbdev ls --json` names it.
    pub kind: String,
    /// Bytes (0 for directories and FIFOs).
    pub size: u64,
    /// A symbolic link's target.
    pub target: Option<String>,
}

/// Everything under `root`, sorted by path, links not followed.
pub fn source_listing(root: &Path) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let child = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(root.join(&child)).unwrap();
            let ft = meta.file_type();
            let path = format!("/{}", child.to_str().unwrap());
            let (kind, size, target) = if ft.is_dir() {
                stack.push(child);
                ("dir", 0, None)
            } else if ft.is_symlink() {
                let target = fs::read_link(root.join(&child)).unwrap();
                let target = target.to_str().unwrap().to_owned();
                ("link", target.len() as u64, Some(target))
            } else if ft.is_fifo() {
                ("fifo", 0, None)
            } else {
                ("file", meta.len(), None)
            };
            out.push(Listed {
                path,
                kind: kind.to_owned(),
                size,
                target,
            });
        }
    }
    out.sort();
    out
}
