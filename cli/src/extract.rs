//! `vmbdev extract SOURCE [PATH|GLOB]... -C DIR`: copies files and whole
//! trees out of a disk image's file system (or a host directory) into DIR.
//!
//! Entries are listed and read through the [`FileTree`] the vmbfs device
//! serves for `cat`, directly rather than through the vmbfs client: the
//! protocol has no directory listing, and a path sent over it is parsed
//! again by the device (`\` splits it, `..` climbs), so a name holding a
//! backslash could not be asked for by name and a hostile one could make a
//! request read another file than the one listed.
//!
//! Nothing is written outside DIR, whatever the image's names:
//!
//! - a name that is empty, `.`, `..`, or holds `/` or NUL is skipped, as is
//!   a name a directory lists twice or one that lands on a file this run
//!   already wrote (names that differ only where the host's file system
//!   does not tell them apart);
//! - a directory that exists in DIR is merged into; a symbolic link there
//!   is never followed (the entry is skipped);
//! - each file is written under a temporary name (`O_EXCL | O_NOFOLLOW`)
//!   and put in place only when complete, by a hard link that fails if
//!   anything is there already (so an existing file, or a link pointing
//!   elsewhere, is neither overwritten nor followed), or with
//!   `--overwrite` by a rename over it (a link is replaced, not followed);
//! - an image being read is never replaced, even with `--overwrite`.
//!
//! Each skipped entry is reported on stderr with the reason; the command
//! then ends with status 1. The last line is a summary.
//!
//! Checks on what is already in DIR are made by path, one component at a
//! time; they guard against what an image holds and what DIR held before,
//! not against another process changing DIR while the extraction runs.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use vmbdev_fs::{EntryKind, FileTree, Metadata, TreeError, TreePath};

use crate::cat::{Source, open_source};
use crate::error::CliError;
use crate::image::{FormatChoice, about};
use crate::messages::{count, escape_message, escape_name};
use crate::output::{Output, OutputError};

/// Deepest directory the extraction descends into; a directory loop in a
/// damaged image stops here.
const MAX_DEPTH: usize = 128;
/// Most entries one extraction visits.
const MAX_ENTRIES: u64 = 10_000_000;
/// Bytes read from the tree per request.
const CHUNK: usize = 1 << 20;

/// Arguments of `vmbdev extract`.
#[derive(Debug, clap::Args)]
pub struct ExtractArgs {
    /// A host directory, or a disk image (VHDX, VHD or raw).
    source: PathBuf,
    /// Files or directories to extract, from the root of the tree (`/` or
    /// `\` separated). A component may hold the wildcards `*`, `?` and
    /// `[...]`, matched case-sensitively against the names the tree lists.
    #[arg(default_value = "/")]
    paths: Vec<String>,
    /// The directory to extract into (created if missing). Paths keep their
    /// place below the root: `/docs/a.txt` becomes `DIR/docs/a.txt`.
    #[arg(short = 'C', long = "directory", value_name = "DIR")]
    directory: PathBuf,
    /// Replace files that exist in DIR (a symbolic link there is replaced
    /// by the file, never followed).
    #[arg(long)]
    overwrite: bool,
    /// Partition number to read (as `info` shows it); default: the first
    /// partition with a recognised file system.
    #[arg(long)]
    partition: Option<usize>,
    /// How to read the image (default: by its signatures).
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatChoice,
    /// OEM code page of FAT 8.3 names: 437 (default) or 850.
    #[arg(long, default_value = "437")]
    codepage: vmbdev_fs::CodePage,
}

