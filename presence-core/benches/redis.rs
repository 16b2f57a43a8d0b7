//! `cargo bench -p presence-core --features redis --bench redis`: cluster convergence over Redis.
//!
//! Two nodes, each a `PubSub` with a `RedisAdapter` and a `Tracker` (broadcast period 100 ms,
//! one shard), on a fresh channel of the Redis at `PRESENCE_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Node a tracks N presences over 100 topics; the clock runs from the
//! first `track` until node b lists all N. Prints one markdown table row per N.

use std::time::{Duration, Instant};

use presence_core::pubsub::{RedisAdapter, RedisOptions};
use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
use serde_json::json;

const TOPICS: usize = 100;

async fn node(url: &str, channel: &str, name: &str, config: &TrackerConfig) -> Tracker {
    let adapter = RedisAdapter::connect(url, RedisOptions::new(name).pubsub_name(channel))
        .await
        .unwrap_or_else(|e| panic!("bench needs redis at {url}: {e}"));
    let pubsub = PubSub::builder(name).adapter(adapter).build();
    Tracker::start("Bench", pubsub, config.clone()).unwrap()
}

fn count(tracker: &Tracker, topics: &[String]) -> usize {
    topics.iter().map(|t| tracker.list(t).len()).sum()
}

async fn converge(url: &str, n: usize) {
    let config = TrackerConfig {
        broadcast_period: Duration::from_millis(100),
        ..TrackerConfig::default()
    };
    let channel = format!("bench-{}-{n}", std::process::id());
    let a = node(url, &channel, "a", &config).await;
    let b = node(url, &channel, "b", &config).await;
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("room:{i}")).collect();
    let owner = Owner::new();

    let started = Instant::now();
    for i in 0..n {
        a.track(
            &owner,
            &topics[i % TOPICS],
            &format!("user{i}"),
            json!({"online_at": i}),
        )
        .unwrap();
    }
    let tracked = started.elapsed();
    let deadline = started + Duration::from_secs(120);
    while count(&b, &topics) < n {
        assert!(Instant::now() < deadline, "b did not converge");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let converged = started.elapsed();
    println!(
        "| redis, 2 nodes, broadcast 100 ms | {n} | {:.0} ms | {:.0} ms | {:.0}/s |",
        tracked.as_secs_f64() * 1e3,
        converged.as_secs_f64() * 1e3,
        n as f64 / converged.as_secs_f64()
    );
    drop(owner);
    a.graceful_permdown();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url =
        std::env::var("PRESENCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    println!("| transport | presences | tracked on a | listed on b | rate |");
    println!("|---|---|---|---|---|");
    for n in [10_000, 50_000] {
        converge(&url, n).await;
    }
}
