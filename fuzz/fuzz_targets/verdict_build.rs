//! cargo-fuzz target: see check_verdict_build in ../checks.rs for what is checked.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_verdict_build(data));
