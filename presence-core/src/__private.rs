//! Support for the code `#[presence]` generates. Not public API: anything here may change in
//! any release.

pub use serde_json::{Map, Value};

use crate::presence::{
    Presence, PresenceEntry, PresenceError, PresenceHandle, PresenceMap, PresenceSocket,
};
use crate::registry::{PubSubServer, Registry};
use crate::{Owner, PhxRef, PubSub};

/// The default meta type: a JSON object.
pub type JsonMap = Map<String, Value>;

/// Asserts, where the user wrote the `pubsub` argument, that it names a pub/sub server.
pub const fn assert_pubsub_server<S: PubSubServer>(_: &S) {}

/// The pub/sub of `registry` named by `server`.
pub fn pubsub<S: PubSubServer>(
    registry: &Registry,
    server: &S,
) -> Result<PubSub, crate::registry::RegistryError> {
    registry.pubsub(server)
}

/// The socket helpers are the owner helpers with the channel's owner and topic.
pub fn track<P: Presence>(
    socket: &impl PresenceSocket,
    key: &str,
    meta: &P::Meta,
) -> Result<PhxRef, PresenceError> {
    track_owner::<P>(socket.registry(), socket.owner(), socket.topic(), key, meta)
}

pub fn untrack<P: Presence>(socket: &impl PresenceSocket, key: &str) -> Result<(), PresenceError> {
    untrack_owner::<P>(socket.registry(), socket.owner(), socket.topic(), key)
}

pub fn update<P: Presence>(
    socket: &impl PresenceSocket,
    key: &str,
    meta: &P::Meta,
) -> Result<PhxRef, PresenceError> {
    update_owner::<P>(socket.registry(), socket.owner(), socket.topic(), key, meta)
}

pub fn track_owner<P: Presence>(
    registry: &Registry,
    owner: &Owner,
    topic: &str,
    key: &str,
    meta: &P::Meta,
) -> Result<PhxRef, PresenceError> {
    Ok(PresenceHandle::<P>::from_registry(registry)?.track(owner, topic, key, meta)?)
}

pub fn untrack_owner<P: Presence>(
    registry: &Registry,
    owner: &Owner,
    topic: &str,
    key: &str,
) -> Result<(), PresenceError> {
    PresenceHandle::<P>::from_registry(registry)?.untrack(owner, topic, key);
    Ok(())
}

pub fn update_owner<P: Presence>(
    registry: &Registry,
    owner: &Owner,
    topic: &str,
    key: &str,
    meta: &P::Meta,
) -> Result<PhxRef, PresenceError> {
    Ok(PresenceHandle::<P>::from_registry(registry)?.update(owner, topic, key, meta)?)
}

pub async fn list<P: Presence>(
    registry: &Registry,
    topic: &str,
) -> Result<PresenceMap<P::Extra>, PresenceError> {
    Ok(PresenceHandle::<P>::from_registry(registry)?
        .list(topic)
        .await)
}

pub async fn get_by_key<P: Presence>(
    registry: &Registry,
    topic: &str,
    key: &str,
) -> Result<Option<PresenceEntry<P::Extra>>, PresenceError> {
    Ok(PresenceHandle::<P>::from_registry(registry)?
        .get_by_key(topic, key)
        .await)
}

pub fn count<P: Presence>(
    registry: &Registry,
    topic: &str,
) -> Result<crate::tracker::PresenceCount, PresenceError> {
    Ok(PresenceHandle::<P>::from_registry(registry)?.count(topic))
}