/// Why one entry was not extracted.
#[derive(Debug, thiserror::Error)]
pub enum SkipReason {
    /// The name could leave DIR or cannot be a file name here.
    #[error("name refused: {0}")]
    UnsafeName(&'static str),
    /// The directory lists the same name twice.
    #[error("the directory lists this name more than once")]
    Duplicate,
    /// The name lands on a file this run already wrote.
    #[error("{}: collides with a file already extracted (names the host does not tell apart)", .0.display())]
    Collides(PathBuf),
    /// Something is already at the destination.
    #[error("{}: exists; not overwritten (use --overwrite to replace it)", .0.display())]
    Exists(PathBuf),
    /// A symbolic link stands where a directory is needed.
    #[error("{}: is a symbolic link; not followed", .0.display())]
    Symlink(PathBuf),
    /// A non-directory stands where a directory is needed.
    #[error("{}: exists and is not a directory", .0.display())]
    NotDirectory(PathBuf),
    /// A directory stands where the file would go.
    #[error("{}: is a directory; not replaced by a file", .0.display())]
    IsDirectory(PathBuf),
    /// The destination is one of the images being read.
    #[error("{}: is the image being read; refusing to replace it", .0.display())]
    IsInput(PathBuf),
    /// No entry matches the path or pattern given.
    #[error("no such file or directory")]
    NotFound,
    /// Listing or reading the tree failed.
    #[error("reading: {0}")]
    Tree(#[from] TreeError),
    /// Reading the file's bytes `start..end` failed.
    #[error("could not read the file's bytes {start}..{end}: {source}")]
    ReadAt {
        /// First byte asked for.
        start: u64,
        /// Byte after the last one asked for.
        end: u64,
        /// What the file system said.
        source: TreeError,
    },
    /// The file ended before the size its directory entry gives.
    #[error("the file system gives {expected} bytes but the file ends after {got}")]
    Short {
        /// Size from the directory entry.
        expected: u64,
        /// Bytes read.
        got: u64,
    },
    /// The extraction went too deep or too long.
    #[error("{0} (a directory loop in the image?)")]
    Runaway(String),
    /// Creating or writing in DIR failed.
    #[error(transparent)]
    Write(#[from] OutputError),
}

/// What an extraction did.
#[derive(Debug, Default)]
struct Totals {
    files: u64,
    directories: u64,
    bytes: u64,
    skipped: u64,
}

/// One extraction run.
struct Extractor<'a> {
    tree: &'a dyn FileTree,
    /// SOURCE as given, for messages.
    source: &'a Path,
    overwrite: bool,
    /// (device, inode) of every image read.
    inputs: Vec<(u64, u64)>,
    /// (device, inode) of every file this run wrote.
    written: HashSet<(u64, u64)>,
    visited: u64,
    totals: Totals,
    buf: Vec<u8>,
}

/// Whether `name` may become one file name inside DIR; the reason if not.
pub fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name is empty")
    } else if name == "." {
        Some("the name is \".\"")
    } else if name == ".." {
        Some("the name is \"..\"")
    } else if name.contains('/') {
        Some("the name contains \"/\"")
    } else if name.contains('\0') {
        Some("the name contains a NUL character")
    } else {
        None
    }
}

/// The modification time an extracted file gets: the tree's [`Metadata`]
/// does not record times yet, so the file keeps the time it was written.
fn modification_time(_meta: &Metadata) -> Option<SystemTime> {
    None
}

/// Gives an extracted file the times its entry records (the one place
/// times are set).
fn set_times(file: &File, meta: &Metadata) -> std::io::Result<()> {
    match modification_time(meta) {
        Some(mtime) => file.set_modified(mtime),
        None => Ok(()),
    }
}

