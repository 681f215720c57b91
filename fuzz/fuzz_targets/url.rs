//! Fuzz target `url`: see `kombu_test_support::fuzz::url_parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kombu_test_support::fuzz::url_parse(data));
