//! cargo-fuzz target: see check_bmi_verdict_str in ../bmi_checks.rs for what is checked.
#![no_main]

#[path = "../bmi_checks.rs"]
mod bmi_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bmi_checks::check_bmi_verdict_str(data));
