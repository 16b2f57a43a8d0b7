use presence_core::presence;
use presence_core::presence::{HandleMetas, Init, Presence, PresenceDiff, TopicMetas};

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub, init, handle_metas)]
pub struct Hooked;

impl Init for Hooked {
    type State = Vec<String>;

    fn init(&self) -> Vec<String> {
        Vec::new()
    }
}

impl HandleMetas for Hooked {
    async fn handle_metas(
        &self,
        topic: &str,
        _diff: &PresenceDiff,
        _presences: &TopicMetas,
        mut state: Vec<String>,
    ) -> Vec<String> {
        state.push(topic.to_owned());
        state
    }
}

fn main() {
    assert!(Hooked::HANDLES_METAS && !Hooked::FETCHES);
    assert!(Presence::init(&Hooked).is_empty());
}
