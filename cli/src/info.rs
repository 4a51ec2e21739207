//! `vmbdev info`: describes a disk image — format, geometry, VHDX state
//! (BAT, log, parent chain), VHD state (type, CHS geometry, creator, blocks,
//! parent), host file size and allocated bytes, partitions and the file
//! system on each — as aligned key/value lines or, with `--json`, one JSON
//! object.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vmbdev_block::BlockDevice;
use vmbdev_fs::{CodePage, FatType, FsKind, PartitionSummary, details_with, survey, usage};
use vmbdev_partition::PartitionDevice;
use vmbdev_partition::{PartitionScheme, PartitionType};
use vmbdev_vhd::{DiskType, Vhd};
use vmbdev_vhdx::{BatCounts, Guid, LogState, Vhdx};

use crate::error::{CliError, print_stdout};
use crate::image::{self, Disk, FormatChoice, about};
use crate::messages::{escape_name, os_error};

/// Arguments of `vmbdev info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The disk image (VHDX, VHD or raw).
    image: PathBuf,
    /// Print one JSON object instead of key/value lines.
    #[arg(long)]
    json: bool,
    /// How to read the image (default: by its signatures).
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatChoice,
    /// OEM code page of FAT labels: 437 (default) or 850.
    #[arg(long, default_value = "437")]
    codepage: CodePage,
}

/// Everything `info` reports about an image.
#[derive(Debug, Serialize)]
pub struct ImageReport {
    /// Path as given.
    pub path: String,
    /// `"vhdx"`, `"vhd"` or `"raw"`.
    pub format: &'static str,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Length of the image file on the host, in bytes.
    pub file_size: u64,
    /// Host storage the image file takes (`st_blocks` × 512): less than
    /// its length when it is sparse.
    pub allocated_bytes: u64,
    /// Logical sector size in bytes.
    pub logical_sector_size: u32,
    /// Physical sector size in bytes.
    pub physical_sector_size: u32,
    /// VHDX payload block size in bytes.
    pub block_size: Option<u32>,
    /// VHDX page-83 disk id.
    pub disk_id: Option<String>,
    /// VHDX BAT state counts.
    pub bat: Option<BatReport>,
    /// VHDX log state at open.
    pub log: Option<LogReport>,
    /// VHD footer and dynamic header facts.
    pub vhd: Option<VhdReport>,
    /// Parent images of a differencing VHDX or VHD, nearest first.
    pub parent_chain: Vec<String>,
    /// Partitions (a `none` scheme pseudo-partition when there is no table).
    pub partitions: Vec<PartitionReport>,
}

/// How many BAT payload entries are in each state.
#[derive(Debug, Serialize)]
pub struct BatReport {
    /// FULLY_PRESENT blocks.
    pub fully_present: u64,
    /// PARTIALLY_PRESENT blocks.
    pub partially_present: u64,
    /// NOT_PRESENT blocks.
    pub not_present: u64,
    /// ZERO blocks.
    pub zero: u64,
    /// UNMAPPED blocks.
    pub unmapped: u64,
    /// UNDEFINED blocks.
    pub undefined: u64,
    /// Present sector bitmap blocks.
    pub sector_bitmaps_present: u64,
}

/// What a VHD's footer and dynamic header say.
#[derive(Debug, Serialize)]
pub struct VhdReport {
    /// `"fixed"`, `"dynamic"` or `"differencing"`.
    pub disk_type: &'static str,
    /// CHS geometry stored in the footer.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
    /// Size at creation in bytes.
    pub original_size: u64,
    /// Creator application code (`"qemu"`, `"win "`).
    pub creator_app: String,
    /// Creator version as `major.minor`.
    pub creator_version: String,
    /// Creator host OS code (`"Wi2k"`).
    pub creator_host_os: String,
    /// Blocks of a dynamic or differencing disk.
    pub blocks: Option<u64>,
    /// Of those, blocks allocated in this file.
    pub allocated_blocks: Option<u64>,
    /// The parent's file name from the dynamic header.
    pub parent_name: Option<String>,
    /// The parent's unique id.
    pub parent_unique_id: Option<String>,
    /// Parent locators as `code: path`.
    pub parent_locators: Vec<String>,
}

/// The VHDX log when the image was opened.
#[derive(Debug, Serialize)]
pub struct LogReport {
    /// `"clean"`, or `"replayed"` when it was dirty and replayed in memory.
    pub state: &'static str,
    /// Entries replayed (0 when clean).
    pub entries_replayed: u64,
    /// Entries of older log sequences, ignored.
    pub stale_entries_ignored: u64,
}

