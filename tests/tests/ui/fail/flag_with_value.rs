use presence_core::presence;
use presence_core::presence::{Fetch, FetchError, PresenceContext, PresenceMap};

presence_core::pubsub_server!(pub AppPubSub);

/// The flag still counts: the `impl Fetch` below adds no second error.
#[presence(pubsub = AppPubSub, fetch = true)]
pub struct RoomPresence;

impl Fetch for RoomPresence {
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

fn main() {}
