//! A fetch that reads the struct's fields and fills each entry's `extra`; `Presence::Extra`
//! is `Fetch::Extra`.
use presence_core::Presence;
use presence_core::presence::{Fetch, FetchError, PresenceContext, PresenceMap, PresenceOptions};
use serde::Serialize;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Clone, Serialize)]
pub struct UserInfo {
    pub name: String,
}

pub struct Db {
    pub prefix: String,
}

#[derive(Presence)]
#[presence(pubsub = AppPubSub, fetch)]
pub struct Enriched {
    db: Db,
}

impl Fetch for Enriched {
    type Extra = UserInfo;

    async fn fetch(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        mut presences: PresenceMap<Self>,
    ) -> Result<PresenceMap<Self>, FetchError> {
        for (key, entry) in presences.iter_mut() {
            entry.extra = Some(UserInfo {
                name: format!("{}{key}", self.db.prefix),
            });
        }
        Ok(presences)
    }
}

fn main() {
    fn assert_extra<P: Presence<Extra = UserInfo>>() {}
    assert_extra::<Enriched>();
    assert!(Enriched::FETCHES && !Enriched::HANDLES_METAS);
    let _spec = Enriched {
        db: Db {
            prefix: "user:".to_owned(),
        },
    }
    .child_spec(PresenceOptions::new());
}
