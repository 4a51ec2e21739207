//! The `vmbus_control` target: its input, driver and checks are
//! `vmbdev_fuzz_harness::vmbus_control`, which the corpus replay test runs too.
#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use vmbdev_fuzz_harness::{Outcome, vmbus_control};

fuzz_target!(|data: &[u8]| -> Corpus {
    match vmbus_control::run(data) {
        Outcome::Ran => Corpus::Keep,
        Outcome::Rejected => Corpus::Reject,
    }
});
