//! `vmbdev bench`: runs the benchmark suites and prints each figure beside
//! its baseline measured in the same run, with the ratio, and the host CPU
//! time per unit of work of both sides (the whole process's, so every
//! thread of a layout counts), as a table or as JSON (`{"results":
//! [{"name", "value", "unit", "baseline", "ratio", "cpu_per_unit",
//! "baseline_cpu_per_unit", "cpu_unit"}]}`).
//!
//! Each suite is one entry in [`suites`]: ring, vhdx, vmbfs (in-band and
//! RDMA reads), storvsp (QD1/QD32 random, sequential) and remote (storvsp
//! through `vmbdev serve` in a child process against the same device in
//! process). Naming suites runs only those.

use std::path::Path;

use serde::Serialize;
use vmbdev_bench::cpu::CpuPerUnit;

use crate::error::{CliError, print_stdout};

/// Arguments of `vmbdev bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Suites to run, by name (all when none is given); `--list` shows
    /// them.
    suites: Vec<String>,
    /// List the suites with their baselines and exit.
    #[arg(long)]
    list: bool,
    /// Short runs on small data (well under 30 s); for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Print `{"results": [...]}` instead of a table.
    #[arg(long)]
    json: bool,
}

/// One measurement beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// Unit of `value` and `baseline`.
    pub unit: &'static str,
    /// The same quantity for the suite's baseline.
    pub baseline: f64,
    /// `value / baseline`.
    pub ratio: f64,
    /// Host CPU time per unit of work of the measured side, in `cpu_unit`.
    pub cpu_per_unit: f64,
    /// The same for the baseline.
    pub baseline_cpu_per_unit: f64,
    /// Unit of both CPU figures, e.g. `ns/request`.
    pub cpu_unit: &'static str,
}

/// What a suite may use while it runs.
pub struct SuiteContext<'a> {
    /// Short runs on small data.
    pub quick: bool,
    /// A scratch directory, removed after the run.
    pub scratch: &'a Path,
}

