//! The expansion is lint-clean, in both spellings: no warning, and no missing docs on the
//! helpers it adds to a public struct.
#![deny(warnings, missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rust_2018_idioms, unused_qualifications, unused_results, clippy::all)]

use presence_core::presence::{
    Fetch, FetchError, HandleMetas, InitError, PresenceContext, PresenceDiff, PresenceMap,
    TopicMetas,
};
use presence_core::{Presence, presence};

presence_core::pubsub_server!(
    /// The pub/sub.
    pub AppPubSub
);

/// Who is in each room; the attribute spelling.
#[presence(pubsub = AppPubSub)]
#[derive(Debug)]
pub struct RoomPresence;

/// Who is in each lobby; the derive.
#[derive(Debug, Presence)]
#[presence(pubsub = AppPubSub)]
pub struct LobbyPresence;

/// Every hook, the attribute spelling.
#[presence(pubsub = AppPubSub, fetch, handle_metas, pool_size = 2)]
#[derive(Debug)]
pub struct Everything;

/// Every hook, the derive.
#[derive(Debug, Presence)]
#[presence(pubsub = AppPubSub, fetch, handle_metas, pool_size = 2)]
pub struct DerivedEverything;

macro_rules! hooks {
    ($p:ident) => {
        impl Fetch for $p {
            type Extra = ();

            async fn fetch(
                &self,
                _ctx: &PresenceContext,
                _topic: &str,
                presences: PresenceMap<Self>,
            ) -> Result<PresenceMap<Self>, FetchError> {
                Ok(presences)
            }
        }

        impl HandleMetas for $p {
            type State = usize;

            fn init(&self, _ctx: &PresenceContext) -> Result<usize, InitError> {
                Ok(0)
            }

            async fn handle_metas(
                &self,
                _ctx: &PresenceContext,
                _topic: &str,
                _diff: &PresenceDiff<Self>,
                _presences: &TopicMetas,
                state: usize,
            ) -> usize {
                state + 1
            }
        }
    };
}

hooks!(Everything);
hooks!(DerivedEverything);

/// Private, with unused helpers.
#[presence(pubsub = AppPubSub)]
#[derive(Debug)]
struct Private;

/// Private, with unused helpers; the derive.
#[derive(Debug, Presence)]
#[presence(pubsub = AppPubSub)]
struct DerivedPrivate;

mod inner {
    /// Crate-visible, with unused helpers.
    #[presence_core::presence(pubsub = super::AppPubSub)]
    #[derive(Debug)]
    pub(crate) struct InCrate;

    /// Crate-visible, with unused helpers; the derive.
    #[derive(Debug, presence_core::Presence)]
    #[presence(pubsub = super::AppPubSub)]
    pub(crate) struct DerivedInCrate;
}

fn main() {
    let _ = (RoomPresence, LobbyPresence, Everything, DerivedEverything);
    let _ = (
        Private,
        DerivedPrivate,
        inner::InCrate,
        inner::DerivedInCrate,
    );
}
