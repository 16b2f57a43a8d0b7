//! Distributed presence tracking for Rust, after Phoenix Presence.
//!
//! This crate holds the engine:
//!
//! - [`pubsub`]: a cheap-to-clone [`PubSub`] handle with an in-process default and an
//!   [`Adapter`](pubsub::Adapter) trait for clusters;
//! - [`tracker`]: a replicated presence [`Tracker`], a delta-state CRDT gossiped over the pub/sub
//!   with heartbeats, catch-up transfers, down and permdown detection, sharded by topic.
//!
//! Presences are owned by an [`Owner`]: when the owner is dropped (its task finished, panicked or
//! was aborted) every presence it tracked leaves, on every node.
//!
//! # Examples
//!
//! ```
//! use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pubsub = PubSub::new("node-a");
//! let tracker = Tracker::start("MyPresence", pubsub, TrackerConfig::default())?;
//!
//! let owner = Owner::new();
//! tracker.track(&owner, "room:lobby", "alice", json!({"status": "online"}))?;
//! assert_eq!(tracker.list("room:lobby").len(), 1);
//!
//! drop(owner); // alice leaves
//! assert!(tracker.list("room:lobby").is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `macros` (default): re-exports `#[derive(Presence)]` and its attribute spelling
//!   `#[presence(...)]`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

#[allow(unused_extern_crates)]
extern crate self as presence_core;

mod meta;
mod owner;
pub mod presence;
pub mod pubsub;
pub mod registry;
pub mod supervisor;
pub mod tracker;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod __private;

pub use meta::{Meta, PhxRef};
pub use owner::{Owner, OwnerId};
pub use presence::{Presence, PresenceHandle};
pub use pubsub::PubSub;
pub use registry::Registry;
pub use tracker::{Tracker, TrackerConfig};

#[cfg(feature = "macros")]
pub use presence_macros::{Presence, presence};
