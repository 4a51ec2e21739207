//! Running the built `vmbdev` binary and the external tools its tests
//! compare against (the tool runners are in [`images`]). The binary's path is only known inside the cli crate's
//! own tests (`env!("CARGO_BIN_EXE_vmbdev")`), so it is passed in.

use std::ffi::OsStr;
use std::process::{Command, Output};

use crate::images;

/// A command for the `vmbdev` binary at `binary`. `RUST_LOG` and
/// `RUST_BACKTRACE` are removed so that what the binary prints does not
/// depend on the environment the tests run in.
pub fn vmbdev_command(binary: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    cmd
}

/// Runs the `vmbdev` binary at `binary` with `args` and captures its
/// status, stdout and stderr, whatever the status.
pub fn run_vmbdev<S: AsRef<OsStr>>(binary: &str, args: &[S]) -> Output {
    vmbdev_command(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
}

/// Runs `qemu-img` with `args`, like [`tool`].
pub fn qemu_img(args: &[&str]) -> String {
    tool("qemu-img", args)
}

pub use images::{path_str, tool};
