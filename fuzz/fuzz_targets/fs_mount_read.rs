//! The `fs_mount_read` target: its input, driver and checks are
//! `vmbdev_fuzz_harness::fs_mount_read`, which the corpus replay test runs too.
#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use vmbdev_fuzz_harness::{Outcome, fs_mount_read};

fuzz_target!(|data: &[u8]| -> Corpus {
    match fs_mount_read::run(data) {
        Outcome::Ran => Corpus::Keep,
        Outcome::Rejected => Corpus::Reject,
    }
});
