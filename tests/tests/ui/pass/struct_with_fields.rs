//! Structs with named and tuple fields, private ones included, in both spellings.
use presence_core::{Presence, presence};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub struct Named {
    pub limit: usize,
    secret: String,
}

#[presence(pubsub = AppPubSub)]
pub struct Tuple(pub u8, String);

fn main() {
    let named = Named {
        limit: 3,
        secret: "s".to_owned(),
    };
    assert_eq!((named.limit, named.secret.as_str()), (3, "s"));
    let _spec = named.child_spec(presence_core::presence::PresenceOptions::new());
    let tuple = Tuple(1, "t".to_owned());
    assert_eq!((tuple.0, tuple.1.as_str()), (1, "t"));
    let _spec = tuple.child_spec(presence_core::presence::PresenceOptions::new());
}
