//! Ring throughput benchmark.

fn main() {}
