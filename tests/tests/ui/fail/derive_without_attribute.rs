use presence_core::Presence;

#[derive(Presence)]
pub struct RoomPresence;

fn main() {}
