//! Every combination of hooks: none, `fetch`, `handle_metas`, both; each named hook runs.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use presence_core::presence::{
    Fetch, FetchError, HandleMetas, InitError, PresenceContext, PresenceDiff, PresenceHandle,
    PresenceMap, PresenceOptions, TopicMetas,
};
use presence_core::{Owner, Presence, PubSub, presence};
use serde_json::json;

presence_core::pubsub_server!(pub AppPubSub);

#[derive(Presence)]
#[presence(pubsub = AppPubSub)]
pub struct NoHooks;

#[presence(pubsub = AppPubSub, fetch)]
pub struct FetchOnly;

impl Fetch for FetchOnly {
    type Extra = serde_json::Map<String, serde_json::Value>;

    async fn fetch(
        &self,
        _: &PresenceContext,
        _: &str,
        mut presences: PresenceMap<Self>,
    ) -> Result<PresenceMap<Self>, FetchError> {
        for entry in presences.values_mut() {
            let mut extra = serde_json::Map::new();
            extra.insert("fetched".to_owned(), json!(true));
            entry.extra = Some(extra);
        }
        Ok(presences)
    }
}

#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas)]
pub struct HandleMetasOnly {
    calls: Arc<AtomicUsize>,
}

impl HandleMetas for HandleMetasOnly {
    type State = usize;

    fn init(&self, _: &PresenceContext) -> Result<usize, InitError> {
        Ok(0)
    }

    async fn handle_metas(
        &self,
        _: &PresenceContext,
        _: &str,
        _: &PresenceDiff<Self>,
        _: &TopicMetas,
        state: usize,
    ) -> usize {
        self.calls.fetch_add(1, Ordering::SeqCst);
        state + 1
    }
}

/// Both hooks; the flags in either order.
#[presence(handle_metas, pubsub = AppPubSub, fetch)]
pub struct Both {
    calls: Arc<AtomicUsize>,
}

impl Fetch for Both {
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

impl HandleMetas for Both {
    type State = String;

    fn init(&self, ctx: &PresenceContext) -> Result<String, InitError> {
        Ok(ctx.node_name().to_owned())
    }

    async fn handle_metas(
        &self,
        _: &PresenceContext,
        _: &str,
        diff: &PresenceDiff<Self>,
        _: &TopicMetas,
        state: String,
    ) -> String {
        // The fetch ran before: entries are typed by `Both`.
        let _: Option<&()> = diff.joins.values().next().and_then(|e| e.extra.as_ref());
        self.calls.fetch_add(1, Ordering::SeqCst);
        state
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    assert!(!NoHooks::FETCHES && !NoHooks::HANDLES_METAS);
    assert!(FetchOnly::FETCHES && !FetchOnly::HANDLES_METAS);
    assert!(HandleMetasOnly::HANDLES_METAS && !HandleMetasOnly::FETCHES);
    assert!(Both::FETCHES && Both::HANDLES_METAS);
    fn extra<P: Presence<Extra = E>, E>() {}
    fn state<P: HandleMetas<State = S>, S>() {}
    extra::<NoHooks, ()>();
    extra::<FetchOnly, serde_json::Map<String, serde_json::Value>>();
    extra::<HandleMetasOnly, ()>();
    extra::<Both, ()>();
    state::<HandleMetasOnly, usize>();
    state::<Both, String>();

    let owner = Owner::new();
    let meta = json!({ "device": "web" });

    let none = PresenceHandle::start(NoHooks, PubSub::new("a"), &PresenceOptions::new())?;
    none.track(&owner, "room:1", "alice", &meta)?;
    assert_eq!(none.list("room:1").await["alice"].len(), 1);

    let fetch = PresenceHandle::start(FetchOnly, PubSub::new("b"), &PresenceOptions::new())?;
    fetch.track(&owner, "room:1", "alice", &meta)?;
    let listed = fetch.list("room:1").await;
    assert_eq!(
        listed["alice"].extra.as_ref().unwrap()["fetched"],
        json!(true)
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let handle = HandleMetasOnly {
        calls: calls.clone(),
    };
    let handle = PresenceHandle::start(handle, PubSub::new("c"), &PresenceOptions::new())?;
    handle.track(&owner, "room:1", "alice", &meta)?;
    for _ in 0..100 {
        if calls.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let both_calls = Arc::new(AtomicUsize::new(0));
    let both = Both {
        calls: both_calls.clone(),
    };
    let both = PresenceHandle::start(both, PubSub::new("d"), &PresenceOptions::new())?;
    both.track(&owner, "room:1", "alice", &meta)?;
    for _ in 0..100 {
        if both_calls.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(both_calls.load(Ordering::SeqCst), 1);
    Ok(())
}
