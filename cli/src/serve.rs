//! `vmbdev serve`: serves one device built from an image (storvsp: its
//! disk; vmbfs: its file system, or a host directory) to a VMM over a Unix
//! socket, with the `vmbdev-remote` control protocol. Serves one VMM
//! connection after another until killed.

use std::path::PathBuf;

use vmbdev_remote::devices::{DeviceKind, build_device};

use crate::error::CliError;

/// Arguments of `vmbdev serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Path of the listening socket (must not exist yet).
    #[arg(long)]
    socket: PathBuf,
    /// Which device to serve.
    #[arg(long, value_enum, default_value_t = DeviceKind::Storvsp)]
    device: DeviceKind,
    /// Most storvsp sub-channels to offer (0: none).
    #[arg(long, default_value_t = 4)]
    sub_channels: u16,
    /// The image (or, for vmbfs, a host directory) to serve.
    image: PathBuf,
}

/// Runs `vmbdev serve`.
pub fn run(args: &ServeArgs) -> Result<(), CliError> {
    if args.socket.exists() {
        return Err(CliError::new(format!(
            "{}: already exists; remove it or choose another socket path",
            args.socket.display()
        )));
    }
    let device = build_device(args.device, &args.image, args.sub_channels)
        .map_err(|e| CliError::new(e.to_string()))?;
    let offer = device.offer();
    println!(
        "serving {} ({} sub-channels at most) from {} on {}",
        offer.name,
        offer.max_sub_channels,
        args.image.display(),
        args.socket.display()
    );
    vmbdev_remote::listen_and_serve(&args.socket, device)
        .map_err(|e| CliError::new(format!("{}: {e}", args.socket.display())))
}
