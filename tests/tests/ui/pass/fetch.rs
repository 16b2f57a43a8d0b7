use presence_core::presence;
use presence_core::presence::{Fetch, FetchError, Presence, PresenceMap};
use serde::Serialize;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Clone, Serialize)]
pub struct UserInfo {
    pub name: String,
}

pub struct Db {
    pub prefix: String,
}

#[presence(pubsub = AppPubSub, fetch)]
pub struct Enriched {
    db: Db,
}

impl Fetch for Enriched {
    type Extra = UserInfo;

    async fn fetch(
        &self,
        _topic: &str,
        mut presences: PresenceMap<UserInfo>,
    ) -> Result<PresenceMap<UserInfo>, FetchError> {
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
    assert!(Enriched::FETCHES);
    let _spec = Enriched {
        db: Db {
            prefix: "user:".to_owned(),
        },
    }
    .child_spec(presence_core::presence::PresenceOptions::new());
}
