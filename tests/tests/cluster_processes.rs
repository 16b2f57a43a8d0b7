//! The chat example as a cluster of OS processes over Redis: one presence list across nodes,
//! a killed node's presences leaving after the down period, a SIGTERM'd node's at once, a
//! Redis restart, a node restarting under its old name, and a node that came back getting its
//! share of the sockets (rebalancing).
//!
//! Needs `PRESENCE_REDIS_URL` (e.g. `redis://127.0.0.1:6379`); without it every test prints
//! "skipped: PRESENCE_REDIS_URL not set". The Redis restart test starts its own `redis-server`
//! on a free port (printing a skip line when it is not on `PATH`). Each node is a
//! `chat_node` process (`tests/src/bin/chat_node.rs`, the chat example's `main`) started with
//! `PORT=0`; it prints `LISTENING <addr>` on stdout. Each test uses its own pub/sub name, so
//! tests running in parallel on one Redis do not hear each other. Children are killed on drop,
//! and exit by themselves when this process dies (their stdin closes); their logs go to
//! `$TMPDIR/chat_node-<name>.log`.
//!
//! Clients speak the v2 wire format over tokio-tungstenite and keep a presence list from
//! `presence_state` and `presence_diff` as phoenix.js does, with the time of every change.
//! Real time throughout: waits poll for a condition and fail after a deadline.

mod redis_support;

use redis_support::{DEADLINE, OwnRedis, eventually, redis_url, unique};

use std::collections::{BTreeMap, BTreeSet};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const TOPIC: &str = "room:lobby";
/// The long-poll session key every node of a test cluster shares.
const LONGPOLL_KEY: &str = "the test cluster's long-poll key, 32+ bytes";

