//! cargo-fuzz target: see check_conversation in ../conversation.rs for what is checked.
#![no_main]

#[path = "../checks.rs"]
mod checks;
#[path = "../conversation.rs"]
mod conversation;
// The project's own Sieve parser, which judges every verdict.
#[path = "../../tests/support/sieve.rs"]
mod sieve;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    conversation::check_conversation(data);
});