/// One partition.
#[derive(Debug, Serialize)]
pub struct PartitionReport {
    /// `"gpt"`, `"mbr"` or `"none"` (the whole disk, no table).
    pub scheme: &'static str,
    /// OS partition number (0 for the whole disk).
    pub number: usize,
    /// GPT partition-type GUID.
    pub type_guid: Option<String>,
    /// MBR partition-type byte.
    pub mbr_type: Option<u8>,
    /// GPT unique partition GUID.
    pub unique_guid: Option<String>,
    /// First logical sector.
    pub first_lba: u64,
    /// Last logical sector (inclusive).
    pub last_lba: u64,
    /// Partition size in bytes.
    pub size: u64,
    /// GPT name (empty for MBR).
    pub name: String,
    /// The file system found on it.
    pub file_system: Option<FsReport>,
}

/// A file system found on a partition.
#[derive(Debug, Serialize)]
pub struct FsReport {
    /// `"fat"`, `"ntfs"` or `"ext4"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Volume label when the boot sector or superblock holds one.
    pub label: Option<String>,
    /// Size the file system records for itself, in bytes.
    pub size: Option<u64>,
    /// `"FAT12"`, `"FAT16"` or `"FAT32"` for FAT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fat_type: Option<&'static str>,
    /// Bytes per cluster (FAT) or block (ext4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Free bytes (FAT: FSInfo when valid, otherwise counted; ext4: the
    /// superblock's count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free: Option<u64>,
}

/// Runs `info`.
pub fn run(args: &InfoArgs) -> Result<(), CliError> {
    let report = inspect(&args.image, args.format, args.codepage)?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    print_stdout(&text)
}

