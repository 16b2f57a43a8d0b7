use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

/// Says it handles metas, but does not implement `HandleMetas`.
#[presence(pubsub = AppPubSub, handle_metas)]
pub struct RoomPresence;

fn main() {}
