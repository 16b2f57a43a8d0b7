//! Fetch runs once per list and once per diff (joins and leaves together), never per side.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use presence_core::presence::{
    Fetch, FetchError, PresenceContext, PresenceHandle, PresenceMap, PresenceOptions,
};
use presence_core::{Owner, PubSub, presence, pubsub_server};
use serde_json::json;

pubsub_server!(
    /// The test's pub/sub.
    pub TestPubSub
);

/// Counts its fetches.
#[derive(Debug)]
#[presence(pubsub = TestPubSub, fetch)]
pub struct Counted {
    calls: Arc<AtomicUsize>,
}

impl Fetch for Counted {
    type Extra = serde_json::Map<String, serde_json::Value>;

    async fn fetch(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        mut p: PresenceMap<Self>,
    ) -> Result<PresenceMap<Self>, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        for (key, entry) in p.iter_mut() {
            let mut extra = serde_json::Map::new();
            extra.insert("name".into(), json!(key.to_uppercase()));
            entry.extra = Some(extra);
        }
        Ok(p)
    }
}

#[tokio::test]
async fn one_fetch_per_diff_and_per_list() {
    let calls = Arc::new(AtomicUsize::new(0));
    let pubsub = PubSub::new("a");
    let mut diffs = pubsub.subscribe("room:1");
    let presence = PresenceHandle::start(
        Counted {
            calls: calls.clone(),
        },
        pubsub,
        &PresenceOptions::new(),
    )
    .unwrap();
    let owner = Owner::new();
    presence.track(&owner, "room:1", "ann", &json!({})).unwrap();
    presence.settled().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a track is one diff, one fetch"
    );
    diffs.try_recv().unwrap();

    presence
        .update(&owner, "room:1", "ann", &json!({"status": "away"}))
        .unwrap();
    presence.settled().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "an update (join + leave of one key) is one fetch"
    );
    let diff = diffs.try_recv().unwrap();
    let presence_core::pubsub::Payload::Json(payload) = diff.payload() else {
        panic!("json")
    };
    assert_eq!(
        payload["joins"]["ann"]["name"], "ANN",
        "both sides are enriched"
    );
    assert_eq!(payload["leaves"]["ann"]["name"], "ANN");

    let list = presence.list("room:1").await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a list is one fetch");
    assert_eq!(list["ann"].extra.as_ref().unwrap()["name"], "ANN");
}
