//! The tracker name: the struct's name by default (not its module path, so moving the struct
//! keeps it), or `name = "..."`, which lets two structs of the same name coexist.
use presence_core::{Presence, presence};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub struct RoomPresence;

mod admin {
    use presence_core::presence;

    /// The same struct name elsewhere, renamed so the two do not replicate into each other.
    #[presence(pubsub = super::AppPubSub, name = "AdminRoomPresence")]
    pub struct RoomPresence;

    pub mod deep {
        /// Deep in modules, the default is still the bare struct name.
        #[derive(presence_core::Presence)]
        #[presence(pubsub = crate::AppPubSub)]
        pub struct Lobby;
    }
}

const NAME: &str = "from a const";

/// Any `&'static str` expression.
#[presence(pubsub = AppPubSub, name = NAME)]
pub struct Named;

fn main() {
    assert_eq!(RoomPresence::NAME, "RoomPresence");
    assert_eq!(admin::RoomPresence::NAME, "AdminRoomPresence");
    assert_eq!(admin::deep::Lobby::NAME, "Lobby");
    assert_eq!(Named::NAME, "from a const");
}
