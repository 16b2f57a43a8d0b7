// Every mistake is reported in one compile.
use presence_core::presence;

presence_core::pubsub_server!(pub AppPubSub);

#[presence(pubsub = AppPubSub, pool_size = 2, pool_size = 3, colour = "red", handle_metas, init = 1)]
pub struct RoomPresence<T>(T);

fn main() {}
