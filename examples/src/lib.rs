//! The examples' shared code: the chat server, so that `cargo run --example chat`, the tests
//! and the multi-process cluster tests all run the same server.

pub mod chat;
mod status;

/// The README, so that its Rust example is compiled as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
