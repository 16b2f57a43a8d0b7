use presence_core::Presence;
use presence_core::presence::{HandleMetas, InitError, PresenceContext, PresenceDiff, TopicMetas};

presence_core::pubsub_server!(pub AppPubSub);

/// `init` was a flag of the first edition; it is now a method of `HandleMetas`.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, init, handle_metas)]
pub struct RoomPresence;

impl HandleMetas for RoomPresence {
    type State = u32;

    fn init(&self, _ctx: &PresenceContext) -> Result<u32, InitError> {
        Ok(0)
    }

    async fn handle_metas(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        _diff: &PresenceDiff<Self>,
        _presences: &TopicMetas,
        state: u32,
    ) -> u32 {
        state + 1
    }
}

fn main() {}