/// A benchmark suite: what it measures against, and how to run it.
pub struct Suite {
    /// Short name, shown as the table section.
    pub name: &'static str,
    /// What the baseline column holds for this suite.
    pub baseline: &'static str,
    /// Runs the suite.
    pub run: fn(&SuiteContext<'_>) -> Result<Vec<Row>, CliError>,
}

/// Every suite `vmbdev bench` runs, in order.
pub fn suites() -> Vec<Suite> {
    vec![
        Suite {
            name: "ring",
            baseline: "memcpy of the same bytes",
            run: ring_suite,
        },
        Suite {
            name: "vhdx",
            baseline: "pread on a raw file of the same bytes",
            run: vhdx_suite,
        },
        Suite {
            name: "vmbfs",
            baseline: "pread of the same bytes from a page-cached file into a buffer of its size",
            run: vmbfs_suite,
        },
        Suite {
            name: "storvsp",
            baseline: "pread of the same offsets from the raw image into as many buffers as reads in flight (the device serves a VHDX of it)",
            run: storvsp_suite,
        },
        Suite {
            name: "remote",
            baseline: "the same storvsp device in process",
            run: remote_suite,
        },
    ]
}

/// storvsp through `vmbdev serve` in a child process against the same
/// device in process.
fn remote_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    use std::time::{Duration, Instant};
    let image = ctx.scratch.join("remote-bench.raw");
    let (image_size, count) = if ctx.quick {
        (32 << 20, 5_000)
    } else {
        (256 << 20, 50_000)
    };
    let fail = |e: String| CliError::new(format!("remote benchmark: {e}"));
    vmbdev_bench::storvsp::make_image(&image, image_size).map_err(|e| fail(e.to_string()))?;
    let socket = ctx.scratch.join("remote-bench.sock");
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let child = std::process::Command::new(exe)
        .args([
            "serve",
            "--device",
            "storvsp",
            "--sub-channels",
            "0",
            "--socket",
        ])
        .arg(&socket)
        .arg(&image)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start vmbdev serve: {e}")))?;
    let mut server = KillOnDrop(child);
    let start = Instant::now();
    let remote = loop {
        match vmbdev_remote::RemoteDevice::connect_path(&socket) {
            Ok(remote) => break remote,
            Err(e) => {
                let exited = server.0.try_wait().map_err(|e| fail(e.to_string()))?;
                if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
                    return Err(fail(format!("vmbdev serve did not answer: {e}")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    // The server does the device's work: its CPU time is the remote
    // side's too.
    let server_pid = server.0.id();
    let server_cpu = || vmbdev_bench::cpu::other_process_cpu(server_pid);
    let result = vmbdev_bench::remote::run(&image, std::sync::Arc::new(remote), &server_cpu, count)
        .map_err(|e| fail(e.to_string()))?;
    Ok(vec![row(
        "storvsp 4 KiB random QD32 through the remote device".into(),
        result.remote_iops,
        "IOPS",
        result.local_iops,
        result.cpu,
    )])
}

/// A child process killed when the suite ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ring_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    let results = vmbdev_bench::ring::run(ctx.quick)
        .map_err(|e| CliError::new(format!("ring benchmark: {e}")))?;
    Ok(results
        .into_iter()
        .map(|r| with_cpu(r.name, r.value, r.unit, r.baseline, r.ratio, r.cpu))
        .collect())
}

fn vhdx_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    use vmbdev_bench::vhdx::{BenchConfig, run};
    let results = run(ctx.scratch, &BenchConfig::new(ctx.quick))
        .map_err(|e| CliError::new(format!("VHDX benchmark: {e}")))?;
    Ok(results
        .into_iter()
        .map(|r| with_cpu(r.name, r.value, r.unit, r.baseline, r.ratio, r.cpu))
        .collect())
}

/// A row whose ratio is computed from its two figures.
fn row(name: String, value: f64, unit: &'static str, baseline: f64, cpu: CpuPerUnit) -> Row {
    let ratio = value / baseline.max(f64::MIN_POSITIVE);
    with_cpu(name, value, unit, baseline, ratio, cpu)
}

/// A row of the given figures.
fn with_cpu(
    name: String,
    value: f64,
    unit: &'static str,
    baseline: f64,
    ratio: f64,
    cpu: CpuPerUnit,
) -> Row {
    Row {
        name,
        value,
        unit,
        baseline,
        ratio,
        cpu_per_unit: cpu.value,
        baseline_cpu_per_unit: cpu.baseline,
        cpu_unit: cpu.unit.label(),
    }
}

fn vmbfs_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    let size = if ctx.quick { 8 << 20 } else { 64 << 20 };
    let rows = vmbdev_bench::vmbfs::compare_with_pread(ctx.scratch, size)
        .map_err(|e| CliError::new(format!("vmbfs benchmark: {e}")))?;
    let mib = size >> 20;
    Ok(rows
        .iter()
        .map(|r| {
            row(
                format!("vmbfs {mib} MiB {}", r.name()),
                r.mb_per_s,
                "MB/s",
                r.pread_mb_per_s,
                r.cpu,
            )
        })
        .collect())
}

fn storvsp_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    use vmbdev_bench::storvsp::{BenchConfig, Layout, make_image, run};
    let image = ctx.scratch.join("storvsp-bench.raw");
    let (image_size, bytes_per_run) = if ctx.quick {
        (32 << 20, 8 << 20)
    } else {
        (256 << 20, 512 << 20)
    };
    let fail = |e: vmbdev_bench::storvsp::BenchError| {
        CliError::new(format!("storvsp benchmark on {}: {e}", image.display()))
    };
    make_image(&image, image_size).map_err(fail)?;
    let mut config = BenchConfig::standard(image.clone());
    config.runs = vec![
        (Layout::OneThread, 1),
        (Layout::Threads, 1),
        (Layout::Threads, 2),
    ];
    config.bytes_per_run = bytes_per_run;
    let rows = run(&config).map_err(fail)?;
    let mut out = Vec::new();
    for r in rows {
        let w = r.workload;
        let layout = match r.channels {
            1 => r.layout.name().to_string(),
            n => format!("{}, {n} channels", r.layout.name()),
        };
        out.push(if w.random {
            row(
                format!(
                    "storvsp {} KiB random QD{}, {layout}",
                    w.block >> 10,
                    w.depth
                ),
                r.iops,
                "IOPS",
                r.pread_iops,
                r.cpu,
            )
        } else {
            let bytes = f64::from(w.block) / 1e6;
            row(
                format!(
                    "storvsp {} MiB sequential QD{}, {layout}",
                    w.block >> 20,
                    w.depth
                ),
                r.mb_per_s,
                "MB/s",
                r.pread_iops * bytes,
                r.cpu,
            )
        });
        if let Some((iops, cpu)) = r.threaded_pread {
            out.push(row(
                format!(
                    "storvsp {} KiB random QD{}, {layout}, vs pread on {} threads",
                    w.block >> 10,
                    w.depth,
                    vmbdev_bench::storvsp::PREAD_THREADS
                ),
                r.iops,
                "IOPS",
                iops,
                CpuPerUnit {
                    baseline: cpu,
                    ..r.cpu
                },
            ));
        }
    }
    Ok(out)
}

/// The JSON document.
#[derive(Serialize)]
struct Report<'a> {
    results: &'a [Row],
}

