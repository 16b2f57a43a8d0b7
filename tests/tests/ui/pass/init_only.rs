use presence_core::presence;
use presence_core::presence::{Init, Presence};

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub, init)]
pub struct WithState;

impl Init for WithState {
    type State = u32;

    fn init(&self) -> u32 {
        7
    }
}

fn main() {
    assert!(!WithState::HANDLES_METAS);
    assert_eq!(Presence::init(&WithState), 7);
}
