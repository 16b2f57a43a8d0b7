//! The Redis envelope decoder (re-encodes to the same bytes), then the frame it carries.
//!
//! The harness, and what it checks, is `presence_core::__fuzz::redis_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_core::__fuzz::redis_envelope(data));
