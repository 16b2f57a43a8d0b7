//! Cross-crate tests of the presence workspace live under `tests/`.