/// Checks `cond` for `period`: it must hold throughout (an observation, not a wait).
async fn stays(what: &str, period: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(cond(), "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

// ----- Nodes -----

/// Tracker periods of a test cluster.
#[derive(Debug, Clone, Copy)]
struct Periods {
    broadcast: Duration,
    down: Duration,
    permdown: Duration,
}

/// Fast enough for tests; a heartbeat every broadcast period (max_silent_periods 1), so a
/// killed node's last heartbeat is at most one period before its death.
const FAST: Periods = Periods {
    broadcast: Duration::from_millis(100),
    down: Duration::from_millis(1000),
    permdown: Duration::from_millis(3000),
};

/// Where a cluster lives: the Redis URL, its pub/sub name and periods.
#[derive(Debug, Clone)]
struct Cluster {
    url: String,
    name: String,
    periods: Periods,
}

impl Cluster {
    fn new(url: &str, test: &str, periods: Periods) -> Cluster {
        Cluster {
            url: url.to_owned(),
            name: unique(test),
            periods,
        }
    }

    /// Starts a node named `<cluster>-<name>`.
    async fn node(&self, name: &str) -> Node {
        Node::start(self, &format!("{}-{name}", self.name)).await
    }

    /// Starts a node named `<cluster>-<name>` with extra environment.
    async fn node_with(&self, name: &str, env: &[(&str, &str)]) -> Node {
        Node::start_with(self, &format!("{}-{name}", self.name), env).await
    }
}

/// A chat server process, killed (SIGKILL) when dropped.
struct Node {
    name: String,
    addr: String,
    child: Child,
    _stdout: BufReader<ChildStdout>,
    /// Held open: the node exits if this process dies without killing it.
    _stdin: ChildStdin,
}

impl Node {
    async fn start(cluster: &Cluster, name: &str) -> Node {
        Node::start_with(cluster, name, &[]).await
    }

    /// Rebalancing is off unless `env` turns it on: the other tests put their clients on
    /// nodes unevenly on purpose.
    async fn start_with(cluster: &Cluster, name: &str, env: &[(&str, &str)]) -> Node {
        let log = std::env::temp_dir().join(format!("chat_node-{name}.log"));
        let stderr = std::fs::File::create(&log).expect("a log file");
        let ms = |d: Duration| d.as_millis().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat_node"))
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("PRESENCE_NODE", name)
            .env("PRESENCE_REDIS_URL", &cluster.url)
            .env("PRESENCE_PUBSUB_NAME", &cluster.name)
            .env(
                "PRESENCE_BROADCAST_PERIOD_MS",
                ms(cluster.periods.broadcast),
            )
            .env("PRESENCE_DOWN_PERIOD_MS", ms(cluster.periods.down))
            .env("PRESENCE_PERMDOWN_PERIOD_MS", ms(cluster.periods.permdown))
            .env("PRESENCE_MAX_SILENT_PERIODS", "1")
            // Long poll across nodes: one session key for the whole cluster.
            .env("PRESENCE_LONGPOLL_SECRET", LONGPOLL_KEY)
            .env("PRESENCE_LONGPOLL_WINDOW_MS", "1000")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("CHAT_NODE_EXIT_WITH_STDIN", "1")
            .env("PRESENCE_REBALANCE_PERIOD_MS", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("chat_node starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(DEADLINE, stdout.read_line(&mut line)).await;
        let addr = match read {
            Ok(Ok(n)) if n > 0 => line
                .trim()
                .strip_prefix("LISTENING ")
                .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
                .to_owned(),
            other => panic!(
                "{name} did not say LISTENING ({other:?}); see {}",
                log.display()
            ),
        };
        Node {
            name: name.to_owned(),
            addr,
            child,
            _stdout: stdout,
            _stdin: stdin,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// SIGKILL, as a crash; waits for the process to be gone.
    async fn kill9(&mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("reaped");
    }

    /// SIGTERM: the graceful shutdown.
    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.name))
            .expect("wait")
    }
}

// ----- Clients -----

/// What a client has seen on its topic.
#[derive(Debug)]
struct View {
    /// `presence_state` received; diffs before it are kept in `pending` (as phoenix.js does).
    synced: bool,
    pending: Vec<Value>,
    /// key => phx_refs of its metas.
    presences: BTreeMap<String, BTreeSet<String>>,
    /// (when, key, joined) for each key that appeared or disappeared after the state.
    changes: Vec<(Instant, String, bool)>,
    replies: BTreeMap<String, Value>,
    messages: Vec<Value>,
    close_code: Option<u16>,
    /// When the view was made.
    since: Instant,
}

impl Default for View {
    fn default() -> Self {
        View {
            synced: false,
            pending: Vec::new(),
            presences: BTreeMap::new(),
            changes: Vec::new(),
            replies: BTreeMap::new(),
            messages: Vec::new(),
            close_code: None,
            since: Instant::now(),
        }
    }
}

impl View {
    fn apply_diff(&mut self, diff: &Value) {
        let now = Instant::now();
        if let Some(joins) = diff["joins"].as_object() {
            for (key, entry) in joins {
                let refs = self.presences.entry(key.clone()).or_default();
                let was_empty = refs.is_empty();
                refs.extend(phx_refs(entry));
                if was_empty && !refs.is_empty() {
                    self.changes.push((now, key.clone(), true));
                }
            }
        }
        if let Some(leaves) = diff["leaves"].as_object() {
            for (key, entry) in leaves {
                if let Some(refs) = self.presences.get_mut(key) {
                    for r in phx_refs(entry) {
                        refs.remove(&r);
                    }
                    if refs.is_empty() {
                        self.presences.remove(key);
                        self.changes.push((now, key.clone(), false));
                    }
                }
            }
        }
    }

    fn handle(&mut self, frame: &Value) {
        match frame[3].as_str().unwrap_or_default() {
            "phx_reply" => {
                if let Some(r) = frame[1].as_str() {
                    self.replies.insert(r.to_owned(), frame[4].clone());
                }
            }
            "presence_state" => {
                self.presences = frame[4]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(key, entry)| (key.clone(), phx_refs(entry)))
                    .collect();
                self.synced = true;
                for diff in std::mem::take(&mut self.pending) {
                    self.apply_diff(&diff);
                }
            }
            "presence_diff" if !self.synced => self.pending.push(frame[4].clone()),
            "presence_diff" => self.apply_diff(&frame[4]),
            "new_msg" => self.messages.push(frame[4].clone()),
            _ => {}
        }
    }
}

fn phx_refs(entry: &Value) -> BTreeSet<String> {
    entry["metas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
        .collect()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A phoenix.js-like client joined to [`TOPIC`] as `user`.
struct Client {
    sink: SplitSink<Ws, Message>,
    view: Arc<Mutex<View>>,
    reader: JoinHandle<()>,
    next_ref: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `node`, joins as `user` and waits for the presence state.
    async fn join(node: &Node, user: &str) -> Client {
        let url = format!("ws://{}/socket/websocket?vsn=2.0.0", node.addr);
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connects in time")
            .expect("connects");
        let (sink, mut stream) = ws.split();
        let view = Arc::new(Mutex::new(View::default()));
        let reader = tokio::spawn({
            let view = view.clone();
            async move {
                while let Some(Ok(msg)) = stream.next().await {
                    match msg {
                        Message::Text(text) => {
                            let frame: Value = serde_json::from_str(&text).expect("JSON");
                            view.lock().unwrap().handle(&frame);
                        }
                        Message::Close(frame) => {
                            view.lock().unwrap().close_code = frame.map(|f| u16::from(f.code));
                        }
                        _ => {}
                    }
                }
            }
        });
        let mut client = Client {
            sink,
            view,
            reader,
            next_ref: 1,
        };
        let reply = client
            .request("phx_join", json!({"user": user}), true)
            .await;
        assert_eq!(reply["status"], "ok", "{user} joins: {reply}");
        eventually(&format!("{user} gets presence_state"), DEADLINE, || {
            client.view.lock().unwrap().synced
        })
        .await;
        client
    }

    /// Sends an event on the topic and waits for its reply.
    async fn request(&mut self, event: &str, payload: Value, join: bool) -> Value {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let join_ref = if join { r.clone() } else { "1".to_owned() };
        self.sink
            .send(Message::text(
                json!([join_ref, r, TOPIC, event, payload]).to_string(),
            ))
            .await
            .expect("sends");
        let view = self.view.clone();
        eventually(&format!("a reply to {event}"), DEADLINE, || {
            view.lock().unwrap().replies.contains_key(&r)
        })
        .await;
        self.view.lock().unwrap().replies[&r].clone()
    }

    fn keys(&self) -> BTreeSet<String> {
        self.view
            .lock()
            .unwrap()
            .presences
            .keys()
            .cloned()
            .collect()
    }

    /// The changes seen for `key` since `since`, as (when, joined).
    fn changes(&self, key: &str, since: Instant) -> Vec<(Instant, bool)> {
        self.view
            .lock()
            .unwrap()
            .changes
            .iter()
            .filter(|(t, k, _)| k == key && *t >= since)
            .map(|(t, _, joined)| (*t, *joined))
            .collect()
    }

    /// When `key` last disappeared.
    fn left_at(&self, key: &str) -> Option<Instant> {
        let since = self.view.lock().unwrap().since;
        self.changes(key, since)
            .into_iter()
            .rev()
            .find(|(_, joined)| !joined)
            .map(|(t, _)| t)
    }

    fn close_code(&self) -> Option<u16> {
        self.view.lock().unwrap().close_code
    }
}

/// One HTTP/1.1 request over loopback (`Connection: close`): the status and the body.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    let status = response.split(' ').nth(1).expect("a status line");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head");
    (status.parse().expect("a status code"), body.to_owned())
}

/// A phoenix.js `LongPoll`-like client: a session token, and what its polls brought.
struct LongPollClient {
    token: String,
    view: View,
    /// The refs of every reply received, duplicates included.
    reply_refs: Vec<String>,
    next_ref: u64,
}

impl LongPollClient {
    /// Opens a session on `node`.
    async fn open(node: &Node) -> LongPollClient {
        let (http_status, body) = http(&node.addr, "GET", "/socket/longpoll?vsn=2.0.0", "").await;
        assert_eq!(http_status, 200);
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["status"], 410, "a new session: {body}");
        LongPollClient {
            token: body["token"].as_str().expect("a token").to_owned(),
            view: View::default(),
            reply_refs: Vec::new(),
            next_ref: 1,
        }
    }

    /// POSTs `events` (one batch) to `node`; returns the refs used.
    async fn send(&mut self, node: &Node, events: &[(&str, Value)]) -> Vec<String> {
        let mut refs = Vec::new();
        let lines: Vec<String> = events
            .iter()
            .map(|(event, payload)| {
                let r = self.next_ref.to_string();
                self.next_ref += 1;
                let join_ref = if *event == "phx_join" {
                    r.clone()
                } else {
                    "1".to_owned()
                };
                refs.push(r.clone());
                json!([join_ref, r, TOPIC, event, payload]).to_string()
            })
            .collect();
        let path = format!("/socket/longpoll?vsn=2.0.0&token={}", self.token);
        let (_, body) = http(&node.addr, "POST", &path, &lines.join("\n")).await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["status"], 200, "POST to {}: {body}", node.name);
        refs
    }

    /// One poll on `node`; its messages go into the view.
    async fn poll(&mut self, node: &Node) -> u64 {
        let path = format!("/socket/longpoll?vsn=2.0.0&token={}", self.token);
        let (_, body) = http(&node.addr, "GET", &path, "").await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        for message in body["messages"].as_array().into_iter().flatten() {
            let frame: Value = serde_json::from_str(message.as_str().expect("text")).expect("JSON");
            if frame[3] == "phx_reply" {
                self.reply_refs
                    .push(frame[1].as_str().unwrap_or_default().to_owned());
            }
            self.view.handle(&frame);
        }
        body["status"].as_u64().expect("a status")
    }
}

async fn converge(clients: &[&Client], expected: &BTreeSet<String>) {
    let what = format!("every client lists {expected:?}");
    eventually(&what, DEADLINE, || {
        clients.iter().all(|c| c.keys() == *expected)
    })
    .await;
}

// ----- Tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_different_nodes_see_one_presence_list() {
    let Some(url) = redis_url() else { return };
    let cluster = Cluster::new(&url, "one-list", FAST);
    let (a, b, c) = tokio::join!(cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let mut ann = Client::join(&a, "ann").await;
    let bob = Client::join(&b, "bob").await;
    let cal = Client::join(&c, "cal").await;
    converge(&[&ann, &bob, &cal], &set(&["ann", "bob", "cal"])).await;

    // A second device of ann's, on another node: one key, two metas, everywhere.
    let ann2 = Client::join(&c, "ann").await;
    eventually("every client sees ann's two metas", DEADLINE, || {
        [&ann, &bob, &cal, &ann2].iter().all(|c| {
            c.view
                .lock()
                .unwrap()
                .presences
                .get("ann")
                .map(BTreeSet::len)
                == Some(2)
        })
    })
    .await;

    // Messages cross nodes too.
    let reply = ann
        .request("new_msg", json!({"body": "hello cluster"}), false)
        .await;
    assert_eq!(reply["status"], "ok");
    eventually("bob and cal get ann's message", DEADLINE, || {
        [&bob, &cal].iter().all(|c| {
            c.view.lock().unwrap().messages == [json!({"user": "ann", "body": "hello cluster"})]
        })
    })
    .await;

    // A client leaving (its socket closes) leaves everywhere.
    drop(bob);
    converge(&[&ann, &cal, &ann2], &set(&["ann", "cal"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_after_the_down_period() {
    let Some(url) = redis_url() else { return };
    let cluster = Cluster::new(&url, "kill9", FAST);
    let (mut a, b) = tokio::join!(cluster.node("a"), cluster.node("b"));
    let _ann = Client::join(&a, "ann").await;
    let bob = Client::join(&b, "bob").await;
    converge(&[&bob], &set(&["ann", "bob"])).await;

    let killed = Instant::now();
    a.kill9().await;
    eventually("bob sees ann leave", DEADLINE, || {
        bob.left_at("ann").is_some()
    })
    .await;
    let latency = bob.left_at("ann").unwrap() - killed;
    println!(
        "leave latency after kill -9: {latency:?} (down period {:?})",
        FAST.down
    );
    // Its last heartbeat was at most a broadcast period before the kill: an earlier leave
    // would not be the down-period timeout.
    let earliest = FAST.down - 2 * FAST.broadcast;
    assert!(
        latency >= earliest,
        "ann left {latency:?} after the kill, before the down period"
    );
    assert!(latency < FAST.down + Duration::from_secs(2), "{latency:?}");
    assert_eq!(bob.keys(), set(&["bob"]));
    assert_eq!(
        bob.changes("ann", killed).len(),
        1,
        "one leave, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_leaves_at_once_and_exits_zero() {
    let Some(url) = redis_url() else { return };
    let cluster = Cluster::new(&url, "sigterm", FAST);
    let (mut a, b) = tokio::join!(cluster.node("a"), cluster.node("b"));
    let ann = Client::join(&a, "ann").await;
    let amy = Client::join(&a, "amy").await;
    let bob = Client::join(&b, "bob").await;
    converge(&[&ann, &amy, &bob], &set(&["ann", "amy", "bob"])).await;

    let signalled = Instant::now();
    a.sigterm();
    eventually("bob sees ann and amy leave", DEADLINE, || {
        bob.keys() == set(&["bob"])
    })
    .await;
    let latency = bob.left_at("ann").unwrap().max(bob.left_at("amy").unwrap()) - signalled;
    println!(
        "leave latency after SIGTERM: {latency:?} (down period {:?})",
        FAST.down
    );
    assert!(
        latency < FAST.down / 2,
        "left {latency:?} after SIGTERM: not at once"
    );
    let status = a.exit_status(DEADLINE).await;
    println!("exit after {:?}: {status}", signalled.elapsed());
    assert!(status.success(), "{status}");
    eventually("a's clients were closed with 1012", DEADLINE, || {
        ann.close_code() == Some(1012) && amy.close_code() == Some(1012)
    })
    .await;

    // No flapping: one leave each, and nothing comes back once the down period has passed.
    let rest = (FAST.down + 3 * FAST.broadcast).saturating_sub(signalled.elapsed());
    stays("bob lists only bob", rest, || bob.keys() == set(&["bob"])).await;
    for user in ["ann", "amy"] {
        let changes = bob.changes(user, signalled);
        assert_eq!(changes.len(), 1, "{user}: {changes:?}");
        assert!(!changes[0].1, "{user} left");
    }
    assert_eq!(bob.keys(), set(&["bob"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_replaces_its_old_incarnation() {
    let Some(url) = redis_url() else { return };
    // A long down period: the old incarnation must go because the new one says hello, not
    // because it fell silent.
    let periods = Periods {
        down: Duration::from_secs(5),
        permdown: Duration::from_secs(10),
        ..FAST
    };
    let cluster = Cluster::new(&url, "rename", periods);
    let (mut a, b) = tokio::join!(cluster.node("a"), cluster.node("b"));
    let _ann = Client::join(&a, "ann").await;
    let bob = Client::join(&b, "bob").await;
    converge(&[&bob], &set(&["ann", "bob"])).await;

    let killed = Instant::now();
    a.kill9().await;
    let a2 = Node::start(&cluster, &a.name).await;
    let restarted = killed.elapsed();
    let amy = Client::join(&a2, "amy").await;
    converge(&[&bob, &amy], &set(&["amy", "bob"])).await;
    let latency = bob.left_at("ann").expect("ann left") - killed;
    println!(
        "old incarnation purged {latency:?} after kill -9 (restart took {restarted:?}, down period {:?})",
        periods.down
    );
    assert!(
        latency < periods.down / 2,
        "ann left {latency:?} after the kill: the down period, not the restart, did it"
    );
    let changes = bob.changes("ann", killed);
    assert_eq!(changes.len(), 1, "one leave, nothing else: {changes:?}");
}

// ----- Redis restarts -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_converge_after_a_redis_restart() {
    if redis_url().is_none() {
        return;
    }
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let cluster = Cluster::new(&redis.url(), "redis-restart", FAST);
    let (a, b) = tokio::join!(cluster.node("a"), cluster.node("b"));
    let ann = Client::join(&a, "ann").await;
    let bob = Client::join(&b, "bob").await;
    converge(&[&ann, &bob], &set(&["ann", "bob"])).await;

    redis.kill();
    let outage = Instant::now();
    // During the outage: ann leaves, cal joins a, dan joins b. Each node only knows its own.
    drop(ann);
    let cal = Client::join(&a, "cal").await;
    let dan = Client::join(&b, "dan").await;
    eventually("cal sees ann leave locally", DEADLINE, || {
        !cal.keys().contains("ann") && cal.keys().contains("cal")
    })
    .await;
    assert!(!bob.keys().contains("cal"), "nothing crosses a dead redis");
    assert!(!dan.keys().contains("cal"));

    redis.restart().await;
    println!("redis was down for {:?}", outage.elapsed());
    // Nothing lost, no ghost.
    converge(&[&bob, &cal, &dan], &set(&["bob", "cal", "dan"])).await;
    println!("converged {:?} after the outage began", outage.elapsed());
    // And replication goes on.
    drop(bob);
    let eve = Client::join(&a, "eve").await;
    converge(&[&cal, &dan, &eve], &set(&["cal", "dan", "eve"])).await;
    // Stable: no late down/up flapping once converged.
    stays(
        "every client keeps listing cal, dan and eve",
        FAST.down + 3 * FAST.broadcast,
        || {
            [&cal, &dan, &eve]
                .iter()
                .all(|c| c.keys() == set(&["cal", "dan", "eve"]))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_client_alternating_between_nodes_gets_everything_once_in_order() {
    let Some(url) = redis_url() else { return };
    let cluster = Cluster::new(&url, "longpoll", FAST);
    let (a, b) = tokio::join!(cluster.node("a"), cluster.node("b"));
    let nodes = [&a, &b];
    // ann's session is on A; she joins through B and polls through each node in turn.
    let mut ann = LongPollClient::open(&a).await;
    let join = ann.send(&b, &[("phx_join", json!({"user": "ann"}))]).await;
    let bob = Client::join(&b, "bob").await;
    let mut turn = 0;
    while !(ann.view.synced && ann.view.presences.contains_key("bob")) {
        assert!(turn < 20, "ann's presence_state and bob's join in 20 polls");
        let status = ann.poll(nodes[turn % 2]).await;
        assert!(status == 200 || status == 204, "poll {turn}: {status}");
        turn += 1;
    }
    assert_eq!(ann.view.replies[&join[0]]["status"], "ok");
    eventually("bob to list ann", DEADLINE, || {
        bob.keys() == set(&["ann", "bob"])
    })
    .await;

    // Forty messages in batches of four, sent through B and A in turn, polled through A and B
    // in turn; bob (websocket, on B) says one thing halfway.
    let mut sent = Vec::new();
    for batch in 0..10 {
        let events: Vec<(&str, Value)> = (0..4)
            .map(|i| ("new_msg", json!({"body": format!("m{}", batch * 4 + i)})))
            .collect();
        sent.extend(ann.send(nodes[(batch + 1) % 2], &events).await);
        if batch == 5 {
            let mut bob = bob;
            let reply = bob
                .request("new_msg", json!({"body": "from bob"}), false)
                .await;
            assert_eq!(reply["status"], "ok");
            drop(bob);
            break;
        }
        let status = ann.poll(nodes[batch % 2]).await;
        assert!(status == 200 || status == 204, "{status}");
    }
    for batch in 6..10 {
        let events: Vec<(&str, Value)> = (0..4)
            .map(|i| ("new_msg", json!({"body": format!("m{}", batch * 4 + i)})))
            .collect();
        sent.extend(ann.send(nodes[(batch + 1) % 2], &events).await);
        let status = ann.poll(nodes[batch % 2]).await;
        assert!(status == 200 || status == 204, "{status}");
    }
    let want = 41;
    let mut polls = 0;
    while ann.view.messages.len() < want || sent.iter().any(|r| !ann.view.replies.contains_key(r)) {
        assert!(
            polls < 40,
            "everything within 40 more polls: {:?}",
            ann.view.messages
        );
        let status = ann.poll(nodes[polls % 2]).await;
        assert!(status == 200 || status == 204, "{status}");
        polls += 1;
    }
    // Once each, and ann's own in the order she sent them.
    let bodies: Vec<&str> = ann
        .view
        .messages
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), want, "{bodies:?}");
    let mine: Vec<&str> = bodies
        .iter()
        .copied()
        .filter(|b| b.starts_with('m'))
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(
        mine,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(bodies.iter().filter(|b| **b == "from bob").count(), 1);
    assert!(sent.iter().all(|r| ann.view.replies[r]["status"] == "ok"));
    // Nothing was delivered twice: one reply per request, and a last poll (bob's leave, at
    // most) brings no message again.
    let mut refs = ann.reply_refs.clone();
    refs.sort();
    refs.dedup();
    assert_eq!(refs.len(), ann.reply_refs.len(), "a reply came twice");
    assert_eq!(ann.reply_refs.len(), sent.len() + 1);
    let status = ann.poll(&b).await;
    assert!(status == 200 || status == 204, "{status}");
    assert_eq!(ann.view.messages.len(), want);
    assert_eq!(ann.reply_refs.len(), sent.len() + 1);
}

/// Rebalancing over Redis: a node holding every socket sends its newest clients (1012) to a
/// node that came back, down to the average, and keeps its oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_node_sends_its_newest_clients_to_a_node_that_came_back() {
    let Some(url) = redis_url() else { return };
    let cluster = Cluster::new(&url, "rebalance", FAST);
    let fast = [("PRESENCE_REBALANCE_PERIOD_MS", "300")];
    let a = cluster.node_with("a", &fast).await;
    let mut on_a = Vec::new();
    for i in 0..6 {
        on_a.push(Client::join(&a, &format!("u{i}")).await);
    }
    let b = cluster.node_with("b", &fast).await;
    // Each client a closes reconnects to b at once, as a least-connections balancer would
    // send it, until each node has three.
    let mut on_b = Vec::new();
    let mut closed = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while closed.len() < 3 {
        assert!(Instant::now() < deadline, "a closed only {closed:?}");
        for (i, client) in on_a.iter().enumerate() {
            if client.close_code().is_some() && !closed.contains(&i) {
                assert_eq!(client.close_code(), Some(1012), "u{i}");
                closed.push(i);
                on_b.push(Client::join(&b, &format!("u{i}")).await);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The newest went, one round at a time (10 % of 6 rounds up to one); the three oldest
    // stay, through more rounds than a close needs.
    assert_eq!(closed, [5, 4, 3]);
    stays(
        "a keeps its three oldest clients",
        Duration::from_secs(2),
        || on_a[..3].iter().all(|c| c.close_code().is_none()),
    )
    .await;
    let (_, metrics) = http(&a.addr, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("presence_sockets_rebalanced_total 3"),
        "{metrics}"
    );
    // Everyone is listed once, wherever they are.
    let everyone = set(&["u0", "u1", "u2", "u3", "u4", "u5"]);
    let all: Vec<&Client> = on_a[..3].iter().chain(on_b.iter()).collect();
    converge(&all, &everyone).await;
}