/// Runs `bench`. The table prints each suite's section as soon as the
/// suite finishes (a full run takes minutes); JSON is printed at the end.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    if args.list {
        let listing: String = suites()
            .iter()
            .map(|s| format!("{:<10} baseline: {}\n", s.name, s.baseline))
            .collect();
        return print_stdout(&listing);
    }
    let chosen = chosen_suites(&args.suites)?;
    let mut all = Vec::new();
    if !args.json {
        print_stdout(&table_header())?;
    }
    for suite in chosen {
        // Each suite gets a fresh scratch directory, removed when it ends.
        let scratch = tempfile::tempdir()
            .map_err(|e| CliError::new(format!("creating a scratch directory: {e}")))?;
        tracing::info!(
            suite = suite.name,
            quick = args.quick,
            "running benchmark suite"
        );
        let rows = (suite.run)(&SuiteContext {
            quick: args.quick,
            scratch: scratch.path(),
        })?;
        if !args.json {
            print_stdout(&table_section(&suite, &rows))?;
        }
        all.extend(rows);
    }
    if args.json {
        print_stdout(&(serde_json::to_string_pretty(&Report { results: &all })? + "\n"))?;
    }
    Ok(())
}

/// The suites named in `names`, in the order [`suites`] runs them (every
/// suite when `names` is empty); an unknown name is an error listing the
/// known ones.
fn chosen_suites(names: &[String]) -> Result<Vec<Suite>, CliError> {
    let all = suites();
    if let Some(unknown) = names
        .iter()
        .find(|n| !all.iter().any(|s| s.name == n.as_str()))
    {
        let known: Vec<&str> = all.iter().map(|s| s.name).collect();
        return Err(CliError::new(format!(
            "no benchmark suite named {}; the suites are {}",
            crate::messages::escape_name(unknown),
            known.join(", ")
        )));
    }
    Ok(all
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect())
}

/// A value with about four significant digits, without exponent for the
/// magnitudes benchmarks produce.
fn figure(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Width of the measurement column (longer names push the row right).
const NAME_WIDTH: usize = 36;

fn table_header() -> String {
    format!(
        "{:<NAME_WIDTH$}  {:>14}  {:>14}  {:>9}  {:>10}  {:>13}  unit\n",
        "measurement", "value", "baseline", "ratio", "CPU/unit", "base CPU/unit"
    )
}

/// One suite's part of the table: a line naming its baseline, then one row
/// per measurement, its unit column naming the figures' unit and the CPU
/// figures' (`IOPS, CPU ns/request`).
fn table_section(suite: &Suite, rows: &[Row]) -> String {
    let mut out = format!("[{}] baseline: {}\n", suite.name, suite.baseline);
    for r in rows {
        out.push_str(&format!(
            "{:<NAME_WIDTH$}  {:>14}  {:>14}  {:>9.3}  {:>10}  {:>13}  {}, CPU {}\n",
            r.name,
            figure(r.value),
            figure(r.baseline),
            r.ratio,
            figure(r.cpu_per_unit),
            figure(r.baseline_cpu_per_unit),
            r.unit,
            r.cpu_unit
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_puts_each_row_under_its_suite_in_aligned_columns() {
        let row = |name: &str, value: f64, cpu: f64| Row {
            name: name.into(),
            value,
            unit: "u",
            baseline: 2.0,
            ratio: value / 2.0,
            cpu_per_unit: cpu,
            baseline_cpu_per_unit: 7000.0,
            cpu_unit: "ns/x",
        };
        let suite = |name, baseline| Suite {
            name,
            baseline,
            run: |_| Ok(Vec::new()),
        };
        let text = table_header()
            + &table_section(
                &suite("one", "base one"),
                &[row("a", 1.0, 12.5), row("b", 3.0, 0.25)],
            )
            + &table_section(&suite("two", "base two"), &[row("c", 4000.0, 123456.0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[1].contains("[one]") && lines[1].contains("base one"));
        assert!(lines[2].starts_with('a') && lines[2].contains("0.500"));
        assert!(lines[3].starts_with('b') && lines[3].contains("1.500"));
        assert!(lines[4].contains("[two]"));
        assert!(lines[5].starts_with('c') && lines[5].contains("4000"));
        let end_of = |column: &str| lines[0].find(column).unwrap() + column.len();
        let (ratio_end, cpu_end, base_cpu_end) =
            (end_of("ratio"), end_of("CPU/unit"), end_of("base CPU/unit"));
        for (row, ratio, cpu) in [
            (lines[2], "0.500", "12.50"),
            (lines[3], "1.500", "0.2500"),
            (lines[5], "2000.000", "123456"),
        ] {
            assert_eq!(row.find(ratio).unwrap() + ratio.len(), ratio_end, "{row}");
            assert_eq!(row.find(cpu).unwrap() + cpu.len(), cpu_end, "{row}");
            assert_eq!(row.find("7000").unwrap() + 4, base_cpu_end, "{row}");
            assert_eq!(row.find("  u, CPU ns/x").unwrap(), base_cpu_end, "{row}");
            assert!(row.ends_with("u, CPU ns/x"), "{row}");
        }
    }

    #[test]
    fn every_suite_has_a_distinct_name() {
        let names: Vec<&str> = suites().iter().map(|s| s.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len());
        for suite in ["ring", "vhdx", "vmbfs", "storvsp"] {
            assert!(names.contains(&suite), "{suite}");
        }
    }
}
