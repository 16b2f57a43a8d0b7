use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

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
    assert_eq!(named.secret, "s");
    let _spec = named.child_spec(presence_core::presence::PresenceOptions::new());
    let tuple = Tuple(1, "t".to_owned());
    assert_eq!(tuple.1, "t");
    let _spec = tuple.child_spec(presence_core::presence::PresenceOptions::new());
}
