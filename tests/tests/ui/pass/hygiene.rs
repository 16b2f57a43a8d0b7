//! The expansion names everything by absolute path: local modules and types that shadow
//! `presence_core`, `serde_json`, `core`, `std` and prelude names change nothing, in both
//! spellings.
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
struct FnOnce;
struct str;
struct bool;
struct usize;
type Registry = ();
type PubSub = ();
type PresenceOptions = ();
type PresenceError = ();
type PresenceMap = ();
type PresenceContext = ();
type Value = ();
type Self_ = ();
trait Presence {}
trait Fetch {}
trait HandleMetas {}
trait PresenceSocket {}
fn registry() {}
fn server() {}
fn ctx() {}
fn socket() {}
fn key() {}
fn meta() {}

#[::presence_core::presence(pubsub = servers::AppPubSub)]
pub struct Plain;

#[derive(::presence_core::Presence)]
#[presence(pubsub = servers::AppPubSub)]
pub struct Derived;

#[::presence_core::presence(pubsub = servers::AppPubSub, fetch, handle_metas, pool_size = 2)]
pub struct Hooked;

#[derive(::presence_core::Presence)]
#[presence(pubsub = servers::AppPubSub, fetch, handle_metas, pool_size = 2)]
pub struct DerivedHooked;

macro_rules! hooks {
    ($p:ident) => {
        impl ::presence_core::presence::Fetch for $p {
            type Extra = ();
            async fn fetch(
                &self,
                _: &::presence_core::presence::PresenceContext,
                _: &::core::primitive::str,
                presences: ::presence_core::presence::PresenceMap<Self>,
            ) -> ::core::result::Result<
                ::presence_core::presence::PresenceMap<Self>,
                ::presence_core::presence::FetchError,
            > {
                ::core::result::Result::Ok(presences)
            }
        }

        impl ::presence_core::presence::HandleMetas for $p {
            type State = ();
            fn init(
                &self,
                _: &::presence_core::presence::PresenceContext,
            ) -> ::core::result::Result<(), ::presence_core::presence::InitError> {
                ::core::result::Result::Ok(())
            }
            async fn handle_metas(
                &self,
                _: &::presence_core::presence::PresenceContext,
                _: &::core::primitive::str,
                _: &::presence_core::presence::PresenceDiff<Self>,
                _: &::presence_core::presence::TopicMetas,
                _: (),
            ) {
            }
        }
    };
}

hooks!(Hooked);
hooks!(DerivedHooked);

async fn helpers(socket: &impl ::presence_core::presence::PresenceSocket) {
    let _ = Plain::list(socket).await;
    let _ = Derived::update_with(socket, "alice", |meta| meta);
    let _ = Hooked::get_by_key(socket, "alice").await;
    let _ = DerivedHooked::count(socket);
}

fn main() {
    let _ = <Plain as ::presence_core::presence::Presence>::NAME;
    let _ = <Derived as ::presence_core::presence::Presence>::NAME;
}
