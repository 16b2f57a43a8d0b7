//! The `#[presence]` attribute macro. Use it through `presence_core::presence`, never by
//! depending on this crate: the two are released in lockstep.
//!
//! See the attribute's documentation for the syntax and what it generates.

mod args;
mod errors;
mod expand;
mod input;

use proc_macro::TokenStream;

/// Declares a presence: implements `presence_core::presence::Presence` for a struct and adds
/// typed helpers to it.
///
/// ```text
/// presence_core::pubsub_server!(pub AppPubSub);
///
/// #[presence(pubsub = AppPubSub)]
/// pub struct RoomPresence;
/// ```
///
/// # Arguments
///
/// - `pubsub = <expr>` (required): the pub/sub server the presence broadcasts on, declared
///   with `presence_core::pubsub_server!`.
/// - `meta = <type>`: the metadata users track, any `Serialize + DeserializeOwned` type; a
///   JSON object (`serde_json::Map<String, Value>`) by default.
/// - `name = <&'static str>`: the tracker name, which must be the same on every node; the
///   struct's module path and name by default.
/// - `fetch`: the struct implements `presence_core::presence::Fetch`, which enriches
///   presences before they are listed or broadcast.
/// - `init`: the struct implements `presence_core::presence::Init`, the state of
///   `handle_metas`.
/// - `handle_metas` (with `init`): the struct implements
///   `presence_core::presence::HandleMetas`, which sees every diff after it is broadcast.
/// - Tracker options, each an expression: `pool_size`, `broadcast_period`,
///   `max_silent_periods`, `down_period`, `permdown_period`, `clock_sample_periods`,
///   `max_delta_sizes`, and the presence's `diff_window` (a `Duration`: how long a busy
///   topic's diffs may be held and merged). The options given to `child_spec` are merged over
///   them.
///
/// # What it generates
///
/// The struct is kept as written (attributes, docs, visibility, fields). Beside it:
///
/// - `impl presence_core::presence::Presence` for the struct;
/// - inherent helpers with the struct's visibility: `child_spec(self, options)`, `handle`,
///   `track`/`untrack`/`update` (through a `PresenceSocket`),
///   `track_owner`/`untrack_owner`/`update_owner` (through a registry and an `Owner`),
///   `count`, and the async `list` and `get_by_key`.
///
/// # Errors
///
/// Misuse is reported at the offending token, all at once: a missing `pubsub`, an unknown or
/// repeated argument, a flag given a value, `handle_metas` without `init`, a `pubsub` value
/// that is not a pub/sub server, and an item that is not a non-generic struct.
///
/// # Debugging
///
/// Set `PRESENCE_MACROS_DEBUG=1` while building to print every expansion to stderr.
#[proc_macro_attribute]
pub fn presence(args: TokenStream, item: TokenStream) -> TokenStream {
    let expanded = expand::presence(args.into(), item.into());
    if std::env::var_os("PRESENCE_MACROS_DEBUG").is_some_and(|v| v == "1") {
        eprintln!("{expanded}");
    }
    expanded.into()
}
