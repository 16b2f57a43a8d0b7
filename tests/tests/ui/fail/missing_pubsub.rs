use presence_core::presence;

#[presence(fetch)]
pub struct RoomPresence;

fn main() {}
