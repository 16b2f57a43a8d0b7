//! The expansion names everything by absolute path: local modules and types that shadow
//! `presence_core`, `serde_json`, `core`, `std` and prelude names change nothing.
#![allow(dead_code, non_camel_case_types)]

mod servers {
    presence_core::pubsub_server!(pub AppPubSub);
}

mod presence_core {}
mod serde_json {}
mod serde {}
mod tokio {}
mod core {}
mod std {}

struct Result;
struct Option;
struct Ok;
struct Err;
struct Some;
struct None;
struct String;
struct Vec;
struct Box;
struct Send;
struct Sync;
struct Sized;
struct Future;
struct Clone;
struct From;
struct Into;
struct Default;
struct str;
struct bool;
struct usize;
type Registry = ();
type PubSub = ();
type PresenceOptions = ();
type PresenceError = ();
type PresenceMap = ();
trait Presence {}
trait Fetch {}
trait Init {}
trait HandleMetas {}
fn registry() {}

#[::presence_core::presence(pubsub = servers::AppPubSub)]
pub struct Plain;

#[::presence_core::presence(pubsub = servers::AppPubSub, init, handle_metas, pool_size = 2)]
pub struct Hooked;

impl ::presence_core::presence::Init for Hooked {
    type State = ();
    fn init(&self) {}
}

impl ::presence_core::presence::HandleMetas for Hooked {
    async fn handle_metas(
        &self,
        _: &::core::primitive::str,
        _: &::presence_core::presence::PresenceDiff,
        _: &::presence_core::presence::TopicMetas,
        _: (),
    ) {
    }
}

fn main() {
    let _ = Plain::list;
    let _ = Hooked::get_by_key;
    let _ = <Plain as ::presence_core::presence::Presence>::NAME;
}
