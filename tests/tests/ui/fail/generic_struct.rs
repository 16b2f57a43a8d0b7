use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub)]
pub struct RoomPresence<T> {
    db: T,
}

fn main() {}
