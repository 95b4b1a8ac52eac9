//! See fuzz/harness/schedule.rs for the input format and what is checked.
#![no_main]

#[path = "../harness/schedule.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
