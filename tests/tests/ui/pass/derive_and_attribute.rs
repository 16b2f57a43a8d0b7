//! `#[derive(Presence)]` with `#[presence(...)]`, and `#[presence(...)]` alone, are the same
//! declaration: same name, options, types, flags and helpers.
use std::time::Duration;

use presence_core::presence::{
    Fetch, FetchError, PresenceContext, PresenceEntry, PresenceError, PresenceHandle, PresenceMap,
    PresenceOptions, PresenceSocket,
};
use presence_core::supervisor::PresenceSpec;
use presence_core::tracker::PresenceCount;
use presence_core::{Owner, PhxRef, Presence, Registry};
use serde::{Deserialize, Serialize};

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Serialize, Deserialize)]
pub struct UserMeta {
    pub device: String,
}

mod derived {
    use super::*;

    #[derive(Presence)]
    #[presence(pubsub = AppPubSub, meta = UserMeta, fetch, pool_size = 2)]
    #[presence(broadcast_period = Duration::from_millis(300))]
    pub struct RoomPresence;

    impl Fetch for RoomPresence {
        type Extra = ();

        async fn fetch(
            &self,
            _: &PresenceContext,
            _: &str,
            presences: PresenceMap<Self>,
        ) -> Result<PresenceMap<Self>, FetchError> {
            Ok(presences)
        }
    }
}

mod attribute {
    use super::*;

    #[presence_core::presence(
        pubsub = AppPubSub,
        meta = UserMeta,
        fetch,
        pool_size = 2,
        broadcast_period = Duration::from_millis(300)
    )]
    pub struct RoomPresence;

    impl Fetch for RoomPresence {
        type Extra = ();

        async fn fetch(
            &self,
            _: &PresenceContext,
            _: &str,
            presences: PresenceMap<Self>,
        ) -> Result<PresenceMap<Self>, FetchError> {
            Ok(presences)
        }
    }
}

struct Socket;

impl PresenceSocket for Socket {
    fn registry(&self) -> &Registry {
        unimplemented!()
    }
    fn owner(&self) -> &Owner {
        unimplemented!()
    }
    fn topic(&self) -> &str {
        "room:1"
    }
}

/// Every helper, with the signature the derive's documentation gives.
macro_rules! helpers {
    ($p:ty) => {{
        let _: fn($p, PresenceOptions) -> PresenceSpec<$p> = <$p>::child_spec;
        let _: fn(&Registry) -> Result<PresenceHandle<$p>, PresenceError> = <$p>::running;
        let _: fn(&Socket, &str, &UserMeta) -> Result<PhxRef, PresenceError> = <$p>::track;
        let _: fn(&Socket, &str) -> Result<(), PresenceError> = <$p>::untrack;
        let _: fn(&Socket, &str, &UserMeta) -> Result<PhxRef, PresenceError> = <$p>::update;
        let _: fn(&Socket, &str, fn(UserMeta) -> UserMeta) -> Result<PhxRef, PresenceError> =
            <$p>::update_with;
        let _: fn(&Socket) -> Result<PresenceCount, PresenceError> = <$p>::count;
        let _ = async {
            let _: Result<PresenceMap<$p>, PresenceError> = <$p>::list(&Socket).await;
            let _: Result<Option<PresenceEntry<$p>>, PresenceError> =
                <$p>::get_by_key(&Socket, "alice").await;
        };
    }};
}

fn same_types<A, B>()
where
    A: Presence,
    B: Presence<Meta = A::Meta, Extra = A::Extra, State = A::State>,
{
}

fn main() {
    use attribute::RoomPresence as Attribute;
    use derived::RoomPresence as Derived;

    assert_eq!(Derived::NAME, "RoomPresence");
    assert_eq!(Derived::NAME, Attribute::NAME);
    assert_eq!(Derived::options(), Attribute::options());
    assert_eq!(
        Derived::options(),
        PresenceOptions::new()
            .pool_size(2)
            .broadcast_period(Duration::from_millis(300))
    );
    assert_eq!(
        (Derived::FETCHES, Derived::HANDLES_METAS),
        (Attribute::FETCHES, Attribute::HANDLES_METAS)
    );
    same_types::<Derived, Attribute>();
    helpers!(Derived);
    helpers!(Attribute);
}
