//! Shared helpers for the cross-crate integration suites and the CLI tests:
//! generating images with the real tools, comparing their contents, and
//! running the `vmbdev` binary.
#![forbid(unsafe_code)]

pub mod cli;
pub mod images;
