//! The running services of an application, found by type: pub/subs and presences.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, PoisonError, RwLock};

use crate::PubSub;

/// Names a pub/sub server, the way `MyApp.PubSub` names one in Phoenix.
///
/// Declare one with [`pubsub_server!`](crate::pubsub_server) and pass it to
/// `#[presence(pubsub = ...)]`; a [`Registry`] holds the running [`PubSub`] under it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pubsub server",
    label = "expected a pubsub server here",
    note = "declare one with `presence_core::pubsub_server!(pub AppPubSub);` and write `pubsub = AppPubSub`"
)]
pub trait PubSubServer: Send + Sync + 'static {
    /// The server's name, for logs and errors.
    fn name(&self) -> &'static str;
}

/// Declares a unit struct that names a pub/sub server.
///
/// # Examples
///
/// ```
/// presence_core::pubsub_server!(
///     /// The application's pub/sub.
///     pub AppPubSub
/// );
/// use presence_core::registry::PubSubServer;
/// assert_eq!(AppPubSub.name(), "AppPubSub");
/// ```
#[macro_export]
macro_rules! pubsub_server {
    ($(#[$attr:meta])* $vis:vis $name:ident) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        $vis struct $name;

        impl $crate::registry::PubSubServer for $name {
            fn name(&self) -> &'static str {
                ::core::stringify!($name)
            }
        }
    };
}

/// A service the registry does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The named pub/sub was not started (start it before the presences that use it).
    #[error("pubsub server `{0}` is not running: start it before the presences that use it")]
    PubSubNotRunning(&'static str),
    /// The presence was not started (register it before the web endpoint).
    #[error("presence `{0}` is not running: start it before the endpoint that uses it")]
    PresenceNotRunning(&'static str),
    /// No registry reached the web socket the presence was used from: its routes are not
    /// wrapped in presence-poem's `PresenceMiddleware`.
    #[error(
        "no registry reached this socket: wrap the routes in `presence_poem::PresenceMiddleware::new(registry)`"
    )]
    NoRegistry,
    /// A socket's pub/sub is another one than the presence broadcasts on, so the socket's
    /// clients would never receive the presence's diffs.
    #[error(
        "presence `{presence}` broadcasts on the pub/sub of node `{presence_pubsub}`, but this socket was built with another pub/sub (of node `{socket_pubsub}`): build the socket on the presence's pub/sub (`PhoenixSocket::builder_for(&registry, &AppPubSub)`)"
    )]
    PubSubMismatch {
        /// The presence's name.
        presence: &'static str,
        /// The node name of the pub/sub the presence broadcasts on.
        presence_pubsub: String,
        /// The node name of the socket's pub/sub.
        socket_pubsub: String,
    },
}

/// The running services of an application, by type. Clones share it.
///
/// A [`Supervisor`](crate::supervisor::Supervisor) fills one as it starts its children;
/// presence-poem's middleware hands it to channels.
///
/// # Examples
///
/// ```
/// use presence_core::registry::Registry;
/// use presence_core::PubSub;
///
/// presence_core::pubsub_server!(pub AppPubSub);
///
/// let registry = Registry::new();
/// registry.insert_pubsub(&AppPubSub, PubSub::new("a"));
/// assert_eq!(registry.pubsub(&AppPubSub)?.node_name(), "a");
/// # Ok::<(), presence_core::registry::RegistryError>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    services: Arc<RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
    /// False for the stand-in of a registry that was never provided.
    provided: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            services: Arc::default(),
            provided: true,
        }
    }
}

/// The slot of the pub/sub named by `S`.
struct PubSubSlot<S>(PubSub, PhantomData<fn() -> S>);

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stand-in for a registry that did not reach where it is needed (presence-poem uses
    /// it for a socket without `PresenceMiddleware`): it holds nothing, and looking up a
    /// pub/sub or a presence in it fails with [`RegistryError::NoRegistry`], which names the
    /// fix, instead of "not running".
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::registry::{Registry, RegistryError};
    /// presence_core::pubsub_server!(pub AppPubSub);
    ///
    /// let missing = Registry::not_provided();
    /// assert_eq!(missing.pubsub(&AppPubSub).unwrap_err(), RegistryError::NoRegistry);
    /// ```
    pub fn not_provided() -> Self {
        Registry {
            services: Arc::default(),
            provided: false,
        }
    }

    /// Whether this registry was provided (it is not a [`not_provided`](Self::not_provided)
    /// stand-in).
    pub fn is_provided(&self) -> bool {
        self.provided
    }

    /// The error for a service this registry does not hold: `missing`, or
    /// [`RegistryError::NoRegistry`] for a stand-in.
    pub(crate) fn missing(&self, missing: RegistryError) -> RegistryError {
        if self.provided {
            missing
        } else {
            RegistryError::NoRegistry
        }
    }

    /// Stores `value` under its type, replacing any earlier one.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) {
        self.services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// A clone of the value stored under type `T`.
    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Removes the value stored under type `T`.
    pub fn remove<T: Any + Send + Sync>(&self) {
        self.services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&TypeId::of::<T>());
    }

    /// Stores `pubsub` as the running server `server`.
    pub fn insert_pubsub<S: PubSubServer>(&self, server: &S, pubsub: PubSub) {
        let _ = server;
        self.services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                TypeId::of::<PubSubSlot<S>>(),
                Arc::new(PubSubSlot::<S>(pubsub, PhantomData)),
            );
    }

    /// The running pub/sub named by `server`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::PubSubNotRunning`] when it was not started.
    pub fn pubsub<S: PubSubServer>(&self, server: &S) -> Result<PubSub, RegistryError> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&TypeId::of::<PubSubSlot<S>>())
            .and_then(|v| v.downcast_ref::<PubSubSlot<S>>())
            .map(|slot| slot.0.clone())
            .ok_or_else(|| self.missing(RegistryError::PubSubNotRunning(server.name())))
    }

    /// Removes the pub/sub named by the server type `S`.
    pub fn remove_pubsub<S: PubSubServer>(&self) {
        self.remove::<PubSubSlot<S>>();
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Registry").field("services", &n).finish()
    }
}
