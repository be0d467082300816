//! cargo-fuzz target: see check_config_parse in ../checks.rs for what is checked.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_config_parse(data));
