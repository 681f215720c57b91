//! Fuzz target `amqp_headers`: see `kombu_test_support::fuzz::amqp_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kombu_test_support::fuzz::amqp_headers(data));
