//! `vmbdev ls`: lists a directory of a host directory or of the file system
//! in a disk image (VHDX, VHD or raw), read through the same `FileTree` the
//! vmbfs device serves.
//!
//! `-l` adds what the file system records: type and Unix mode (ext4) or
//! DOS attribute letters (FAT, NTFS), size, modification time in UTC (ISO
//! 8601) and, for symbolic links, `-> target`. Links are never followed and
//! a recursive listing does not descend through them.

use std::io::Write;
use std::path::{Path, PathBuf};

use vmbdev_fs::{CodePage, EntryKind, FileTree, Metadata, TreeError, TreePath};

use crate::cat::not_found;
use crate::error::CliError;
use crate::image::{FormatChoice, about};
use crate::messages::escape_name;
use crate::output::{Output, stdout_error};

/// Deepest directory a recursive listing descends into; a directory loop
/// in a damaged image stops here.
const MAX_DEPTH: usize = 128;
/// Most entries a recursive listing collects (a looping image with several
/// subdirectories per level would otherwise grow without bound).
const MAX_ENTRIES: usize = 2_000_000;

/// Arguments of `vmbdev ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// A host directory, or a disk image (VHDX, VHD or raw).
    source: PathBuf,
    /// The directory (or file) to list.
    #[arg(default_value = "/")]
    path: String,
    /// List subdirectories too.
    #[arg(short, long)]
    recursive: bool,
    /// Long format: type and mode or attributes, size, modification time
    /// (UTC), name, and `-> target` for symbolic links.
    #[arg(short, long)]
    long: bool,
    /// Print a JSON array of {"path", "type", "size", "modified", "mode",
    /// "attributes", "target", "streams"} (absent fields are not recorded
    /// by the file system).
    #[arg(long)]
    json: bool,
    /// OEM code page of FAT 8.3 names: 437 (default) or 850.
    #[arg(long, default_value = "437")]
    codepage: CodePage,
    /// Partition number to read (as `info` shows it); default: the first
    /// partition with a recognised file system.
    #[arg(long)]
    partition: Option<usize>,
    /// How to read the image (default: by its signatures).
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatChoice,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum LsError {
    /// Listing failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The listing went too deep or too long.
    #[error("{path}: {what} (a directory loop in the image?)")]
    Runaway {
        /// Where it stopped.
        path: String,
        /// Which bound was hit.
        what: String,
    },
}

/// One listed entry.
#[derive(Debug, serde::Serialize)]
struct Listed {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    /// Modification time, ISO 8601 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    modified: Option<String>,
    /// Unix permission bits, `st_mode & 0o7777` (ext4).
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
    /// DOS attribute bits (FAT, NTFS).
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<u32>,
    /// Symbolic-link target, as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Alternate data streams (NTFS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    streams: Vec<String>,
}

impl Listed {
    fn new(path: &TreePath, meta: Metadata) -> Self {
        Self {
            path: path.to_string(),
            kind: kind_name(meta.kind),
            size: meta.size,
            modified: meta.modified.map(|t| t.to_string()),
            mode: meta.mode,
            attributes: meta.attributes,
            target: meta.link_target,
            streams: meta.streams,
        }
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Directory => "dir",
        EntryKind::Symlink => "link",
        EntryKind::Fifo => "fifo",
        EntryKind::Socket => "sock",
        EntryKind::CharDevice => "char",
        EntryKind::BlockDevice => "blk",
    }
}

/// The `ls -l` type letter of a kind.
fn kind_letter(kind: &str) -> char {
    match kind {
        "dir" => 'd',
        "link" => 'l',
        "fifo" => 'p',
        "sock" => 's',
        "char" => 'c',
        "blk" => 'b',
        _ => '-',
    }
}

