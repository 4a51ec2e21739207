//! Shared helpers for the cross-crate integration suites: generating images
//! with the real tools and comparing their contents.
//!
//! This crate owns tests and test helpers only: no library crate may depend
//! on it outside its dev-dependencies, and benchmarks live in
//! `vmbdev-bench`.
#![forbid(unsafe_code)]

pub mod images;
