//! The Phoenix V2 JSON decoder, with a re-encoding round trip.
//!
//! The harness, and what it checks, is `presence_poem::__fuzz::v2_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_poem::__fuzz::v2_json(data));
