//! `vmbdev`: demo, inspect, list, read, dump, pack and bench VMBus devices
//! and the VHDX images they serve.
#![forbid(unsafe_code)]

fn main() {}
