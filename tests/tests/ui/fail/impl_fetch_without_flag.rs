use presence_core::Presence;
use presence_core::presence::{Fetch, FetchError, PresenceContext, PresenceMap};

presence_core::pubsub_server!(pub AppPubSub);

/// Implements `Fetch`, but does not name `fetch`: the fetch would never run.
#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
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
