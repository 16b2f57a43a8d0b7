//! The Phoenix V2 binary frame decoder: decoded fields must make up the frame.
//!
//! The harness, and what it checks, is `presence_poem::__fuzz::v2_binary`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_poem::__fuzz::v2_binary(data));
