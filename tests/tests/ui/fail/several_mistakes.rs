// Every mistake is reported in one compile.
use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub, pool_size = 2, pool_size = 3, colour = "red", handle_metas = true, init)]
#[presence(name = 5, diff_window = 20, meta = Vec<u8>)]
pub struct RoomPresence<T>(T);

fn main() {}
