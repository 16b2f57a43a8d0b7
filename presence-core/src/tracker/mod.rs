//! The replicated presence tracker.