/// Opens the image and gathers the report, reading FAT labels in
/// `code_page`.
pub fn inspect(
    path: &Path,
    format: FormatChoice,
    code_page: CodePage,
) -> Result<ImageReport, CliError> {
    let opened = image::open(path, format)?;
    let mut report;
    let device: Arc<dyn BlockDevice> = match opened.disk {
        Disk::Vhdx(vhdx) => {
            report = vhdx_report(path, &vhdx);
            Arc::<Vhdx>::from(vhdx)
        }
        Disk::Vhd(vhd) => {
            report = vhd_report(path, &vhd);
            Arc::<Vhd>::from(vhd)
        }
        Disk::Raw(raw) => {
            if raw.sector_count() == 0 {
                return Err(about(
                    path,
                    "file is smaller than one 512-byte sector: not a disk image",
                ));
            }
            report = device_report(path, "raw", &raw);
            Arc::new(raw)
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| about(path, os_error(&e)))?;
    report.file_size = meta.len();
    report.allocated_bytes = meta.blocks().saturating_mul(512);
    tracing::debug!(path = %path.display(), format = report.format, size = report.virtual_size, "opened image");
    let parts = survey(device.clone()).map_err(|e| about(path, e))?;
    report.partitions = parts
        .into_iter()
        .map(|p| partition_report(&device, p, code_page))
        .collect();
    drop(opened.guard);
    Ok(report)
}

/// The fields every block device has.
fn device_report(path: &Path, format: &'static str, device: &dyn BlockDevice) -> ImageReport {
    ImageReport {
        path: path.display().to_string(),
        format,
        virtual_size: device.size_bytes(),
        file_size: 0,
        allocated_bytes: 0,
        logical_sector_size: device.logical_sector_size(),
        physical_sector_size: device.physical_sector_size(),
        block_size: None,
        disk_id: None,
        bat: None,
        log: None,
        vhd: None,
        parent_chain: Vec::new(),
        partitions: Vec::new(),
    }
}

fn vhd_report(path: &Path, vhd: &Vhd) -> ImageReport {
    let info = vhd.info();
    let mut report = device_report(path, "vhd", vhd);
    report.block_size = info.block_size;
    report.disk_id = Some(Guid(info.unique_id).to_string());
    let sparse = info.disk_type != DiskType::Fixed;
    report.vhd = Some(VhdReport {
        disk_type: info.disk_type.name(),
        cylinders: info.geometry.cylinders,
        heads: info.geometry.heads,
        sectors_per_track: info.geometry.sectors_per_track,
        original_size: info.original_size,
        creator_app: info.creator_app.clone(),
        creator_version: format!(
            "{}.{}",
            info.creator_version >> 16,
            info.creator_version & 0xffff
        ),
        creator_host_os: info.creator_host_os.clone(),
        blocks: sparse.then_some(info.blocks),
        allocated_blocks: sparse.then_some(info.allocated_blocks),
        parent_name: info.parent_name.clone(),
        parent_unique_id: info.parent_unique_id.map(|id| Guid(id).to_string()),
        parent_locators: info
            .parent_locators
            .iter()
            .map(|l| {
                format!(
                    "{}: {}",
                    l.platform,
                    l.path.as_deref().unwrap_or("(not decoded)")
                )
            })
            .collect(),
    });
    report.parent_chain = info
        .parent_chain
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    report
}

fn vhdx_report(path: &Path, vhdx: &Vhdx) -> ImageReport {
    let info = vhdx.info();
    let mut report = device_report(path, "vhdx", vhdx);
    report.virtual_size = info.virtual_size;
    report.block_size = Some(info.block_size);
    report.disk_id = Some(info.disk_id.to_string());
    report.bat = Some(bat_report(&info.bat_counts));
    report.log = Some(log_report(info.log));
    report.parent_chain = info
        .parent_chain
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    report
}

fn bat_report(c: &BatCounts) -> BatReport {
    BatReport {
        fully_present: c.fully_present,
        partially_present: c.partially_present,
        not_present: c.not_present,
        zero: c.zero,
        unmapped: c.unmapped,
        undefined: c.undefined,
        sector_bitmaps_present: c.bitmaps_present,
    }
}

fn log_report(log: LogState) -> LogReport {
    match log {
        LogState::Clean { stale_entries } => LogReport {
            state: "clean",
            entries_replayed: 0,
            stale_entries_ignored: stale_entries,
        },
        LogState::Replayed {
            entries,
            stale_entries,
        } => LogReport {
            state: "replayed",
            entries_replayed: entries,
            stale_entries_ignored: stale_entries,
        },
    }
}

fn partition_report(
    device: &Arc<dyn BlockDevice>,
    summary: PartitionSummary,
    code_page: CodePage,
) -> PartitionReport {
    let info = &summary.info;
    let (type_guid, mbr_type) = match info.partition_type {
        PartitionType::Guid(g) => (Some(Guid(g).to_string()), None),
        PartitionType::MbrType(b) => (None, Some(b)),
        PartitionType::None => (None, None),
    };
    let file_system = summary.file_system.map(|kind| {
        // Label and size are extras: a partition whose boot sector cannot
        // be read again still shows its file-system type.
        let extra = PartitionDevice::for_partition(device.clone(), info)
            .map_err(|e| e.to_string())
            .and_then(|view| details_with(&view, kind, code_page).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                tracing::warn!(partition = info.number, error = %e, "reading file-system details");
                Default::default()
            });
        let used = PartitionDevice::for_partition(device.clone(), info)
            .map_err(|e| e.to_string())
            .and_then(|view| usage(Arc::new(view), kind).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                tracing::warn!(partition = info.number, error = %e, "reading free space");
                None
            });
        FsReport {
            kind: fs_name(kind),
            label: extra.label,
            size: extra.size_bytes,
            fat_type: used.and_then(|u| u.fat_type).map(|t| match t {
                FatType::Fat12 => "FAT12",
                FatType::Fat16 => "FAT16",
                FatType::Fat32 => "FAT32",
            }),
            cluster_size: used.map(|u| u.cluster_bytes),
            free: used.map(|u| u.free_bytes),
        }
    });
    PartitionReport {
        scheme: match info.scheme {
            PartitionScheme::Gpt => "gpt",
            PartitionScheme::Mbr => "mbr",
            PartitionScheme::WholeDisk => "none",
        },
        number: info.number,
        type_guid,
        mbr_type,
        unique_guid: info.unique_guid.map(|g| Guid(g).to_string()),
        first_lba: info.first_lba,
        last_lba: info.last_lba,
        size: info
            .sector_count()
            .saturating_mul(u64::from(device.logical_sector_size())),
        name: info.name.clone(),
        file_system,
    }
}

fn fs_name(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Fat => "fat",
        FsKind::Ntfs => "ntfs",
        FsKind::Ext4 => "ext4",
    }
}

/// `bytes` exactly, with a binary-unit approximation when it is large.
fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{bytes} bytes ({value:.1} {u})"),
        None => format!("{bytes} bytes"),
    }
}

