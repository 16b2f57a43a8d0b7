//! Property tests of the CRDT at the pure level.
