//! Cross-crate tests of the presence workspace live under `tests/`.
//!
//! The library itself only holds what the tools in `src/bin` share.

pub mod procfs;
