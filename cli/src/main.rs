//! `vmbdev`: demo, inspect, list, read, dump, pack and bench VMBus devices
//! and the VHDX images they serve.
#![forbid(unsafe_code)]

mod dump;
mod ls;
mod pack;

use std::process::ExitCode;

use clap::Parser;

/// The vmbdev command line.
#[derive(Debug, Parser)]
#[command(name = "vmbdev", version, about)]
enum Cli {
    /// Write the whole virtual disk of an image to a file.
    Dump(dump::DumpArgs),
    /// Pack a host directory into a dynamic VHDX (GPT, one FAT32 partition).
    Pack(pack::PackArgs),
    /// List a directory of a host directory or of a disk image's file system.
    Ls(ls::LsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli {
        Cli::Dump(args) => dump::run(&args).map_err(Into::into),
        Cli::Pack(args) => pack::run(&args).map_err(Into::into),
        Cli::Ls(args) => ls::run(&args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmbdev: {e}");
            ExitCode::FAILURE
        }
    }
}
