//! `vmbdev ls`: lists a directory of a host directory or of the file system
//! in a disk image (VHDX, VHD or raw), read through the same `FileTree` the
//! vmbfs device serves.

use std::io::Write;
use std::path::{Path, PathBuf};

use vmbdev_fs::{EntryKind, FileTree, TreeError, TreePath};

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
    /// Print a JSON array of {"path", "type", "size"}.
    #[arg(long)]
    json: bool,
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
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Directory => "dir",
    }
}

/// Collects the entries under `start` (or `start` itself when it is a
/// file), sorted by name within each directory, parents before children.
fn collect(tree: &dyn FileTree, start: &TreePath, recursive: bool) -> Result<Vec<Listed>, LsError> {
    let meta = tree.lookup(start)?;
    if meta.kind == EntryKind::File {
        return Ok(vec![Listed {
            path: start.to_string(),
            kind: kind_name(meta.kind),
            size: meta.size,
        }]);
    }
    let mut out = Vec::new();
    // Depth-first with an explicit stack of sorted listings.
    let mut stack: Vec<(TreePath, std::vec::IntoIter<(String, vmbdev_fs::Metadata)>)> =
        vec![(start.clone(), sorted_listing(tree, start)?.into_iter())];
    while let Some((dir, entries)) = stack.last_mut() {
        let Some((name, meta)) = entries.next() else {
            stack.pop();
            continue;
        };
        let child = dir.join(&name);
        out.push(Listed {
            path: child.to_string(),
            kind: kind_name(meta.kind),
            size: meta.size,
        });
        if out.len() > MAX_ENTRIES {
            return Err(LsError::Runaway {
                path: child.to_string(),
                what: format!("more than {MAX_ENTRIES} entries"),
            });
        }
        if recursive && meta.kind == EntryKind::Directory {
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

fn sorted_listing(
    tree: &dyn FileTree,
    dir: &TreePath,
) -> Result<Vec<(String, vmbdev_fs::Metadata)>, LsError> {
    let mut listing = tree.read_dir(dir)?;
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(listing)
}

/// Runs the listing.
pub fn run(args: &LsArgs) -> Result<(), CliError> {
    let source = crate::cat::open_source(&args.source, args.partition, args.format)?;
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
            writeln!(out, "{:<4} {:>12} {}", e.kind, e.size, escape_name(&e.path))
        })
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| CliError::from(stdout_error(e)))?;
    Ok(())
}
