//! `vmbdev`: demo, inspect, list, read, dump, pack and bench VMBus devices
//! and the VHDX images they serve.
#![forbid(unsafe_code)]

mod cat;
mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command line of `vmbdev`.
#[derive(Debug, Parser)]
#[command(
    name = "vmbdev",
    version,
    about = "VMBus paravirtual devices, end to end"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a sample boot tree over vmbfs on a loopback channel and read
    /// it back like the UEFI firmware, in-band and by RDMA.
    Demo(demo::DemoArgs),
    /// Read one file through the vmbfs guest client over loopback.
    Cat(cat::CatArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Cat(args) => cat::run(&args),
    }
}
