//! `vmbdev`: demo, inspect, list, read, dump, pack and bench VMBus devices
//! and the VHDX images they serve.
#![forbid(unsafe_code)]

mod dump;
mod dump_storvsp;

use std::process::ExitCode;

use clap::Parser;

/// The vmbdev command line.
#[derive(Debug, Parser)]
#[command(name = "vmbdev", version, about)]
enum Cli {
    /// Write the whole virtual disk of an image to a file.
    Dump(dump::DumpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli {
        Cli::Dump(args) => dump::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmbdev: {e}");
            ExitCode::FAILURE
        }
    }
}
