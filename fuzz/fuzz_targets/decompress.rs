//! Fuzz target `decompress`: see `kombu_test_support::fuzz::decompress`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kombu_test_support::fuzz::decompress(data));
