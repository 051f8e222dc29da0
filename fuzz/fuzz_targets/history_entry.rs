//! Fuzz target: the check is `tests::fuzz_checks::history_entry`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tests::fuzz_checks::history_entry(data));
