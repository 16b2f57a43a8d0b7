//! Memory per idle long-poll session joined to one channel, measured as the growth of the
//! process's resident set. The requests are served in process (no client half, no TCP), so the
//! figure is the server's: the session, its control loop, its channel task and queues.

mod common;

use std::time::Duration;

use common::*;
use poem::Route;
use presence_core::PubSub;
use presence_poem::LongPollConfig;

#[tokio::test]
async fn idle_long_poll_sessions_are_small() {
    const N: usize = 1000;
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        // Long enough that no session expires while the others are made.
        .longpoll(LongPollConfig::new().window(Duration::from_secs(60)))
        .build();
    let app = Route::new().nest("/socket", socket.clone());
    // Warm up (lazy statics, the hub for the topic).
    let _warm = joined_longpoll_session(&app).await;
    let Some(before) = rss() else {
        return; // not Linux
    };
    let mut tokens = Vec::with_capacity(N);
    for _ in 0..N {
        tokens.push(joined_longpoll_session(&app).await);
    }
    let per_session = (rss().unwrap_or(0) - before) / N as isize;
    println!("~{per_session} bytes per idle joined long-poll session");
    assert_eq!(socket.open_sockets(), N + 1);
    // The same bound as an idle websocket's (server and client halves, poem_memory.rs).
    assert!(per_session < 30_000, "{per_session} bytes per session");
}
