//! A `handle_metas` that reaches the application through its context: it rebroadcasts joins
//! with `ctx.pubsub().local_broadcast(...)`, and reads the registry with `ctx.registry()`
//! (a value put there by the application, and the presence's own handle).
use std::time::Duration;

use presence_core::presence::{
    HandleMetas, InitError, PresenceContext, PresenceDiff, PresenceOptions, TopicMetas,
};
use presence_core::pubsub::{Message, Payload};
use presence_core::supervisor::{PubSubSpec, Supervisor};
use presence_core::{Owner, Presence, Registry};
use serde_json::json;

presence_core::pubsub_server!(pub AppPubSub);

/// Put in the registry by the application.
#[derive(Clone)]
struct Prefix(&'static str);

#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas)]
pub struct Proxy;

impl HandleMetas for Proxy {
    type State = &'static str;

    fn init(&self, ctx: &PresenceContext) -> Result<&'static str, InitError> {
        let prefix = ctx.registry().get::<Prefix>().ok_or("no prefix")?;
        Ok(prefix.0)
    }

    async fn handle_metas(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        diff: &PresenceDiff<Self>,
        _presences: &TopicMetas,
        prefix: &'static str,
    ) -> &'static str {
        // The presence itself is in the registry by the time a hook runs.
        let running = Proxy::running(ctx.registry()).is_ok();
        for user_id in diff.joins.keys() {
            ctx.pubsub().local_broadcast(Message::json(
                format!("{prefix}{topic}"),
                "presence_join",
                json!({ "id": user_id, "running": running }),
            ));
        }
        prefix
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new();
    registry.insert(Prefix("proxy:"));
    let app = Supervisor::new()
        .registry(registry)
        .child(PubSubSpec::new(AppPubSub))
        .child(Proxy.child_spec(PresenceOptions::new()))
        .start()
        .await?;
    let mut proxied = app.registry().pubsub(&AppPubSub)?.subscribe("proxy:room:1");
    let rooms = Proxy::running(app.registry())?;
    rooms.track(&Owner::new(), "room:1", "alice", &json!({}))?;
    let message = tokio::time::timeout(Duration::from_secs(5), proxied.recv()).await??;
    assert_eq!(message.event(), "presence_join");
    match message.payload() {
        Payload::Json(value) => assert_eq!(value, &json!({ "id": "alice", "running": true })),
        other => panic!("JSON, not {other:?}"),
    }
    app.shutdown().await;
    Ok(())
}
