//! Support for the code `#[derive(Presence)]` generates. Not public API: anything here may
//! change in any release.

use std::any::Any;
use std::marker::PhantomData;

pub use serde_json::Value;

use crate::PhxRef;
use crate::presence::{
    Fetch, HandleMetas, Presence, PresenceEntry, PresenceError, PresenceHandle, PresenceMap,
    PresenceSocket,
};
use crate::registry::Registry;

/// The state of a derived presence's `HandleMetas`, type-erased so that the `Presence`
/// impl's types and method signatures (`state: Self::State`) never name the hook's trait: a
/// missing `impl HandleMetas` is then reported once, at the `handle_metas` flag, rather than
/// again in presence-core's signatures.
#[allow(missing_debug_implementations)]
pub struct HookState(Box<dyn Any + Send>);

impl HookState {
    /// Erases `state`.
    pub fn new<S: Send + 'static>(state: S) -> Self {
        HookState(Box::new(state))
    }

    /// The state `new` erased.
    ///
    /// # Panics
    ///
    /// When it is not an `S`: never, since one presence makes and takes its own state.
    pub fn take<S: 'static>(self) -> S {
        match self.0.downcast::<S>() {
            Ok(state) => *state,
            Err(_) => unreachable!("a presence's state is the one its `init` made"),
        }
    }
}

#[allow(missing_debug_implementations)]
/// Tells at compile time whether `T` implements a hook trait: the inherent constants (true)
/// take precedence over the trait's (false) when their bounds hold.
pub struct Probe<T>(PhantomData<T>);

/// The fallback answers of [`Probe`].
pub trait ProbeFallback {
    const FETCH: bool = false;
    const HANDLE_METAS: bool = false;
}

impl<T> ProbeFallback for Probe<T> {}

impl<T: Fetch> Probe<T> {
    pub const FETCH: bool = true;
}

impl<T: HandleMetas> Probe<T> {
    pub const HANDLE_METAS: bool = true;
}

/// The running presence `P` of `registry`, as the generated `running` returns it.
pub fn running<P: Presence>(registry: &Registry) -> Result<PresenceHandle<P>, PresenceError> {
    Ok(PresenceHandle::<P>::from_registry(registry)?)
}

pub fn track<P: Presence>(
    socket: &impl PresenceSocket,
    key: &str,
    meta: &P::Meta,
) -> Result<PhxRef, PresenceError> {
    Ok(running::<P>(socket.registry())?.track(socket.owner(), socket.topic(), key, meta)?)
}

pub fn untrack<P: Presence>(socket: &impl PresenceSocket, key: &str) -> Result<(), PresenceError> {
    running::<P>(socket.registry())?.untrack(socket.owner(), socket.topic(), key);
    Ok(())
}

pub fn update<P: Presence>(
    socket: &impl PresenceSocket,
    key: &str,
    meta: &P::Meta,
) -> Result<PhxRef, PresenceError> {
    Ok(running::<P>(socket.registry())?.update(socket.owner(), socket.topic(), key, meta)?)
}

pub fn update_with<P: Presence>(
    socket: &impl PresenceSocket,
    key: &str,
    f: impl FnOnce(P::Meta) -> P::Meta,
) -> Result<PhxRef, PresenceError> {
    Ok(running::<P>(socket.registry())?.update_with(socket.owner(), socket.topic(), key, f)?)
}

pub async fn list<P: Presence>(
    socket: &impl PresenceSocket,
) -> Result<PresenceMap<P>, PresenceError> {
    Ok(running::<P>(socket.registry())?.list(socket.topic()).await)
}

pub async fn get_by_key<P: Presence>(
    socket: &impl PresenceSocket,
    key: &str,
) -> Result<Option<PresenceEntry<P>>, PresenceError> {
    Ok(running::<P>(socket.registry())?
        .get_by_key(socket.topic(), key)
        .await)
}

pub fn count<P: Presence>(
    socket: &impl PresenceSocket,
) -> Result<crate::tracker::PresenceCount, PresenceError> {
    Ok(running::<P>(socket.registry())?.count(socket.topic()))
}
