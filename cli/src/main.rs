//! `vmbdev`: demo, inspect, list, read, dump, pack and bench VMBus devices
//! and the VHDX images they serve.
#![forbid(unsafe_code)]

mod bench;
mod dump;
mod error;
mod info;

use std::process::ExitCode;

use clap::Parser;

/// The vmbdev command line.
#[derive(Debug, Parser)]
#[command(name = "vmbdev", version, about)]
struct Args {
    /// Print tracing output on stderr (-v debug, -vv trace; RUST_LOG
    /// overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cli,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
enum Cli {
    /// Write the whole virtual disk of an image to a file.
    Dump(dump::DumpArgs),
    /// Describe an image: format, geometry, VHDX state, partitions and file
    /// systems.
    Info(info::InfoArgs),
    /// Measure ring and VHDX throughput against baselines from the same run.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    error::run(args.verbose, || match args.command {
        Cli::Dump(args) => Ok(dump::run(&args)?),
        Cli::Info(args) => info::run(&args),
        Cli::Bench(args) => bench::run(&args),
    })
}
