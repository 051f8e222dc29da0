//! Fuzz target: the check is `tests::fuzz_checks::directory_event`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tests::fuzz_checks::directory_event(data));
