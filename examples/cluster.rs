//! Placeholder until the macro lands.

fn main() {}
