//! Shared helpers for the integration suites of every crate and the CLI
//! tests: generating images with the real tools ([`images`]), whole-disk
//! reads and qemu-img comparisons ([`disks`]), seeded random source trees
//! ([`random_trees`]), checking file trees against their sources
//! ([`trees`]), and running the `vmbdev` binary ([`cli`]).
//!
//! This crate owns tests and test helpers only: no library crate may depend
//! on it outside its dev-dependencies, and benchmarks live in
//! `vmbdev-bench`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod disks;
pub mod faults;
pub mod images;
pub mod random_trees;
pub mod trees;
