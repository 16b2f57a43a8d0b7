//! Phoenix channels over poem.
