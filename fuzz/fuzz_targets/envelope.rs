//! Fuzz target `envelope`: see `kombu_test_support::fuzz::envelope_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kombu_test_support::fuzz::envelope_decode(data));
