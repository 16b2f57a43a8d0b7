//! The Redis adapter's reassembly of long envelopes sent in parts, over a sequence of
//! messages; each envelope put together goes through the envelope harness.
//!
//! The harness, and what it checks, is `presence_core::__fuzz::redis_parts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_core::__fuzz::redis_parts(data));
