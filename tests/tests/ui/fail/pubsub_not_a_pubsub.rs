use presence_core::presence;

pub struct NotAPubSub;

#[presence(pubsub = NotAPubSub)]
pub struct RoomPresence;

fn main() {}
