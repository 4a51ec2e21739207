//! Shared helpers for the integration suites of every crate: generating
//! images with the real tools ([`images`]), whole-disk reads and qemu-img
//! comparisons ([`disks`]), and checking file trees against their sources
//! ([`trees`]).
#![forbid(unsafe_code)]

pub mod disks;
pub mod images;
pub mod trees;
