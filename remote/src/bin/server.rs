//! A device server process: serves one device built from an image or a
//! host directory on a Unix socket, one VMM connection after another.
//! (`vmbdev serve` is the same for users; this binary lets the crate's own
//! tests run a server in a child process.)
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmbdev_remote::devices::{DeviceKind, build_device};

/// Serve a VMBus device to a VMM over a Unix socket.
#[derive(Debug, Parser)]
struct Args {
    /// Path of the listening socket.
    #[arg(long)]
    socket: PathBuf,
    /// Which device to serve.
    #[arg(long, value_enum, default_value_t = DeviceKind::Storvsp)]
    device: DeviceKind,
    /// Most storvsp sub-channels to offer.
    #[arg(long, default_value_t = 4)]
    sub_channels: u16,
    /// The image (or, for vmbfs, a host directory) to serve.
    source: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let device = match build_device(args.device, &args.source, args.sub_channels) {
        Ok(device) => device,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match vmbdev_remote::listen_and_serve(&args.socket, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