/// The human form: aligned key/value lines.
fn render(r: &ImageReport) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("image".into(), escape_name(&r.path)),
        ("format".into(), r.format.to_uppercase()),
        ("virtual size".into(), size_text(r.virtual_size)),
        ("file size".into(), size_text(r.file_size)),
        ("allocated".into(), size_text(r.allocated_bytes)),
        (
            "logical sector size".into(),
            r.logical_sector_size.to_string(),
        ),
        (
            "physical sector size".into(),
            r.physical_sector_size.to_string(),
        ),
    ];
    if let Some(block) = r.block_size {
        lines.push(("block size".into(), size_text(u64::from(block))));
    }
    if let Some(id) = &r.disk_id {
        lines.push(("disk id".into(), id.clone()));
    }
    if let Some(b) = &r.bat {
        lines.push((
            "BAT".into(),
            format!(
                "fully present {}, partially present {}, not present {}, zero {}, unmapped {}, undefined {}, sector bitmaps {}",
                b.fully_present,
                b.partially_present,
                b.not_present,
                b.zero,
                b.unmapped,
                b.undefined,
                b.sector_bitmaps_present
            ),
        ));
    }
    if let Some(log) = &r.log {
        let state = if log.state == "clean" {
            "clean".to_owned()
        } else {
            format!(
                "dirty, replayed in memory ({} entries)",
                log.entries_replayed
            )
        };
        lines.push((
            "log".into(),
            format!(
                "{state}; {} stale entries ignored",
                log.stale_entries_ignored
            ),
        ));
    }
    if let Some(v) = &r.vhd {
        vhd_lines(v, &mut lines);
    }
    if r.format == "vhdx" || r.format == "vhd" {
        if r.parent_chain.is_empty() {
            lines.push(("parent chain".into(), "none".into()));
        }
        for (depth, parent) in r.parent_chain.iter().enumerate() {
            lines.push((format!("parent {}", depth + 1), escape_name(parent)));
        }
    }
    lines.push(("partitions".into(), r.partitions.len().to_string()));
    for p in &r.partitions {
        partition_lines(p, &mut lines);
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{}\n", format!("{k:<width$}  {v}").trim_end()))
        .collect()
}

fn vhd_lines(v: &VhdReport, lines: &mut Vec<(String, String)>) {
    lines.push(("VHD type".into(), v.disk_type.into()));
    lines.push((
        "geometry".into(),
        format!(
            "{} cylinders, {} heads, {} sectors per track",
            v.cylinders, v.heads, v.sectors_per_track
        ),
    ));
    lines.push(("original size".into(), size_text(v.original_size)));
    lines.push((
        "creator".into(),
        format!(
            "\"{}\" {} on \"{}\"",
            escape_name(&v.creator_app),
            v.creator_version,
            escape_name(&v.creator_host_os)
        ),
    ));
    if let (Some(blocks), Some(allocated)) = (v.blocks, v.allocated_blocks) {
        lines.push((
            "blocks".into(),
            format!("{allocated} of {blocks} allocated"),
        ));
    }
    if let Some(name) = &v.parent_name {
        lines.push(("parent name".into(), format!("\"{}\"", escape_name(name))));
    }
    if let Some(id) = &v.parent_unique_id {
        lines.push(("parent unique id".into(), id.clone()));
    }
    for locator in &v.parent_locators {
        lines.push(("parent locator".into(), escape_name(locator)));
    }
}

fn partition_lines(p: &PartitionReport, lines: &mut Vec<(String, String)>) {
    let scheme = match p.scheme {
        "gpt" => "GPT",
        "mbr" => "MBR",
        _ => "whole disk (no partition table)",
    };
    lines.push((format!("partition {}", p.number), scheme.into()));
    if let Some(t) = &p.type_guid {
        lines.push(("  type GUID".into(), t.clone()));
    }
    if let Some(t) = p.mbr_type {
        lines.push(("  type".into(), format!("{t:#04x}")));
    }
    if let Some(u) = &p.unique_guid {
        lines.push(("  unique GUID".into(), u.clone()));
    }
    lines.push((
        "  LBA range".into(),
        format!("{}-{}, {}", p.first_lba, p.last_lba, size_text(p.size)),
    ));
    if p.scheme == "gpt" {
        lines.push(("  name".into(), format!("\"{}\"", escape_name(&p.name))));
    }
    let fs = match &p.file_system {
        None => "none recognised".to_owned(),
        Some(fs) => {
            let mut text = fs
                .fat_type
                .map_or_else(|| fs.kind.to_uppercase(), str::to_owned);
            match &fs.label {
                Some(label) => text.push_str(&format!(", label \"{}\"", escape_name(label))),
                None => text.push_str(", no label"),
            }
            if let Some(size) = fs.size {
                text.push_str(&format!(", {}", size_text(size)));
            }
            if let Some(cluster) = fs.cluster_size {
                text.push_str(&format!(", {cluster}-byte clusters"));
            }
            if let Some(free) = fs.free {
                text.push_str(&format!(", {} free", size_text(free)));
            }
            text
        }
    };
    lines.push(("  file system".into(), fs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_show_exact_bytes_and_a_binary_unit() {
        assert_eq!(size_text(512), "512 bytes");
        assert_eq!(size_text(1536), "1536 bytes (1.5 KiB)");
        assert_eq!(size_text(32 << 20), "33554432 bytes (32.0 MiB)");
    }
}
