//! The `storvsp_session` target: its input, driver and checks are
//! `vmbdev_fuzz_harness::storvsp_session`, which the corpus replay test runs too.
#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use vmbdev_fuzz_harness::{Outcome, storvsp_session};

fuzz_target!(|data: &[u8]| -> Corpus {
    match storvsp_session::run(data) {
        Outcome::Ran => Corpus::Keep,
        Outcome::Rejected => Corpus::Reject,
    }
});