impl Extractor<'_> {
    /// Reports that `path` was not extracted and why.
    fn skip(&mut self, path: &TreePath, reason: &SkipReason) {
        self.totals.skipped += 1;
        let line = format!(
            "vmbdev: {}: {}: skipped: {reason}",
            self.source.display(),
            escape_name(&path.to_string())
        );
        eprintln!("{}", escape_message(&line));
    }

    /// Makes sure `dir` is a real directory (created if missing, merged
    /// into if it exists, refused if it is a link or anything else).
    fn ensure_dir(&self, dir: &Path) -> Result<(), SkipReason> {
        let io = |source| {
            SkipReason::Write(OutputError::Io {
                path: dir.to_owned(),
                source,
            })
        };
        for attempt in 0..2 {
            match std::fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SkipReason::Symlink(dir.to_owned()));
                }
                Ok(m) if m.is_dir() => return Ok(()),
                Ok(_) => return Err(SkipReason::NotDirectory(dir.to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            match std::fs::create_dir(dir) {
                Ok(()) => return Ok(()),
                // Made by someone else meanwhile: look again, once.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt == 0 => {}
                Err(e) => return Err(io(e)),
            }
        }
        Err(SkipReason::NotDirectory(dir.to_owned()))
    }

    /// Extracts the entry `path` (named `name` in its directory) into
    /// `host_parent`.
    fn entry(
        &mut self,
        path: &TreePath,
        name: &str,
        meta: Metadata,
        host_parent: &Path,
        depth: usize,
    ) {
        if let Some(why) = unsafe_name(name) {
            return self.skip(path, &SkipReason::UnsafeName(why));
        }
        self.visited += 1;
        if self.visited > MAX_ENTRIES {
            return self.skip(
                path,
                &SkipReason::Runaway(format!("more than {MAX_ENTRIES} entries")),
            );
        }
        let host = host_parent.join(name);
        match meta.kind {
            EntryKind::File => match self.file(path, &meta, host_parent, OsStr::new(name)) {
                Ok(()) => {
                    self.totals.files += 1;
                    self.totals.bytes += meta.size;
                }
                Err(reason) => self.skip(path, &reason),
            },
            EntryKind::Directory => {
                if depth >= MAX_DEPTH {
                    return self.skip(
                        path,
                        &SkipReason::Runaway(format!("directories nested deeper than {MAX_DEPTH}")),
                    );
                }
                match self.ensure_dir(&host) {
                    Ok(()) => {
                        self.totals.directories += 1;
                        self.children(path, &host, depth + 1);
                    }
                    Err(reason) => self.skip(path, &reason),
                }
            }
            // Links are never followed; special files hold no bytes.
            other => self.skip(
                path,
                &SkipReason::Tree(TreeError::Unsupported {
                    path: path.to_string(),
                    what: format!("{other:?} entries are not extracted"),
                }),
            ),
        }
    }

    /// Extracts everything the directory `path` lists into `host`.
    fn children(&mut self, path: &TreePath, host: &Path, depth: usize) {
        let mut listing = match self.tree.read_dir(path) {
            Ok(listing) => listing,
            Err(e) => return self.skip(path, &SkipReason::Tree(e)),
        };
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        let mut previous: Option<String> = None;
        for (name, meta) in listing {
            let child = path.join(&name);
            if previous.as_deref() == Some(name.as_str()) {
                self.skip(&child, &SkipReason::Duplicate);
                continue;
            }
            self.entry(&child, &name, meta, host, depth);
            previous = Some(name);
        }
    }

    /// Writes the file `path` as `host_parent/name`.
    fn file(
        &mut self,
        path: &TreePath,
        meta: &Metadata,
        host_parent: &Path,
        name: &OsStr,
    ) -> Result<(), SkipReason> {
        let target = host_parent.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(existing) => {
                let id = (existing.dev(), existing.ino());
                if self.written.contains(&id) {
                    return Err(SkipReason::Collides(target));
                }
                if self.inputs.contains(&id) {
                    return Err(SkipReason::IsInput(target));
                }
                if !self.overwrite {
                    return Err(SkipReason::Exists(target));
                }
                if existing.is_dir() {
                    return Err(SkipReason::IsDirectory(target));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SkipReason::Write(OutputError::Io {
                    path: target,
                    source,
                }));
            }
        }
        let mut out = Output::stage_in(host_parent, name)?;
        let mut offset = 0u64;
        while offset < meta.size {
            let want = (meta.size - offset).min(CHUNK as u64) as usize;
            let n = self
                .tree
                .read_at(path, offset, &mut self.buf[..want])
                .map_err(|source| SkipReason::ReadAt {
                    start: offset,
                    end: offset + want as u64,
                    source,
                })?;
            if n == 0 {
                return Err(SkipReason::Short {
                    expected: meta.size,
                    got: offset,
                });
            }
            out.write_all(&self.buf[..n])?;
            offset += n as u64;
        }
        let file = out.finish_in_dir(self.overwrite).map_err(|e| match e {
            OutputError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                SkipReason::Exists(target.clone())
            }
            other => SkipReason::Write(other),
        })?;
        let io = |source| {
            SkipReason::Write(OutputError::Io {
                path: target.clone(),
                source,
            })
        };
        set_times(&file, meta).map_err(io)?;
        let written = file.metadata().map_err(io)?;
        self.written.insert((written.dev(), written.ino()));
        Ok(())
    }

    /// The entries `pattern` names, each path spelled as the tree lists
    /// it. A component without wildcards that the directory does not list
    /// exactly is looked up as the file system would (case-insensitively
    /// on FAT and NTFS).
    fn expand(&self, pattern: &TreePath) -> Result<Vec<(TreePath, Metadata)>, TreeError> {
        let root = self.tree.lookup(&TreePath::root())?;
        let mut current = vec![(TreePath::root(), root)];
        for component in pattern.components() {
            let mut next = Vec::new();
            for (dir, meta) in &current {
                if meta.kind != EntryKind::Directory {
                    continue;
                }
                let mut listing = self.tree.read_dir(dir)?;
                listing.sort_by(|a, b| a.0.cmp(&b.0));
                listing.dedup_by(|a, b| a.0 == b.0);
                if is_pattern(component) {
                    let glob = Glob::parse(component);
                    next.extend(
                        listing
                            .into_iter()
                            .filter(|(name, _)| glob.matches(name))
                            .map(|(name, meta)| (dir.join(&name), meta)),
                    );
                } else if let Some((name, meta)) = listing.iter().find(|(n, _)| n == component) {
                    next.push((dir.join(name), meta.clone()));
                } else if let Ok(meta) = self.tree.lookup(&dir.join(component)) {
                    let folded = component.to_lowercase();
                    let name = listing
                        .iter()
                        .find(|(n, m)| *m == meta && n.to_lowercase() == folded)
                        .map_or(component.as_str(), |(n, _)| n.as_str());
                    next.push((dir.join(name), meta));
                }
            }
            current = next;
        }
        Ok(current)
    }
}

