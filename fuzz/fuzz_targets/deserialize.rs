//! Fuzz target `deserialize`: see `kombu_test_support::fuzz::deserialize`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kombu_test_support::fuzz::deserialize(data));
