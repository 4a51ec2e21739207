//! The `ring_reader` target: its input, driver and checks are
//! `vmbdev_fuzz_harness::ring_reader`, which the corpus replay test runs too.
#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use vmbdev_fuzz_harness::{Outcome, ring_reader};

fuzz_target!(|data: &[u8]| -> Corpus {
    match ring_reader::run(data) {
        Outcome::Ran => Corpus::Keep,
        Outcome::Rejected => Corpus::Reject,
    }
});