/// Whether a path component holds wildcards.
fn is_pattern(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// One element of a wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This character.
    Literal(char),
    /// `?`: any one character.
    Any,
    /// `*`: any run of characters.
    Star,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A wildcard pattern for one path component: `*`, `?` and `[...]`
/// (`[!...]` or `[^...]` negated, `a-z` ranges, a `]` first is literal; an
/// unclosed `[` is itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Parses `pattern`.
    pub fn parse(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                '[' => {
                    if let Some((token, end)) = parse_class(&chars, i) {
                        tokens.push(token);
                        i = end;
                    } else {
                        tokens.push(Token::Literal('['));
                    }
                }
                c => tokens.push(Token::Literal(c)),
            }
            i += 1;
        }
        Self { tokens }
    }

    /// Whether `name` matches the whole pattern (case-sensitively).
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (mut t, mut n) = (0usize, 0usize);
        // Where to resume after the last `*`: (token after it, name index).
        let mut resume: Option<(usize, usize)> = None;
        loop {
            if t < self.tokens.len() {
                let step = match &self.tokens[t] {
                    Token::Star => {
                        resume = Some((t + 1, n));
                        t += 1;
                        continue;
                    }
                    Token::Any => n < name.len(),
                    Token::Literal(c) => name.get(n) == Some(c),
                    Token::Class { negated, ranges } => name.get(n).is_some_and(|c| {
                        ranges.iter().any(|&(lo, hi)| lo <= *c && *c <= hi) != *negated
                    }),
                };
                if step {
                    t += 1;
                    n += 1;
                    continue;
                }
            } else if n == name.len() {
                return true;
            }
            // Mismatch: let the last `*` take one more character.
            match resume {
                Some((after, from)) if from < name.len() => {
                    resume = Some((after, from + 1));
                    t = after;
                    n = from + 1;
                }
                _ => return false,
            }
        }
    }
}

