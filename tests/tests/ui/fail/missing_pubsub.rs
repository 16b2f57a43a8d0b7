use presence_core::presence;

#[presence(pool_size = 2)]
pub struct RoomPresence;

fn main() {}
