use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

/// A string is not a JSON object: Phoenix puts `phx_ref` in every meta.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, meta = String)]
pub struct RoomPresence;

fn main() {}
