//! The replicated presence tracker.

pub(crate) mod clock;
pub(crate) mod generations;
pub(crate) mod state;
