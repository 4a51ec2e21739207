//! Benchmark suites, each measuring its figures beside a baseline taken in
//! the same run (so the ratios mean the same on any machine). `vmbdev
//! bench` and this crate's cargo bench targets (`benches/*.rs`) call them.
//!
//! - [`ring`]: the loopback ring against memcpy of the same bytes.
//! - [`vhdx`]: VHDX reads against `pread` of a raw file with the same bytes.
//! - [`vmbfs`]: vmbfs RDMA reads against in-band reads over the loopback VM.
//! - [`storvsp`]: storvsc → ring → storvsp → disk reads against `pread`.
//! - [`ioperf`]: the storvsp request path alone, in the shape of OpenVMM's
//!   `ioperf` benchmark (raw guest, RAM disk, one thread).
//! - [`remote`]: storvsp through the out-of-process backend against the
//!   same device in process.
//!
//! Beside every wall figure each suite reports the host CPU time of the
//! whole process per unit of work, for the measured side and for the
//! baseline alike ([`cpu`]).
//!
//! This crate owns measuring and nothing else: it drives the library
//! crates through their public API only, holds no device or driver logic,
//! and library crates must not depend on it. It prints nothing; the callers
//! format the results.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod ioperf;
pub mod remote;
pub mod ring;
pub mod storvsp;
pub mod vhdx;
pub mod vmbfs;
