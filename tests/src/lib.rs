//! Shared helpers for the cross-crate integration suites: generating images
//! with the real tools and comparing their contents.
#![forbid(unsafe_code)]

pub mod images;
