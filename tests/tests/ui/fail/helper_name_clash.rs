use presence_core::Presence;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub struct RoomPresence;

impl RoomPresence {
    /// Clashes with the generated `track`.
    pub fn track(&self) {}
}

fn main() {}