/// Type letter and permissions (`drwxr-xr-x`) from a Unix mode, or type
/// letter and DOS attribute letters (`-rhsa`: read-only, hidden, system,
/// archive) padded to the same width, or only the type letter.
fn mode_text(e: &Listed) -> String {
    let mut text = String::from(kind_letter(e.kind));
    if let Some(mode) = e.mode {
        for (bit, letter) in [
            (0o400, 'r'),
            (0o200, 'w'),
            (0o100, 'x'),
            (0o040, 'r'),
            (0o020, 'w'),
            (0o010, 'x'),
            (0o004, 'r'),
            (0o002, 'w'),
            (0o001, 'x'),
        ] {
            text.push(if mode & bit != 0 { letter } else { '-' });
        }
    } else if let Some(attributes) = e.attributes {
        for (bit, letter) in [(0x01, 'r'), (0x02, 'h'), (0x04, 's'), (0x20, 'a')] {
            text.push(if attributes & bit != 0 { letter } else { '-' });
        }
        text.push_str("     ");
    } else {
        text.push_str("         ");
    }
    text
}

/// One `ls -l` line.
fn long_line(e: &Listed) -> String {
    let mut line = format!(
        "{} {:>12} {:<20} {}",
        mode_text(e),
        e.size,
        e.modified.as_deref().unwrap_or("-"),
        escape_name(&e.path)
    );
    if let Some(target) = &e.target {
        line.push_str(" -> ");
        line.push_str(&escape_name(target));
    }
    line
}

/// Collects the entries under `start` (or `start` itself when it is a
/// file), sorted by name within each directory, parents before children.
fn collect(tree: &dyn FileTree, start: &TreePath, recursive: bool) -> Result<Vec<Listed>, LsError> {
    let meta = tree.lookup(start)?;
    if meta.kind != EntryKind::Directory {
        return Ok(vec![Listed::new(start, meta)]);
    }
    let mut out = Vec::new();
    // Depth-first with an explicit stack of sorted listings.
    let mut stack: Vec<(TreePath, std::vec::IntoIter<(String, Metadata)>)> =
        vec![(start.clone(), sorted_listing(tree, start)?.into_iter())];
    while let Some((dir, entries)) = stack.last_mut() {
        let Some((name, meta)) = entries.next() else {
            stack.pop();
            continue;
        };
        let child = dir.join(&name);
        let descend = recursive && meta.kind == EntryKind::Directory;
        out.push(Listed::new(&child, meta));
        if out.len() > MAX_ENTRIES {
            return Err(LsError::Runaway {
                path: child.to_string(),
                what: format!("more than {MAX_ENTRIES} entries"),
            });
        }
        if descend {
            if stack.len() >= MAX_DEPTH {
                return Err(LsError::Runaway {
                    path: child.to_string(),
                    what: format!("directories nested deeper than {MAX_DEPTH}"),
                });
            }
            let listing = sorted_listing(tree, &child)?;
            stack.push((child, listing.into_iter()));
        }
    }
    Ok(out)
}

fn sorted_listing(tree: &dyn FileTree, dir: &TreePath) -> Result<Vec<(String, Metadata)>, LsError> {
    let mut listing = tree.read_dir(dir)?;
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(listing)
}

/// Runs the listing.
pub fn run(args: &LsArgs) -> Result<(), CliError> {
    let source = crate::cat::open_source(&args.source, args.partition, args.format, args.codepage)?;
    let start = TreePath::parse(&args.path);
    let entries = collect(&*source.tree, &start, args.recursive).map_err(|e| match e {
        LsError::Tree(TreeError::NotFound(p)) if p == start.to_string() => {
            CliError::new(not_found(&args.source, &args.path))
        }
        LsError::Tree(TreeError::NotFound(p)) => CliError::new(not_found(&args.source, &p)),
        other => about(&args.source, other),
    })?;
    let mut out = std::io::BufWriter::new(Output::create(Path::new("-"), &[])?);
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        entries.iter().try_for_each(|e| {
            if args.long {
                writeln!(out, "{}", long_line(e))
            } else {
                writeln!(out, "{:<4} {:>12} {}", e.kind, e.size, escape_name(&e.path))
            }
        })
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| CliError::from(stdout_error(e)))?;
    Ok(())
}
