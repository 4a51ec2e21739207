//! Throughput measurement of the loopback ring against memcpy.
