//! The `vhdx_open_read` target: its input, driver and checks are
//! `vmbdev_fuzz_harness::vhdx_open_read`, which the corpus replay test runs too.
#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use vmbdev_fuzz_harness::{Outcome, vhdx_open_read};

fuzz_target!(|data: &[u8]| -> Corpus {
    match vhdx_open_read::run(data) {
        Outcome::Ran => Corpus::Keep,
        Outcome::Rejected => Corpus::Reject,
    }
});
