//! `handle_metas` with its `init`, both in `HandleMetas`; `init` runs when the presence
//! starts, and can refuse to start it.
use presence_core::presence::{
    HandleMetas, InitError, PresenceContext, PresenceDiff, PresenceHandle, PresenceOptions,
    TopicMetas,
};
use presence_core::{Presence, PubSub};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas)]
pub struct Hooked {
    first: String,
}

impl HandleMetas for Hooked {
    type State = Vec<String>;

    fn init(&self, _ctx: &PresenceContext) -> Result<Vec<String>, InitError> {
        Ok(vec![self.first.clone()])
    }

    async fn handle_metas(
        &self,
        _ctx: &PresenceContext,
        topic: &str,
        _diff: &PresenceDiff<Self>,
        _presences: &TopicMetas,
        mut state: Vec<String>,
    ) -> Vec<String> {
        state.push(topic.to_owned());
        state
    }
}

/// `init` can refuse to start the presence.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas)]
pub struct Refuses;

impl HandleMetas for Refuses {
    type State = ();

    fn init(&self, _ctx: &PresenceContext) -> Result<(), InitError> {
        Err("no database".into())
    }

    async fn handle_metas(
        &self,
        _: &PresenceContext,
        _: &str,
        _: &PresenceDiff<Self>,
        _: &TopicMetas,
        state: (),
    ) {
        state
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    fn assert_state<P: HandleMetas<State = Vec<String>>>() {}
    assert_state::<Hooked>();
    assert!(Hooked::HANDLES_METAS && !Hooked::FETCHES);
    let hooked = Hooked {
        first: "start".to_owned(),
    };
    let started = PresenceHandle::start(hooked, PubSub::new("a"), &PresenceOptions::new());
    assert!(started.is_ok());
    let refused = PresenceHandle::start(Refuses, PubSub::new("b"), &PresenceOptions::new());
    let error = refused.expect_err("init refuses").to_string();
    assert!(error.contains("no database"), "{error}");
}
