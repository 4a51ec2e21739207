//! `vmbdev pack`: packs a host directory into a dynamic VHDX holding a GPT
//! disk with one FAT32 partition.

use std::path::PathBuf;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use vmbdev_pack::{PackFs, PackOptions, PackStep, Progress, pack_directory};

use crate::error::{CliError, print_stdout};
use crate::image::about;
use crate::messages::{count, escape_name};

/// File systems `pack` can write.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FsChoice {
    /// FAT32 with long file names.
    Fat32,
}

/// Arguments of `vmbdev pack`.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The directory to pack.
    dir: PathBuf,
    /// The VHDX to write.
    out: PathBuf,
    /// File system of the partition.
    #[arg(long, value_enum, default_value = "fat32")]
    fs: FsChoice,
    /// Virtual disk size (e.g. 64M, 1G; binary units); default: the tree
    /// plus some slack, at least the FAT32 minimum.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// VHDX block size (power of two, 1M-256M); default: about 1/32 of the
    /// disk, at most 32M.
    #[arg(long, value_parser = parse_block_size)]
    block_size: Option<u32>,
    /// Volume label (up to 11 letters, digits, spaces, '-' or '_').
    #[arg(long)]
    label: Option<String>,
}

/// Parses a byte count with an optional binary suffix: K, M, G, T (also
/// KiB, MB...).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512, 64M or 1G"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{text:?}: unknown size suffix {suffix:?}")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    if !size.is_power_of_two() || !((1 << 20)..=(256 << 20)).contains(&size) {
        return Err(format!(
            "block size {size} is not a power of two from 1M to 256M"
        ));
    }
    Ok(size as u32)
}

/// Refuses an output that would overwrite an input: the directory being
/// packed, or a file that already exists inside it. (A new image inside the
/// directory is fine: the tree is read before the image appears.)
fn check_output(args: &PackArgs) -> Result<(), CliError> {
    let Ok(meta) = std::fs::metadata(&args.out) else {
        return Ok(());
    };
    if meta.is_dir() {
        return Err(about(&args.out, "is a directory"));
    }
    let (Ok(out), Ok(dir)) = (
        std::fs::canonicalize(&args.out),
        std::fs::canonicalize(&args.dir),
    ) else {
        return Ok(());
    };
    if out.starts_with(&dir) {
        return Err(about(
            &args.out,
            format!(
                "is a file inside {}, the directory being packed; refusing to overwrite it",
                args.dir.display()
            ),
        ));
    }
    Ok(())
}

/// Work shorter than this shows no progress bar.
const QUIET_FOR: Duration = Duration::from_millis(700);

/// A progress bar for the pack's long steps, when stderr is a terminal:
/// it appears only once a step has run for [`QUIET_FOR`], so a quick pack
/// prints nothing but its summary.
fn progress() -> Progress {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return Progress::default();
    }
    let state: Mutex<Option<(PackStep, Instant, Option<ProgressBar>)>> = Mutex::new(None);
    Progress::new(move |step, done, total| {
        let Ok(mut state) = state.lock() else {
            return;
        };
        if state.as_ref().is_none_or(|(s, ..)| *s != step) {
            if let Some((_, _, Some(bar))) = state.take() {
                bar.finish_and_clear();
            }
            *state = Some((step, Instant::now(), None));
        }
        let Some((_, started, bar)) = state.as_mut() else {
            return;
        };
        if bar.is_none() && started.elapsed() >= QUIET_FOR && done < total {
            let shown = crate::sparse::progress_bar(total).unwrap_or_else(ProgressBar::hidden);
            shown.set_message(match step {
                PackStep::Files => "copying files",
                PackStep::Image => "writing the VHDX",
            });
            *bar = Some(shown);
        }
        if let Some(bar) = bar {
            bar.set_position(done);
            if done >= total {
                bar.finish_and_clear();
            }
        }
    })
}

/// Runs the pack and prints a one-line summary.
pub fn run(args: &PackArgs) -> Result<(), CliError> {
    let FsChoice::Fat32 = args.fs;
    check_output(args)?;
    let out_dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    crate::signals::sweep_on_signal(out_dir, ".vmbdev-pack-");
    let options = PackOptions {
        fs: PackFs::Fat32,
        disk_size: args.size,
        block_size: args.block_size,
        label: args.label.clone(),
        timestamp: None,
        progress: progress(),
    };
    let report = pack_directory(&args.dir, &args.out, &options)?;
    print_stdout(&format!(
        "{}: {}, {}, {}; disk {} MiB, FAT32 with {}-byte clusters, {} MiB VHDX blocks\n",
        escape_name(&args.out.display().to_string()),
        count(report.files, "file", "files"),
        count(report.dirs, "directory", "directories"),
        count(report.file_bytes, "byte", "bytes"),
        report.disk_size >> 20,
        report.cluster_bytes,
        report.block_size >> 20,
    ))?;
    if report.skipped_count > 0 {
        let named: Vec<String> = report
            .skipped
            .iter()
            .map(|p| escape_name(&p.display().to_string()))
            .collect();
        eprintln!(
            "vmbdev: warning: left out {} (symbolic links, special files or non-UTF-8 names): {}{}",
            count(report.skipped_count, "entry", "entries"),
            named.join(", "),
            if report.skipped_count > named.len() as u64 {
                ", ..."
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
