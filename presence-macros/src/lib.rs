//! `#[derive(Presence)]` and the `#[presence(...)]` attribute. Use them through
//! `presence_core` (`presence_core::Presence`, `presence_core::presence`), never by depending
//! on this crate: the two are released in lockstep.
//!
//! See the derive's documentation for the syntax and what it generates.

mod args;
mod errors;
mod expand;
mod input;

use proc_macro::TokenStream;

/// Declares a presence: implements `presence_core::presence::Presence` for a struct and adds
/// typed helpers to it. The struct is left as written.
///
/// ```text
/// presence_core::pubsub_server!(pub AppPubSub);
///
/// #[derive(Presence)]
/// #[presence(pubsub = AppPubSub, meta = UserMeta)]
/// pub struct RoomPresence;
/// ```
///
/// `#[presence(pubsub = AppPubSub, ...)]` used as an attribute (without the derive) is the
/// same declaration spelled differently; the derive is the primary spelling because, like
/// serde's, it cannot change the struct, and it reads like every other derive.
///
/// # Arguments
///
/// - `pubsub = <expr>` (required): the pub/sub server the presence broadcasts on, declared
///   with `presence_core::pubsub_server!`.
/// - `meta = <type>`: the metadata users track, a `Serialize + DeserializeOwned` type that
///   serializes to a JSON object (a struct with named fields, or a map); `serde_json::Value`
///   by default, which must then be an object such as `json!({"status": "online"})`.
///   Scalars, strings and sequences are refused at compile time; other non-objects when
///   tracked.
/// - `name = <&'static str>`: the tracker name, the same on every node: presences of one
///   name replicate. The struct's name by default (moving the struct to another module keeps
///   it); set it when two presences share a struct name.
/// - `fetch`: the struct implements `presence_core::presence::Fetch`, which enriches
///   presences before they are listed or broadcast.
/// - `handle_metas`: the struct implements `presence_core::presence::HandleMetas` (`init`
///   and `handle_metas`), which sees every diff after it is broadcast.
/// - Tracker options, each an expression: `pool_size`, `broadcast_period`,
///   `max_silent_periods`, `down_period`, `permdown_period`, `clock_sample_periods`,
///   `max_delta_sizes`, and the presence's `diff_window` (a `Duration`: how long a busy
///   topic's diffs may be held and merged). The options given to `child_spec` are merged over
///   them.
///
/// Naming a hook without implementing it, and implementing one without naming it, are both
/// compile errors that say which line to add.
///
/// # What it generates
///
/// `impl presence_core::presence::Presence` for the struct, and these helpers, with the
/// struct's visibility (`socket` is anything that is a
/// `presence_core::presence::PresenceSocket`, such as presence-poem's `ChannelContext`: its
/// registry, owner and topic are used):
///
/// ```text
/// fn child_spec(self, options: PresenceOptions) -> PresenceSpec<Self>
/// fn running(registry: &Registry) -> Result<PresenceHandle<Self>, PresenceError>
/// fn track(socket: &impl PresenceSocket, key: &str, meta: &Meta) -> Result<PhxRef, PresenceError>
/// fn untrack(socket: &impl PresenceSocket, key: &str) -> Result<(), PresenceError>
/// fn update(socket: &impl PresenceSocket, key: &str, meta: &Meta) -> Result<PhxRef, PresenceError>
/// fn update_with(socket: &impl PresenceSocket, key: &str, f: impl FnOnce(Meta) -> Meta)
///     -> Result<PhxRef, PresenceError>
/// async fn list(socket: &impl PresenceSocket) -> Result<PresenceMap<Self>, PresenceError>
/// async fn get_by_key(socket: &impl PresenceSocket, key: &str)
///     -> Result<Option<PresenceEntry<Self>>, PresenceError>
/// fn count(socket: &impl PresenceSocket) -> Result<PresenceCount, PresenceError>
/// ```
///
/// `Meta` is the `meta` argument's type. The socket forms fail only when the presence is not
/// running in the socket's registry. For any owner or topic (an HTTP handler, a background
/// task), use the `PresenceHandle` that `running` returns (or presence-poem's `PresenceData`
/// extractor): its `list`, `get_by_key`, `count`, `track`, `update_with`... take a topic.
///
/// # Errors
///
/// Misuse is reported once, at the offending token, all at once: a missing `pubsub` or
/// `#[presence(...)]`, an unknown argument (with "did you mean" for typos), a repeated
/// argument, a flag given a value, a meta type that cannot be a JSON object, a `pubsub` value
/// that is not a pub/sub server, a hook named but not implemented or implemented but not
/// named, and an item that is not a non-generic struct.
///
/// # Debugging
///
/// Set `PRESENCE_MACROS_DEBUG=1` while building to print every expansion to stderr.
#[proc_macro_derive(Presence, attributes(presence))]
pub fn derive_presence(item: TokenStream) -> TokenStream {
    debug(expand::derive(item.into())).into()
}

/// The attribute spelling of `#[derive(Presence)]`: `#[presence(pubsub = AppPubSub, ...)]` on
/// a struct declares the same presence with the same arguments and helpers, and emits the
/// struct unchanged. See the derive for the arguments and what is generated.
#[proc_macro_attribute]
pub fn presence(args: TokenStream, item: TokenStream) -> TokenStream {
    debug(expand::attribute(args.into(), item.into())).into()
}

fn debug(expanded: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    if std::env::var_os("PRESENCE_MACROS_DEBUG").is_some_and(|v| v == "1") {
        eprintln!("{expanded}");
    }
    expanded
}
