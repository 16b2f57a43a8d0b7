//! The expansion is lint-clean: no warning, and no missing docs on the helpers it adds to a
//! public struct.
#![deny(warnings, missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rust_2018_idioms, unused_qualifications, clippy::all)]

use presence_core::presence;
use presence_core::presence::{Fetch, FetchError, HandleMetas, Init, PresenceDiff};
use presence_core::presence::{PresenceMap, TopicMetas};

presence_core::pubsub_server!(
    /// The pub/sub.
    pub AppPubSub
);

/// Who is in each room.
#[presence(pubsub = AppPubSub)]
#[derive(Debug)]
pub struct RoomPresence;

/// A presence with every hook.
#[presence(pubsub = AppPubSub, fetch, init, handle_metas, pool_size = 2)]
#[derive(Debug)]
pub struct Everything;

impl Fetch for Everything {
    type Extra = ();

    async fn fetch(&self, _topic: &str, presences: PresenceMap) -> Result<PresenceMap, FetchError> {
        Ok(presences)
    }
}

impl Init for Everything {
    type State = usize;

    fn init(&self) -> usize {
        0
    }
}

impl HandleMetas for Everything {
    async fn handle_metas(
        &self,
        _topic: &str,
        _diff: &PresenceDiff,
        _presences: &TopicMetas,
        state: usize,
    ) -> usize {
        state + 1
    }
}

/// Private, with unused helpers.
#[presence(pubsub = AppPubSub)]
#[derive(Debug)]
struct Private;

mod inner {
    /// Crate-visible, with unused helpers.
    #[presence_core::presence(pubsub = super::AppPubSub)]
    #[derive(Debug)]
    pub(crate) struct InCrate;
}

fn main() {
    let _ = (RoomPresence, Everything, Private, inner::InCrate);
}
