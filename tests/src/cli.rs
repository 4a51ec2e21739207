//! Running the built `vmbdev` binary and the external tools its tests
//! compare against (the tool runners are in [`images`]). The binary's path is only known inside the cli crate's
//! own tests (`env!("CARGO_BIN_EXE_vmbdev")`), so it is passed in.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use crate::images;
use crate::random_trees::Listed;

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

/// What `vmbdev ls IMAGE / -r --json EXTRA` lists, sorted by path; fails
/// the test with its stderr when it fails.
pub fn ls_json(binary: &str, image: &Path, extra: &[&str]) -> Vec<Listed> {
    let mut args = vec!["ls", path_str(image), "/", "-r", "--json"];
    args.extend_from_slice(extra);
    let out = run_vmbdev(binary, &args);
    assert!(
        out.status.success(),
        "ls {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut entries: Vec<Listed> = value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| Listed {
            path: e["path"].as_str().unwrap().to_owned(),
            kind: e["type"].as_str().unwrap().to_owned(),
            size: e["size"].as_u64().unwrap(),
            target: e["target"].as_str().map(str::to_owned),
        })
        .collect();
    entries.sort();
    entries
}

/// `vmbdev cat IMAGE PATH EXTRA`: the bytes, or the failed run.
pub fn cat(binary: &str, image: &Path, path: &str, extra: &[&str]) -> Result<Vec<u8>, Output> {
    let mut args = vec!["cat", path_str(image), path];
    args.extend_from_slice(extra);
    let out = run_vmbdev(binary, &args);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(out)
    }
}
