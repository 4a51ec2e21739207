//! A device server process: serves one device built from an image or a
//! host directory on a Unix socket, one VMM connection after another; or,
//! with `--bus`, a whole bus (the control plane and every device named).
//! (`vmbdev serve` is the same for users; this binary lets the crate's own
//! tests run a server in a child process.)
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use vmbdev_device::bus::VmbusDevice;
use vmbdev_remote::BusBackend;
use vmbdev_remote::devices::{DeviceKind, build_device};
use vmbdev_vmbus::ServerConfig;

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
    /// Serve a whole bus instead: the control plane with one device per
    /// `KIND=SOURCE` (`vmbfs=DIR`, `storvsp=IMAGE`), offered in this order.
    #[arg(long, value_name = "KIND=SOURCE")]
    bus: Vec<String>,
    /// vCPUs of the guest (a bus only).
    #[arg(long, default_value_t = 1)]
    vp_count: u32,
    /// The image (or, for vmbfs, a host directory) to serve.
    #[arg(required_unless_present = "bus")]
    source: Option<PathBuf>,
}

/// Builds the devices of `--bus`.
fn bus_devices(args: &Args) -> Result<Vec<Arc<dyn VmbusDevice>>, String> {
    args.bus
        .iter()
        .map(|spec| {
            let (kind, source) = spec
                .split_once('=')
                .ok_or_else(|| format!("--bus {spec}: expected KIND=SOURCE"))?;
            let kind =
                DeviceKind::from_str(kind, true).map_err(|e| format!("--bus {spec}: {e}"))?;
            build_device(kind, Path::new(source), args.sub_channels).map_err(|e| e.to_string())
        })
        .collect()
}

fn serve_bus(args: &Args) -> ExitCode {
    let devices = match bus_devices(args) {
        Ok(devices) => devices,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let config = ServerConfig {
        vp_count: args.vp_count,
        ..ServerConfig::default()
    };
    let backend = match BusBackend::new(devices, config) {
        Ok(backend) => backend,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match vmbdev_remote::listen_and_serve_bus(&args.socket, &backend) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.bus.is_empty() {
        return serve_bus(&args);
    }
    let Some(source) = &args.source else {
        return ExitCode::from(2);
    };
    let device = match build_device(args.device, source, args.sub_channels) {
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
