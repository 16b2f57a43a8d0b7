//! A panicking `handle_metas` never stops the presence: diffs keep going out, in order, and
//! its state starts over from `init`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::presence::{
    HandleMetas, InitError, PresenceContext, PresenceDiff, PresenceHandle, PresenceOptions,
    StartError, TopicMetas,
};
use presence_core::{Owner, Presence, PubSub, pubsub_server};

pubsub_server!(
    /// The test's pub/sub.
    pub HookPubSub
);

/// Counts the diffs it saw since its last `init`, and panics on the key `"boom"`.
#[derive(Debug, Presence)]
#[presence(pubsub = HookPubSub, handle_metas)]
pub struct Fragile {
    seen: Arc<Mutex<Vec<(String, usize)>>>,
}

impl HandleMetas for Fragile {
    type State = usize;

    fn init(&self, _ctx: &PresenceContext) -> Result<usize, InitError> {
        Ok(0)
    }

    async fn handle_metas(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        diff: &PresenceDiff<Self>,
        _presences: &TopicMetas,
        state: usize,
    ) -> usize {
        let key = diff
            .joins
            .keys()
            .chain(diff.leaves.keys())
            .next()
            .cloned()
            .unwrap_or_default();
        if key == "boom" {
            panic!("handle_metas bug");
        }
        self.seen.lock().unwrap().push((key, state + 1));
        state + 1
    }
}

#[tokio::test]
async fn a_panicking_handle_metas_does_not_stop_the_diffs() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pubsub = PubSub::new("a");
    let mut diffs = pubsub.subscribe("room:1");
    let presence = PresenceHandle::start(
        Fragile { seen: seen.clone() },
        pubsub,
        &PresenceOptions::new(),
    )
    .unwrap();
    let owners: Vec<Owner> = (0..4).map(|_| Owner::new()).collect();
    for (owner, key) in owners.iter().zip(["a", "b", "boom", "c"]) {
        presence
            .track(owner, "room:1", key, &serde_json::json!({}))
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), presence.settled())
        .await
        .expect("settles after the panic");
    for key in ["a", "b", "boom", "c"] {
        let msg = diffs
            .try_recv()
            .expect("every diff is broadcast, the panicking one too");
        let presence_core::pubsub::Payload::Json(payload) = msg.payload() else {
            panic!("json")
        };
        assert!(
            payload["joins"].get(key).is_some(),
            "in tracker order: {key}"
        );
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 1)
        ],
        "the state starts over from init after the panic"
    );
}

/// Refuses to start: its `init` fails (or panics).
#[derive(Debug, Presence)]
#[presence(pubsub = HookPubSub, handle_metas)]
pub struct Unready {
    panics: bool,
}

impl HandleMetas for Unready {
    type State = ();

    fn init(&self, _ctx: &PresenceContext) -> Result<(), InitError> {
        if self.panics {
            panic!("init bug");
        }
        Err("the cache is not warm".into())
    }

    async fn handle_metas(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        _diff: &PresenceDiff<Self>,
        _presences: &TopicMetas,
        state: (),
    ) {
        state
    }
}

#[tokio::test]
async fn a_failing_init_stops_the_start_with_its_error() {
    let error = PresenceHandle::start(
        Unready { panics: false },
        PubSub::new("a"),
        &PresenceOptions::new(),
    )
    .expect_err("init failed");
    assert!(
        matches!(
            error,
            StartError::Init {
                presence: "Unready",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "presence `Unready`: init failed: the cache is not warm"
    );
    let error = PresenceHandle::start(
        Unready { panics: true },
        PubSub::new("b"),
        &PresenceOptions::new(),
    )
    .expect_err("init panicked");
    assert_eq!(
        error.to_string(),
        "presence `Unready`: init failed: init panicked"
    );
}
