//! The Phoenix V1 JSON decoder (and the `vsn` negotiation), with a re-encoding round trip.
//!
//! The harness, and what it checks, is `presence_poem::__fuzz::v1_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_poem::__fuzz::v1_json(data));
