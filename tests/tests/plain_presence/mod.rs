//! A presence with no hooks, no pub/sub of its own in a registry and JSON metas: the tests
//! start it with `PresenceHandle::start` on a pub/sub of their choice.

use presence_core::PubSub;
use presence_core::presence::{InitError, Presence, PresenceContext};
use presence_core::registry::{Registry, RegistryError};
use serde_json::Value;

/// The presence `Room`: metas are any JSON value.
pub(crate) struct Room;

impl Presence for Room {
    type Meta = Value;
    type Extra = ();
    type State = ();
    const NAME: &'static str = "Room";
    fn pubsub(_: &Registry) -> Result<PubSub, RegistryError> {
        Err(RegistryError::PresenceNotRunning("Room"))
    }
    fn run_init(&self, _: &PresenceContext) -> Result<(), InitError> {
        Ok(())
    }
}
