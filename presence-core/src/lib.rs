//! Distributed presence tracking for Rust, after Phoenix Presence.
//!
//! This crate holds the engine:
//!
//! - [`pubsub`]: a cheap-to-clone [`PubSub`] handle with an in-process default and an
//!   [`Adapter`](pubsub::Adapter) trait for clusters;
//! - [`tracker`]: a replicated presence [`Tracker`], a delta-state CRDT gossiped over the pub/sub
//!   with heartbeats, catch-up transfers, down and permdown detection, sharded by topic;
//! - [`presence`](mod@presence): the Presence layer, after Phoenix.Presence: presences grouped by key,
//!   enriched by a [`Fetch`](presence::Fetch), pushed as ordered `presence_diff`s, seen by
//!   [`HandleMetas`](presence::HandleMetas); declared with [`#[derive(Presence)]`](derive@Presence);
//! - [`supervisor`]: starts the pub/sub, the presences and the web endpoint in order, and
//!   restarts them.
//!
//! Presences are owned by an [`Owner`]: when the owner is dropped (its task finished, panicked or
//! was aborted) every presence it tracked leaves, on every node.
//!
//! Coming from Phoenix? [`migrating_from_phoenix`] puts each `Phoenix.Presence` function and
//! callback beside its Rust form, and the [`presence`](mod@presence) module docs hold Phoenix.Presence's
//! examples written in Rust. The websocket side (Phoenix channels for phoenix.js, on poem) is
//! the `presence-poem` crate, whose docs show a whole application.
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
mod metrics;
mod owner;
pub mod presence;
pub mod pubsub;
pub mod registry;
pub mod supervisor;
pub mod tracker;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod __private;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;

#[doc = include_str!("docs/migrating_from_phoenix.md")]
pub mod migrating_from_phoenix {}

pub use meta::{Meta, PhxRef};
pub use owner::{Owner, OwnerId};
pub use presence::{Presence, PresenceHandle};
pub use pubsub::PubSub;
pub use registry::Registry;
pub use tracker::{Tracker, TrackerConfig};

#[cfg(feature = "macros")]
pub use presence_macros::presence;
