//! `vmbdev`: demo, inspect, list, read, dump, pack, bench and serve VMBus devices
//! and the VHDX images they serve.
//!
//! This crate owns argument parsing and output (the one crate that prints);
//! it must not hold device, driver or benchmark logic: each command calls
//! the library crates (`vmbdev-bench` for `bench`, `vmbdev-loopback` to run
//! the drivers against the devices).
#![forbid(unsafe_code)]

mod bench;
mod cat;
mod demo;
mod detect;
mod dump;
mod dump_storvsp;
mod error;
mod extract;
mod image;
mod info;
mod lock;
mod ls;
mod messages;
mod output;
mod pack;
mod serve;
mod signals;
mod sparse;

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
    /// Serve a sample boot tree over vmbfs on a loopback channel and read
    /// it back like the UEFI firmware, in-band and by RDMA.
    Demo(demo::DemoArgs),
    /// Read one file through the vmbfs guest client over loopback.
    Cat(cat::CatArgs),
    /// Write the whole virtual disk of an image to a file, read through the
    /// storvsc guest driver over loopback (or `--direct` from the image).
    Dump(dump::DumpArgs),
    /// Copy files and whole trees out of an image (or a host directory)
    /// into a directory, never writing outside it.
    Extract(extract::ExtractArgs),
    /// Pack a host directory into a dynamic VHDX (GPT, one FAT32 partition).
    Pack(pack::PackArgs),
    /// List a directory of a host directory or of a disk image's file system.
    Ls(ls::LsArgs),
    /// Describe an image: format, geometry, VHDX state, partitions and file
    /// systems.
    Info(info::InfoArgs),
    /// Measure ring, VHDX, vmbfs and storvsp throughput against baselines from the same run.
    Bench(bench::BenchArgs),
    /// Serve a device (storvsp or vmbfs) built from an image to a VMM in
    /// another process over a Unix socket.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    signals::install();
    error::run(args.verbose, || match args.command {
        Cli::Demo(args) => demo::run(&args),
        Cli::Cat(args) => cat::run(&args),
        Cli::Dump(args) => dump::run(&args),
        Cli::Extract(args) => extract::run(&args),
        Cli::Pack(args) => pack::run(&args),
        Cli::Ls(args) => ls::run(&args),
        Cli::Info(args) => info::run(&args),
        Cli::Bench(args) => bench::run(&args),
        Cli::Serve(args) => serve::run(&args),
    })
}
