//! Examples of embedding vmbdev in a VMM; see `vmm.rs` beside this crate.
#![forbid(unsafe_code)]