/// Parses the class opening at `chars[start]` (a `[`): the token and the
/// index of its closing `]`, or None when it is not closed.
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let first = i;
    while i < chars.len() {
        let c = chars[i];
        if c == ']' && i > first {
            return Some((Token::Class { negated, ranges }, i));
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// `path`, resolved through the links of its longest existing ancestor:
/// where it is (or would be) on disk.
fn resolved(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path.to_owned();
    loop {
        if let Ok(real) = std::fs::canonicalize(&at) {
            return rest.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (at.file_name().map(OsStr::to_owned), at.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                at = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_owned()
                };
            }
            _ => return path.to_owned(),
        }
    }
}

/// Removes entries that lie inside another selected directory (they are
/// extracted with it) and repeats.
fn without_nested(mut selected: Vec<(TreePath, Metadata)>) -> Vec<(TreePath, Metadata)> {
    selected.sort_by(|a, b| a.0.components().cmp(b.0.components()));
    selected.dedup_by(|a, b| a.0 == b.0);
    let mut kept: Vec<(TreePath, Metadata)> = Vec::new();
    for (path, meta) in selected {
        let inside = kept.iter().any(|(dir, m)| {
            m.kind == EntryKind::Directory && path.components().starts_with(dir.components())
        });
        if !inside {
            kept.push((path, meta));
        }
    }
    kept
}

/// Runs `vmbdev extract`.
pub fn run(args: &ExtractArgs) -> Result<(), CliError> {
    let Source { tree, guard } =
        open_source(&args.source, args.partition, args.format, args.codepage)?;
    let dest = &args.directory;
    if guard.is_none() {
        // A host directory: DIR inside it would be read while written.
        let source = resolved(&args.source);
        if resolved(dest).starts_with(&source) {
            return Err(about(
                dest,
                format!(
                    "is inside the source directory {}; refusing to extract into it",
                    args.source.display()
                ),
            ));
        }
    }
    let inputs: Vec<(u64, u64)> = guard
        .as_ref()
        .map(|g| {
            g.files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| (m.dev(), m.ino()))
                .collect()
        })
        .unwrap_or_default();
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(about(dest, "exists and is not a directory")),
        Err(_) => {
            std::fs::create_dir_all(dest).map_err(|e| about(dest, crate::messages::os_error(&e)))?
        }
    }
    let mut ex = Extractor {
        tree: &*tree,
        source: &args.source,
        overwrite: args.overwrite,
        inputs,
        written: HashSet::new(),
        visited: 0,
        totals: Totals::default(),
        buf: vec![0u8; CHUNK],
    };
    let mut selected = Vec::new();
    for given in &args.paths {
        let pattern = TreePath::parse(given);
        match ex.expand(&pattern) {
            Ok(found) if found.is_empty() => ex.skip(&pattern, &SkipReason::NotFound),
            Ok(found) => selected.extend(found),
            Err(e) => ex.skip(&pattern, &SkipReason::Tree(e)),
        }
    }
    'selection: for (path, meta) in without_nested(selected) {
        let Some((name, parents)) = path.components().split_last() else {
            ex.children(&path, dest, 0);
            continue;
        };
        // The directories above the entry, made as needed.
        let mut host = dest.clone();
        let mut above = TreePath::root();
        for parent in parents {
            above = above.join(parent);
            if let Some(why) = unsafe_name(parent) {
                ex.skip(&above, &SkipReason::UnsafeName(why));
                continue 'selection;
            }
            host.push(parent);
            if let Err(reason) = ex.ensure_dir(&host) {
                ex.skip(&above, &reason);
                continue 'selection;
            }
        }
        ex.entry(&path, name, meta, &host, parents.len());
    }
    let t = &ex.totals;
    eprintln!(
        "extracted {}, {}, {}; skipped {}",
        count(t.files, "file", "files"),
        count(t.directories, "directory", "directories"),
        count(t.bytes, "byte", "bytes"),
        t.skipped
    );
    drop(guard);
    if t.skipped > 0 {
        Err(CliError::reported())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_names() {
        let m = |p: &str, n: &str| Glob::parse(p).matches(n);
        assert!(m("*.bin", "block.bin"));
        assert!(!m("*.bin", "block.bin.txt"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("b?ock.*", "block.bin"));
        assert!(!m("?", ""));
        assert!(m("[bc]lock", "clock"));
        assert!(!m("[!bc]lock", "clock"));
        assert!(m("[^bc]lock", "flock"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[a-c]x", "dx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[oops", "[oops"));
        assert!(!m("README", "readme"));
        assert!(m("Ünï*", "Ünïcødé ディレクトリ"));
        assert!(m("*é*.bin", "random file 3 é12.bin"));
    }

    #[test]
    fn unsafe_names_are_named() {
        for name in ["", ".", "..", "a/b", "/abs", "nul\0x"] {
            assert!(unsafe_name(name).is_some(), "{name:?}");
        }
        for name in ["...", "a\\b", "tab\there", ".hidden", "ü"] {
            assert!(unsafe_name(name).is_none(), "{name:?}");
        }
    }
}
