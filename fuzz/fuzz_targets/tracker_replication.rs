//! The tracker's replication decoder feeding a live shard, with the state's invariant checks.
//!
//! The harness, and what it checks, is `presence_core::__fuzz::tracker_replication`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_core::__fuzz::tracker_replication(data));
