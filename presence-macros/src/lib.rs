//! The `#[presence]` attribute macro.
