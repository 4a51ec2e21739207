//! `vmbdev bench`: runs the benchmark suites and prints each figure beside
//! its baseline measured in the same run, with the ratio, as a table or as
//! JSON (`{"results": [{"name", "value", "unit", "baseline", "ratio"}]}`).
//!
//! Each suite is one entry in [`suites`]; a new one (vmbfs in-band and RDMA
//! reads, storvsp QD1/QD32/sequential) is added there with one line.

use std::path::Path;

use serde::Serialize;

use crate::error::{CliError, print_stdout};

/// Arguments of `vmbdev bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
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
        // Further suites go here, one line each, e.g.:
        // Suite { name: "vmbfs", baseline: "...", run: vmbfs_suite }, // in-band and RDMA reads
        // Suite { name: "storvsp", baseline: "...", run: storvsp_suite }, // QD1, QD32, sequential
    ]
}

fn ring_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    let results = vmbdev_ring::bench::run(ctx.quick)
        .map_err(|e| CliError::new(format!("ring benchmark: {e}")))?;
    Ok(results
        .into_iter()
        .map(|r| Row {
            name: r.name,
            value: r.value,
            unit: r.unit,
            baseline: r.baseline,
            ratio: r.ratio,
        })
        .collect())
}

fn vhdx_suite(ctx: &SuiteContext<'_>) -> Result<Vec<Row>, CliError> {
    use vmbdev_backing::bench::{BenchConfig, run};
    let results = run(ctx.scratch, &BenchConfig::new(ctx.quick))
        .map_err(|e| CliError::new(format!("VHDX benchmark: {e}")))?;
    Ok(results
        .into_iter()
        .map(|r| Row {
            name: r.name,
            value: r.value,
            unit: r.unit,
            baseline: r.baseline,
            ratio: r.ratio,
        })
        .collect())
}

/// The JSON document.
#[derive(Serialize)]
struct Report<'a> {
    results: &'a [Row],
}

/// Runs `bench`.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let mut all = Vec::new();
    let mut sections = Vec::new();
    for suite in suites() {
        // Each suite gets a fresh scratch directory, so one suite's files
        // never sit in the page cache or on disk during another.
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
        sections.push((suite.name, suite.baseline, rows.len()));
        all.extend(rows);
    }
    let text = if args.json {
        serde_json::to_string_pretty(&Report { results: &all })? + "\n"
    } else {
        table(&all, &sections)
    };
    print_stdout(&text)
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

/// The table: one section per suite naming its baseline, then one row per
/// measurement.
fn table(rows: &[Row], sections: &[(&str, &str, usize)]) -> String {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(11);
    let mut out = format!(
        "{:<name_width$}  {:>14}  {:>14}  {:>7}  unit\n",
        "measurement", "value", "baseline", "ratio"
    );
    let mut rest = rows;
    for (name, baseline, count) in sections {
        out.push_str(&format!("[{name}] baseline: {baseline}\n"));
        let (here, after) = rest.split_at((*count).min(rest.len()));
        for r in here {
            out.push_str(&format!(
                "{:<name_width$}  {:>14}  {:>14}  {:>7.3}  {}\n",
                r.name,
                figure(r.value),
                figure(r.baseline),
                r.ratio,
                r.unit
            ));
        }
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_puts_each_row_under_its_suite() {
        let row = |name: &str, value: f64| Row {
            name: name.into(),
            value,
            unit: "u",
            baseline: 2.0,
            ratio: value / 2.0,
        };
        let rows = [row("a", 1.0), row("b", 3.0), row("c", 4000.0)];
        let text = table(&rows, &[("one", "base one", 2), ("two", "base two", 1)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[1].contains("[one]") && lines[1].contains("base one"));
        assert!(lines[2].starts_with('a') && lines[2].contains("0.500"));
        assert!(lines[3].starts_with('b') && lines[3].contains("1.500"));
        assert!(lines[4].contains("[two]"));
        assert!(lines[5].starts_with('c') && lines[5].contains("4000"));
    }

    #[test]
    fn every_suite_has_a_distinct_name() {
        let names: Vec<&str> = suites().iter().map(|s| s.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len());
        assert!(names.contains(&"ring") && names.contains(&"vhdx"));
    }
}
