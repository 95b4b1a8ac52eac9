//! See fuzz/harness/server_answers.rs for the input format and what is checked.
#![no_main]

#[path = "../harness/server_answers.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
