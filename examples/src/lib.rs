//! The examples' shared code: the chat server, so that `cargo run --example chat`, the tests
//! and the multi-process cluster tests all run the same server.

pub mod chat;
