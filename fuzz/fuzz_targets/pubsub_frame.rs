//! The node-to-node pub/sub frame decoder, with a re-encoding round trip.
//!
//! The harness, and what it checks, is `presence_core::__fuzz::pubsub_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_core::__fuzz::pubsub_frame(data));
