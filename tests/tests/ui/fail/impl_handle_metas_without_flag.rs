use presence_core::presence;
use presence_core::presence::{HandleMetas, InitError, PresenceContext, PresenceDiff, TopicMetas};

presence_core::pubsub_server!(pub AppPubSub);

/// Implements `HandleMetas`, but does not name `handle_metas`: it would never run.
#[presence(pubsub = AppPubSub, pool_size = 2)]
pub struct RoomPresence;

impl HandleMetas for RoomPresence {
    type State = ();

    fn init(&self, _ctx: &PresenceContext) -> Result<(), InitError> {
        Ok(())
    }

    async fn handle_metas(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        _diff: &PresenceDiff<Self>,
        _presences: &TopicMetas,
        state: (),
    ) {
        state
    }
}

fn main() {}
