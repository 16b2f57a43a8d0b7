//! A churn soak of the chat example: three chat nodes over Redis as separate processes, a
//! few thousand phoenix.js-like clients doing random joins, leaves, status updates, messages
//! and abrupt disconnects, node restarts (SIGTERM and `kill -9`, each with the same node name
//! and with a new one) and one Redis restart; then the churn stops, the cluster settles and
//! the tool checks that nothing was lost, duplicated or left behind.
//!
//! Not part of `cargo test` (its unit tests too: `test = false` in `Cargo.toml`; run them with
//! `cargo test -p presence-tests --bin soak`).
//!
//! # Usage
//!
//! ```text
//! cargo build --release -p presence-tests --bin soak --bin chat_node
//! target/release/soak [--duration-secs 600] [--clients 2000] [--rooms 20] [--ops-per-sec 100]
//!     [--seed N] [--server target/release/chat_node] [--redis-server redis-server]
//!     [--log-dir DIR] [--json]
//! ```
//!
//! # What runs
//!
//! - **Redis**: a `redis-server` of the tool's own on a free loopback port (no persistence),
//!   so that restarting it never disturbs anybody else's Redis. It is restarted once (stopped
//!   with SIGTERM, started again on the same port after `REDIS_DOWN`, longer than the down
//!   period, so that the nodes mark each other down and must come back up).
//! - **Nodes**: three `chat_node` processes (`src/bin/chat_node.rs`, the chat example's
//!   `main`), slots `a`, `b` and `c`, started with `PORT=0` and short tracker periods so that
//!   the cluster settles in seconds: a broadcast every 100 ms, a heartbeat at least every
//!   200 ms (`PRESENCE_MAX_SILENT_PERIODS=2`), down after 3 s, permanently down after 8 s
//!   ([`PERIODS`]). Their stderr (`RUST_LOG=warn`) goes to `<log-dir>/<node>.log`. Slot `a`
//!   is never restarted. Slot `b` gets a SIGTERM then a `kill -9`, both restarting it under
//!   the same name; slot `c` gets a SIGTERM then a `kill -9`, both restarting it under a new
//!   name. The four restarts and the Redis restart are spread evenly over the run (at 1/6,
//!   2/6, ... 5/6 of `--duration-secs`). A restarted node starts 1 s after the old one exited.
//!   The nodes rebalance their sockets as the chat example does in a cluster (every 5 s; a
//!   node over the average closes its newest sockets with 1012); `--node-env
//!   PRESENCE_REBALANCE_PERIOD_MS=0` turns it off.
//! - **Clients**: `--clients` tasks, each a user `u<i>` with one websocket at a time to
//!   `/socket/websocket?vsn=2.0.0`, speaking V2 frames as phoenix.js does: a heartbeat every
//!   30 s (closing the socket when the previous one got no reply), a presence list per joined
//!   room kept as phoenix.js's `Presence` does (meta-level, by `phx_ref`, diffs before the
//!   first `presence_state` held), and, like phoenix.js, reconnecting when the socket is lost
//!   (backoff 10, 50, 100, 150, 200, 250, 500, 1000, 2000 then 5000 ms) to the node up with
//!   the fewest client connections, ties broken at random (a least-connections load balancer
//!   in front of the cluster), and rejoining its rooms;
//!   a channel that gets `phx_error` or an unexpected `phx_close` is rejoined after 1 s. A
//!   join error is retried the same way.
//!   Each client starts in one to three rooms, as many as the churn keeps it in on average
//!   (see `initial_rooms`), so that the load is the same from the first minute on.
//! - **Churn**: every client does an operation at exponentially distributed intervals (the
//!   clients together `--ops-per-sec`): join a room it is not in (20 %, up to 3 rooms),
//!   leave one (12 %), set its status in one (20 %), send a `new_msg` to one (38 %), or drop
//!   its TCP connection without a close frame (10 %) and reconnect. An operation that does not
//!   apply (no room to leave) becomes a join.
//!
//! # The checks
//!
//! When `--duration-secs` is over, the clients stop operating (but still reconnect and rejoin
//! as needed), then:
//!
//! 1. **quiet**: within 120 s every client has seen the churn end (it starts no operation
//!    after that), is connected, has every room it wants joined and no reply outstanding.
//!    The *expected presence* of a room is then the users whose join of it was acknowledged
//!    on the socket they still hold, with the status they last set there.
//! 2. **presence on every node**: a fresh observer socket joins every room on every node and
//!    reads its `presence_state`; every node must list exactly the expected users (no ghost,
//!    no loss), each with exactly one meta carrying the expected status (the observer's own
//!    key is ignored). For a ghost, a missing user or a wrong meta, the report gives that
//!    client's memberships of the room (node slot, joined, ended and why) and the statuses it
//!    sent there (join or update, node slot, join_ref, reply); and when there is a ghost,
//!    once the clients are gone the nodes are stopped one at a time (SIGTERM) to see whose
//!    stop makes the others drop it, which tells the node that held it as its own. Retried every second until it holds, for at most
//!    max(60 s, 4 x permdown period) after the clients were quiet.
//! 3. **client views**: with the same deadline, the presence list each client keeps from its
//!    diffs equals the expected presence of each room it is in (same keys, one meta each,
//!    same status).
//! 4. **messages**: every `new_msg` carries a unique body `m<id>`. A message is *acked* when
//!    its sender got the `ok` reply, at `acked`, having sent it at `sent`. A client's
//!    *membership* of a room runs from the join's `ok` reply (`joined`) until the reply to
//!    its leave (the node sends every message it routed to the channel before it handled the
//!    leave, and the reply after them), the loss of its socket or a channel error (`ended`;
//!    open at the end). Membership `M`
//!    of room `r` on node slot `n` *should receive* acked message `m` to `r` from node slot
//!    `s` when `M.joined < m.sent`, `M.ended > m.acked + GRACE` (or still open), and no
//!    *disturbance* overlaps `[m.sent, m.acked + GRACE]` on slot `n`, slot `s` or Redis.
//!    A disturbance runs from just before a node is signalled until its next incarnation
//!    listens plus [`RECOVERY`], and from just before Redis stops until every node is
//!    subscribed again plus [`RECOVERY`] (messages published while Redis is down are lost by
//!    design: the pub/sub is at most once). Every such (membership, message) pair must have
//!    been received exactly once in that membership (**lost**: 0). Independently, no
//!    membership may receive a message twice (**duplicates**), nor one sent to another room
//!    (**misrouted**). `GRACE` is [`GRACE`].
//! 5. **RSS**: `VmRSS` of `/proc/<pid>/status` of every node process, sampled every 5 s.
//!    For each incarnation still running at the end, its *baseline* is its slot's RSS after
//!    the first minute: the first sample at least 60 s into the churn of the slot's first
//!    incarnation, which started with the churn. A restarted incarnation is compared with
//!    that figure too, since its own first minute holds its clients' reconnect ramp, not the
//!    steady load. When the slot's first restart came within the first minute (runs under
//!    6 minutes), the baseline is the incarnation's own first sample at least 60 s after both
//!    the churn's start and its own start. A baseline is taken before the churn ended. The
//!    *final* figure is sampled [`SETTLE_RSS`] (15 s) after the presence checks, the clients
//!    still connected: the node's memory after the churn, once the allocator's background
//!    thread has returned what was freed before (jemalloc returns freed pages after a 10 s
//!    decay; without that wait the sample catches whatever the churn's last seconds and the
//!    check's own observers freed). Two more figures are reported beside it, not checked: RSS
//!    when the clients were quiet (before the presence check's observers read every room on
//!    every node), and right after the presence checks. The open file descriptors of each
//!    sample (about one per client socket) are reported with it, as RSS follows the number of
//!    sockets a node holds, and so are the file-backed part of RSS (`RssFile`: the binary's
//!    pages read so far) and the heap in use the node reports. The check fails when the final
//!    figure exceeds the baseline by more than 10 % (growth; a drop is reported but is no
//!    failure). Incarnations without a baseline (they started less than a minute before
//!    the churn ended, or the run is shorter than a minute) are reported, not checked.
//!
//! # Output and exit status
//!
//! A text report on stdout, progress on stderr; with `--json`, one JSON object line follows
//! the report. Exit status 0 when every check passed, 3 when one failed, 1 when the cluster
//! could not be started, 2 on a usage error. Ctrl-C stops the run and every process it
//! started.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use presence_tests::procfs::status_kib;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

const SOCKET_PATH: &str = "/socket/websocket?vsn=2.0.0";
/// How long a message may take to reach every member of its room.
const GRACE: Duration = Duration::from_secs(5);
/// How long after a node or Redis is back its disturbance is still counted.
const RECOVERY: Duration = Duration::from_secs(5);
/// How long Redis stays down during its restart (longer than the down period).
const REDIS_DOWN: Duration = Duration::from_secs(4);
/// How long a restarted node waits after its predecessor exited.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How long a client's TCP connect and websocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// phoenix.js's heartbeat interval.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// phoenix.js's first rejoin delay after a channel error.
const REJOIN_AFTER: Duration = Duration::from_secs(1);
/// How long the clients may take to be quiet after the churn.
const QUIET_DEADLINE: Duration = Duration::from_secs(120);
/// How long a node may take to print `LISTENING`, or to exit after SIGTERM.
const PROCESS_DEADLINE: Duration = Duration::from_secs(30);
/// Rooms a client is in at most.
const MAX_ROOMS_PER_CLIENT: usize = 3;
/// The user the observers join with; ignored in every presence list.
const OBSERVER: &str = "soak-observer";
/// RSS sampling period.
const RSS_EVERY: Duration = Duration::from_secs(5);
/// How long an incarnation runs before its RSS baseline.
const RSS_BASELINE_AFTER: Duration = Duration::from_secs(60);
/// Allowed RSS growth from the baseline, in percent.
const RSS_GROWTH_PERCENT: f64 = 10.0;
/// How long after the presence checks the final RSS is sampled: longer than jemalloc's decay
/// (10 s), after which its background thread has returned the pages freed before.
const SETTLE_RSS: Duration = Duration::from_secs(15);
/// Source addresses 127.0.0.2.. the clients connect from (ephemeral ports per address).
const SOURCES: usize = 16;

/// Tracker periods of the soak cluster, in ms: broadcast, down, permdown, max silent periods.
const PERIODS: (u64, u64, u64, u32) = (100, 3000, 8000, 2);

const USAGE: &str = "\
usage: soak [options]

  --duration-secs S   how long the churn runs (default 600)
  --clients N         clients (default 2000)
  --rooms R           rooms room:0 .. room:<R-1> (default 20)
  --ops-per-sec K     operations per second, all clients together (default 100)
  --seed N            random seed (default: from the clock; printed)
  --server PATH       chat node binary (default: chat_node next to this binary)
  --redis-server PATH redis-server binary (default redis-server on PATH)
  --log-dir DIR       node and Redis logs (default $TMPDIR/soak-<pid>)
  --mix J,L,S,M,D     weights of join, leave, status, new_msg, drop (default 20,12,20,38,10)
  --node-env KEY=VAL  extra environment of the nodes (repeatable)
  --no-restarts       no node nor Redis restart (not a full soak: for narrowing down)
  --json              also print one JSON object line on stdout
";

// ---------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    duration: Duration,
    clients: u32,
    rooms: u16,
    ops_per_sec: f64,
    seed: u64,
    server: PathBuf,
    redis_server: PathBuf,
    log_dir: PathBuf,
    /// Weights of join, leave, status, new_msg, drop.
    mix: [u64; 5],
    /// Extra environment of the nodes.
    node_env: Vec<(String, String)>,
    /// Skip the node and Redis restarts (to tell steady-state growth from restart effects).
    no_restarts: bool,
    json: bool,
}

fn parse_args(raw: Vec<String>) -> Result<Args, String> {
    let default_server = std::env::current_exe()
        .map(|exe| exe.with_file_name("chat_node"))
        .unwrap_or_else(|_| PathBuf::from("target/release/chat_node"));
    let mut args = Args {
        duration: Duration::from_secs(600),
        clients: 2000,
        rooms: 20,
        ops_per_sec: 100.0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        server: default_server,
        redis_server: PathBuf::from("redis-server"),
        log_dir: std::env::temp_dir().join(format!("soak-{}", std::process::id())),
        mix: [20, 12, 20, 38, 10],
        node_env: Vec::new(),
        no_restarts: false,
        json: false,
    };
    fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{name} expects a number, got {v:?}"))
    }
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--json" if inline.is_none() => {
                args.json = true;
                continue;
            }
            "--no-restarts" if inline.is_none() => {
                args.no_restarts = true;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} expects a value"))?,
        };
        match name.as_str() {
            "--duration-secs" => args.duration = Duration::from_secs(number(&name, &value)?),
            "--clients" => args.clients = number(&name, &value)?,
            "--rooms" => args.rooms = number(&name, &value)?,
            "--ops-per-sec" => args.ops_per_sec = number(&name, &value)?,
            "--seed" => args.seed = number(&name, &value)?,
            "--server" => args.server = PathBuf::from(value),
            "--redis-server" => args.redis_server = PathBuf::from(value),
            "--log-dir" => args.log_dir = PathBuf::from(value),
            "--mix" => {
                let weights: Vec<u64> = value
                    .split(',')
                    .map(|w| number(&name, w))
                    .collect::<Result<_, _>>()?;
                args.mix = weights
                    .try_into()
                    .map_err(|_| "--mix expects five weights J,L,S,M,D".to_owned())?;
            }
            "--node-env" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("--node-env expects KEY=VAL, got {value:?}"))?;
                args.node_env.push((k.to_owned(), v.to_owned()));
            }
            _ => return Err(format!("unknown option {name:?}")),
        }
    }
    if args.clients == 0 || args.rooms == 0 {
        return Err("--clients and --rooms must be at least 1".to_owned());
    }
    if args.duration.is_zero() {
        return Err("--duration-secs must be at least 1".to_owned());
    }
    if args.ops_per_sec.is_nan() || args.ops_per_sec <= 0.0 {
        return Err("--ops-per-sec must be positive".to_owned());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// Randomness: splitmix64, seeded per client, so a run is described by its seed.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `(0, 1]`.
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean`.
    fn exp(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(-self.unit().ln()).min(mean * 20)
    }
}

// ---------------------------------------------------------------------------------------
// The book: what every client did and saw, for the checks.

#[derive(Debug)]
struct Msg {
    room: u16,
    /// The node slot it was sent through.
    slot: usize,
    sent: Instant,
    acked: Option<Instant>,
}

#[derive(Debug)]
struct Membership {
    room: u16,
    slot: usize,
    /// The client's id.
    client: u32,
    joined: Instant,
    ended: Option<Instant>,
    /// Why it ended: "leave", "channel error" or "socket lost".
    cause: &'static str,
}

/// A window in which a node slot (or Redis, `slot: None`) was not fully up.
#[derive(Debug, Clone)]
struct Disturbance {
    what: String,
    slot: Option<usize>,
    from: Instant,
    to: Option<Instant>,
}

#[derive(Debug, Default, Clone)]
struct Ops {
    joins: u64,
    rejoins: u64,
    leaves: u64,
    statuses: u64,
    messages: u64,
    drops: u64,
    connects: u64,
    reconnects: u64,
}

#[derive(Debug, Default)]
struct Book {
    msgs: Vec<Msg>,
    memberships: Vec<Membership>,
    /// `(message id << 32) | membership id`, one per `new_msg` received.
    receipts: Vec<u64>,
    /// When each receipt arrived (same order as `receipts` until the check sorts them).
    receipt_times: Vec<Instant>,
    /// `new_msg` received outside a membership: `(message id, client id, when)`.
    late: Vec<(u64, u32, Instant)>,
    ops: Ops,
    disturbances: Vec<Disturbance>,
    /// `new_msg` received on a topic the client had left (or not joined yet).
    outside_membership: u64,
    /// `new_msg` bodies that name no message sent.
    unknown_msgs: u64,
    unparsed_frames: u64,
    channel_errors: BTreeMap<String, u64>,
    reply_errors: BTreeMap<String, u64>,
    /// Sockets lost without the client asking, by close code or cause.
    sockets_lost: BTreeMap<String, u64>,
    connect_failures: BTreeMap<String, u64>,
    heartbeat_timeouts: u64,
    /// Every status a client sent (in a join or an update), for the report of a wrong meta.
    statuses: Vec<StatusSent>,
}

/// A status a client sent to a room: in a join's params or in a `status` push.
#[derive(Debug)]
struct StatusSent {
    room: u16,
    client: u32,
    slot: usize,
    status: String,
    /// `phx_join` or `status`.
    event: &'static str,
    join_ref: Option<String>,
    sent: Instant,
    /// The reply: when, and whether `ok`.
    reply: Option<(Instant, bool)>,
}

fn bump(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

impl Book {
    fn new_msg(&mut self, room: u16, slot: usize) -> usize {
        self.msgs.push(Msg {
            room,
            slot,
            sent: Instant::now(),
            acked: None,
        });
        self.msgs.len() - 1
    }

    fn join(&mut self, room: u16, slot: usize, client: u32) -> usize {
        self.memberships.push(Membership {
            room,
            slot,
            client,
            joined: Instant::now(),
            ended: None,
            cause: "open",
        });
        self.memberships.len() - 1
    }

    fn end(&mut self, membership: usize, cause: &'static str) {
        let m = &mut self.memberships[membership];
        if m.ended.is_none() {
            m.ended = Some(Instant::now());
            m.cause = cause;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Presence lists as phoenix.js keeps them.

/// key => phx_ref => status.
type Metas = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Default, Clone)]
struct View {
    synced: bool,
    pending: Vec<Value>,
    metas: Metas,
}

fn metas_of(entry: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    entry["metas"].as_array().into_iter().flatten().map(|m| {
        (
            m["phx_ref"].as_str().unwrap_or_default().to_owned(),
            m["status"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

impl View {
    fn state(&mut self, state: &Value) {
        self.metas.clear();
        if let Some(map) = state.as_object() {
            for (key, entry) in map {
                let metas: BTreeMap<_, _> = metas_of(entry).collect();
                if !metas.is_empty() {
                    self.metas.insert(key.clone(), metas);
                }
            }
        }
        self.synced = true;
        for diff in std::mem::take(&mut self.pending) {
            self.apply(&diff);
        }
    }

    fn diff(&mut self, diff: &Value) {
        if self.synced {
            self.apply(diff);
        } else {
            self.pending.push(diff.clone());
        }
    }

    /// Joins, then leaves, meta by meta (phoenix.js `syncDiff`).
    fn apply(&mut self, diff: &Value) {
        if let Some(joins) = diff["joins"].as_object() {
            for (key, entry) in joins {
                self.metas
                    .entry(key.clone())
                    .or_default()
                    .extend(metas_of(entry));
            }
        }
        if let Some(leaves) = diff["leaves"].as_object() {
            for (key, entry) in leaves {
                if let Some(metas) = self.metas.get_mut(key) {
                    for (r, _) in metas_of(entry) {
                        metas.remove(&r);
                    }
                    if metas.is_empty() {
                        self.metas.remove(key);
                    }
                }
            }
        }
    }
}

/// A presence list as user => statuses of its metas, observers left out.
type Listed = BTreeMap<String, Vec<String>>;

fn listed(metas: &Metas) -> Listed {
    metas
        .iter()
        .filter(|(k, _)| !k.starts_with(OBSERVER))
        .map(|(k, m)| (k.clone(), m.values().cloned().collect()))
        .collect()
}

/// With every client gone, whatever a node still lists (the observer aside) is a ghost. Stops
/// the nodes one at a time with SIGTERM, whose graceful permdown makes the others drop that
/// node's presences at once, and reports after each which ghosts the others no longer list:
/// the stopped node held them as its own. Ghosts still listed by the last node standing after
/// the others stopped are its own, or a dead incarnation's that no node purged.
async fn ghost_owners(cluster: &mut Cluster, rooms: u16) -> Vec<String> {
    async fn ghosts(cluster: &Cluster, except: Option<usize>, rooms: u16) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for (slot, proc) in cluster.procs.iter().enumerate() {
            let Some(proc) = proc.as_ref().filter(|_| Some(slot) != except) else {
                continue;
            };
            match node_presence(proc.addr, rooms).await {
                Ok(lists) => {
                    for (room, list) in lists {
                        out.extend(list.keys().map(|key| format!("room:{room} {key}")));
                    }
                }
                Err(e) => {
                    out.insert(format!("({}: {e})", cluster.names[slot]));
                }
            }
        }
        out.into_iter().collect()
    }
    // Presence diffs of the clients' departure settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut out = vec![format!(
        "with the clients gone, listed: {:?}",
        ghosts(cluster, None, rooms).await
    )];
    for slot in 0..SLOTS.len() {
        if cluster.procs[slot].is_none() {
            continue;
        }
        let before = ghosts(cluster, Some(slot), rooms).await;
        let name = cluster.names[slot].clone();
        let incarnation = cluster.procs[slot].as_ref().map(|p| p.incarnation);
        let how = cluster.stop_node(slot, "TERM").await;
        // Stopped after the checks: the report counts it as running at the end, as it was.
        if let Some(i) = incarnation {
            cluster.incarnations[i].ended = None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = ghosts(cluster, None, rooms).await;
        let gone: Vec<&String> = before.iter().filter(|g| !after.contains(g)).collect();
        out.push(format!(
            "stopped {name} ({how}): no longer listed {gone:?}; still listed {after:?}"
        ));
    }
    out
}

/// For each ghost, missing user or wrong meta a node listed (`room:<r>: ghost u<id> ...`),
/// once: that client's memberships of the room and the statuses it sent there, to tell which
/// node and which ending or update left it behind.
fn ghost_histories<'a>(
    book: &Book,
    problems: impl Iterator<Item = &'a String>,
    churn_start: Instant,
) -> Vec<String> {
    let at = |t: Instant| t.saturating_duration_since(churn_start).as_secs_f64();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for problem in problems {
        let mut words = problem.split_whitespace();
        let (Some(room), Some(second), Some(third)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        // `ghost u<id> [...]`, `missing u<id>`, or `u<id>: metas [...], expected [...]`.
        let (kind, user) = match (second, third) {
            ("ghost" | "missing", user) => (second, user),
            (user, "metas") => ("wrong meta of", user.trim_end_matches(':')),
            _ => continue,
        };
        let room_id = room
            .trim_start_matches("room:")
            .trim_end_matches(':')
            .parse::<u16>();
        let client = user.trim_start_matches('u').parse::<u32>();
        let (Ok(room_id), Ok(client)) = (room_id, client) else {
            continue;
        };
        if !seen.insert((room_id, client)) {
            continue;
        }
        let history: Vec<String> = book
            .memberships
            .iter()
            .filter(|m| m.room == room_id && m.client == client)
            .map(|m| {
                let ended = m.ended.map_or("open".to_owned(), |t| {
                    format!("+{:.2} s ({})", at(t), m.cause)
                });
                format!("slot {} +{:.2} s to {ended}", SLOTS[m.slot], at(m.joined))
            })
            .collect();
        out.push(format!(
            "  {kind} u{client} in room:{room_id}: its memberships: {}",
            if history.is_empty() {
                "none".to_owned()
            } else {
                history.join("; ")
            }
        ));
        let statuses: Vec<String> = book
            .statuses
            .iter()
            .filter(|s| s.room == room_id && s.client == client)
            .map(|s| {
                let reply = s.reply.map_or("no reply".to_owned(), |(t, ok)| {
                    format!("{} +{:.2} s", if ok { "ok" } else { "error" }, at(t))
                });
                format!(
                    "{} {} via slot {} join_ref {} +{:.2} s, {reply}",
                    s.event,
                    s.status,
                    SLOTS[s.slot],
                    s.join_ref.as_deref().unwrap_or("-"),
                    at(s.sent)
                )
            })
            .collect();
        if !statuses.is_empty() {
            out.push(format!("    statuses sent: {}", statuses.join("; ")));
        }
    }
    out
}

/// What differs between a list and the expected `user => status`: ghosts, losses, and users
/// with other metas than one with the expected status.
fn compare(list: &Listed, expected: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, statuses) in list {
        match expected.get(key) {
            None => out.push(format!("ghost {key} {statuses:?}")),
            Some(s) if statuses.len() != 1 || &statuses[0] != s => {
                out.push(format!("{key}: metas {statuses:?}, expected [{s:?}]"));
            }
            Some(_) => {}
        }
    }
    for key in expected.keys() {
        if !list.contains_key(key) {
            out.push(format!("missing {key}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Churn,
    Quiesce,
    Stop,
}

#[derive(Debug, Clone)]
struct RoomState {
    status: String,
    /// The join_ref of the current join (pending or acked) on the current socket.
    join_ref: Option<String>,
    membership: Option<usize>,
    rejoin_at: Option<Instant>,
    view: View,
}

impl RoomState {
    fn new(status: String) -> RoomState {
        RoomState {
            status,
            join_ref: None,
            membership: None,
            rejoin_at: None,
            view: View::default(),
        }
    }
}

/// A client's state, shared with the checks.
#[derive(Debug, Default)]
struct ClientCore {
    rooms: BTreeMap<u16, RoomState>,
    /// Memberships whose leave awaits its reply, by room (at most one per room: a rejoin's
    /// reply comes after the leave's).
    leaving: HashMap<u16, usize>,
    slot: Option<usize>,
    /// Replies awaited (heartbeats aside).
    pending: usize,
    /// Set by the client's task once it has seen the churn end: from then on it starts no
    /// operation. Until then it may start one (its timer can fire in the same wake-up as the
    /// phase change), which the expected presence, read once every client is quiet, would miss.
    churn_seen_over: bool,
}

impl ClientCore {
    fn quiet(&self) -> bool {
        self.churn_seen_over
            && self.slot.is_some()
            && self.pending == 0
            && self
                .rooms
                .values()
                .all(|r| r.membership.is_some() && r.rejoin_at.is_none())
    }
}

#[derive(Debug)]
struct Shared {
    args: Args,
    /// The address of each node slot that is up.
    up: Mutex<Vec<Option<SocketAddr>>>,
    /// Client connections routed to each node slot and not ended yet (attempts included).
    routed: Mutex<Vec<usize>>,
    book: Mutex<Book>,
    connect: Semaphore,
    mean_op_interval: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    /// Routes a new connection as a least-connections load balancer does: to the node up
    /// with the fewest connections (attempts included), ties broken at random. Nodes that
    /// were never killed would otherwise keep the clients of killed ones, and their memory
    /// would follow their socket count rather than show a leak.
    fn pick_node(&self, rng: &mut Rng) -> Option<Route<'_>> {
        let up: Vec<(usize, SocketAddr)> = lock(&self.up)
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (i, a)))
            .collect();
        let mut routed = lock(&self.routed);
        let fewest = up.iter().map(|&(slot, _)| routed[slot]).min()?;
        let least: Vec<(usize, SocketAddr)> = up
            .into_iter()
            .filter(|&(slot, _)| routed[slot] == fewest)
            .collect();
        let (slot, addr) = least[rng.below(least.len() as u64) as usize];
        routed[slot] += 1;
        Some(Route {
            shared: self,
            slot,
            addr,
        })
    }
}

/// A connection routed to a node slot, counted until dropped.
struct Route<'a> {
    shared: &'a Shared,
    slot: usize,
    addr: SocketAddr,
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        lock(&self.shared.routed)[self.slot] -= 1;
    }
}

/// Distinct rooms for a client to start in: their number drawn from the churn's stationary
/// distribution. Joins (weight `j`) add a room below [`MAX_ROOMS_PER_CLIENT`] and leaves
/// (weight `l`) remove one above none (and an operation that does not apply becomes a join),
/// so a client is in `k` rooms with a probability proportional to `(j / l)^(k - 1)`.
fn initial_rooms(rng: &mut Rng, mix: [u64; 5], rooms: u16) -> Vec<u16> {
    let [j, l, ..] = mix;
    let ratio = if l == 0 { 1e9 } else { j as f64 / l as f64 };
    let weights: Vec<f64> = (0..MAX_ROOMS_PER_CLIENT as i32)
        .map(|k| ratio.powi(k))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut x = (1.0 - rng.unit()) * total;
    let mut count = MAX_ROOMS_PER_CLIENT;
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            count = k + 1;
            break;
        }
        x -= w;
    }
    let count = count.min(usize::from(rooms));
    let mut picked: Vec<u16> = Vec::with_capacity(count);
    while picked.len() < count {
        let room = rng.below(u64::from(rooms)) as u16;
        if !picked.contains(&room) {
            picked.push(room);
        }
    }
    picked
}

/// phoenix.js's `reconnectAfterMs`.
fn reconnect_after(tries: u32) -> Duration {
    const STEPS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
    let ms = STEPS
        .get(tries.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(5000);
    Duration::from_millis(ms)
}

async fn connect(id: u32, addr: SocketAddr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    let source = Ipv4Addr::new(127, 0, 0, 2 + (id as usize % SOURCES) as u8);
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{addr}{SOCKET_PATH}");
    let (ws, _) = client_async(url.as_str(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client dropped it on purpose (churn).
    Dropped,
    /// Lost: closed by the server, EOF, error, heartbeat timeout.
    Lost,
    Stop,
}

#[derive(Debug)]
enum Pending {
    /// A join, with the record of the status it carries in [`Book::statuses`].
    Join(u16, usize),
    /// A leave, with the membership it ends when its reply arrives.
    Leave(Option<usize>),
    /// A status update, with its record in [`Book::statuses`].
    Status(usize),
    Msg(usize),
}

fn topic(room: u16) -> String {
    format!("room:{room}")
}

fn room_of(topic: &str) -> Option<u16> {
    topic.strip_prefix("room:")?.parse().ok()
}

struct Conn<'a> {
    id: u32,
    slot: usize,
    ws: Ws,
    shared: &'a Shared,
    core: &'a Mutex<ClientCore>,
    next_ref: u64,
    pending: HashMap<String, Pending>,
    heartbeat: Option<String>,
}

impl Conn<'_> {
    fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    async fn send(&mut self, frame: Value) -> Result<(), End> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|_| End::Lost)
    }

    async fn push(
        &mut self,
        room: u16,
        event: &str,
        payload: Value,
        p: Pending,
    ) -> Result<(), End> {
        let r = self.next_ref();
        let join_ref = if let Pending::Join(..) = p {
            let mut core = lock(self.core);
            let state = core.rooms.get_mut(&room).expect("a room of the client");
            state.join_ref = Some(r.clone());
            state.view = View::default();
            state.rejoin_at = None;
            Some(r.clone())
        } else {
            lock(self.core)
                .rooms
                .get(&room)
                .and_then(|s| s.join_ref.clone())
        };
        if let Pending::Join(_, record) | Pending::Status(record) = p {
            self.shared.book().statuses[record]
                .join_ref
                .clone_from(&join_ref);
        }
        self.pending.insert(r.clone(), p);
        lock(self.core).pending = self.pending.len();
        self.send(json!([join_ref, r, topic(room), event, payload]))
            .await
    }

    /// Notes a status sent to `room`; returns its record's index (its join_ref and reply are
    /// filled in by [`Conn::push`] and the reply).
    fn record_status(&self, room: u16, status: &str, event: &'static str) -> usize {
        let mut book = self.shared.book();
        book.statuses.push(StatusSent {
            room,
            client: self.id,
            slot: self.slot,
            status: status.to_owned(),
            event,
            join_ref: None,
            sent: Instant::now(),
            reply: None,
        });
        book.statuses.len() - 1
    }

    async fn join(&mut self, room: u16) -> Result<(), End> {
        let status = lock(self.core).rooms[&room].status.clone();
        let record = self.record_status(room, &status, "phx_join");
        let user = format!("u{}", self.id);
        self.push(
            room,
            "phx_join",
            json!({"user": user, "status": status}),
            Pending::Join(room, record),
        )
        .await
    }

    /// Rooms whose rejoin time has come.
    fn due_rejoins(&self, now: Instant) -> Vec<u16> {
        lock(self.core)
            .rooms
            .iter()
            .filter(|(_, s)| s.rejoin_at.is_some_and(|t| t <= now))
            .map(|(r, _)| *r)
            .collect()
    }

    fn next_rejoin(&self) -> Option<Instant> {
        lock(self.core)
            .rooms
            .values()
            .filter_map(|s| s.rejoin_at)
            .min()
    }

    /// One random operation of the churn.
    async fn operate(&mut self, rng: &mut Rng) -> Result<(), End> {
        let (joined, absent): (Vec<u16>, Vec<u16>) = {
            let core = lock(self.core);
            let joined = core
                .rooms
                .iter()
                .filter(|(_, s)| s.membership.is_some())
                .map(|(r, _)| *r)
                .collect();
            let absent = if core.rooms.len() < MAX_ROOMS_PER_CLIENT {
                (0..self.shared.args.rooms)
                    .filter(|r| !core.rooms.contains_key(r))
                    .collect()
            } else {
                Vec::new()
            };
            (joined, absent)
        };
        let roll = rng.below(self.shared.args.mix.iter().sum::<u64>().max(1));
        let pick = |rng: &mut Rng, v: &[u16]| v[rng.below(v.len() as u64) as usize];
        let [j, l, st, m, _] = self.shared.args.mix;
        if roll >= j + l + st + m {
            self.shared.book().ops.drops += 1;
            return Err(End::Dropped);
        }
        if roll < j || joined.is_empty() {
            if absent.is_empty() {
                return Ok(());
            }
            let room = pick(rng, &absent);
            let status = format!("s{}", rng.below(1000));
            lock(self.core).rooms.insert(room, RoomState::new(status));
            self.shared.book().ops.joins += 1;
            return self.join(room).await;
        }
        let room = pick(rng, &joined);
        if roll < j + l {
            let state = {
                let mut core = lock(self.core);
                let state = core.rooms.remove(&room).expect("joined");
                // Messages keep arriving on the channel until the leave's reply.
                if let Some(m) = state.membership {
                    core.leaving.insert(room, m);
                }
                state
            };
            self.shared.book().ops.leaves += 1;
            let r = self.next_ref();
            self.pending
                .insert(r.clone(), Pending::Leave(state.membership));
            lock(self.core).pending = self.pending.len();
            return self
                .send(json!([state.join_ref, r, topic(room), "phx_leave", {}]))
                .await;
        }
        if roll < j + l + st {
            let status = format!("s{}", rng.below(1000));
            lock(self.core)
                .rooms
                .get_mut(&room)
                .expect("joined")
                .status
                .clone_from(&status);
            self.shared.book().ops.statuses += 1;
            let record = self.record_status(room, &status, "status");
            return self
                .push(
                    room,
                    "status",
                    json!({"status": status}),
                    Pending::Status(record),
                )
                .await;
        }
        let id = {
            let mut book = self.shared.book();
            book.ops.messages += 1;
            book.new_msg(room, self.slot)
        };
        self.push(
            room,
            "new_msg",
            json!({"body": format!("m{id}")}),
            Pending::Msg(id),
        )
        .await
    }

    fn frame(&mut self, text: &str) {
        let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text) else {
            self.shared.book().unparsed_frames += 1;
            return;
        };
        let [join_ref, reference, topic, event, payload] = &frame[..] else {
            self.shared.book().unparsed_frames += 1;
            return;
        };
        let (join_ref, event) = (join_ref.as_str(), event.as_str().unwrap_or_default());
        let topic = topic.as_str().unwrap_or_default();
        if topic == "phoenix" {
            if event == "phx_reply" && reference.as_str() == self.heartbeat.as_deref() {
                self.heartbeat = None;
            }
            return;
        }
        let Some(room) = room_of(topic) else { return };
        let now = Instant::now();
        match event {
            "phx_reply" => {
                let Some(p) = reference.as_str().and_then(|r| self.pending.remove(r)) else {
                    return;
                };
                lock(self.core).pending = self.pending.len();
                let ok = payload["status"] == "ok";
                let reason = || {
                    payload["response"]["reason"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                };
                match p {
                    Pending::Join(room, record) => {
                        self.shared.book().statuses[record].reply = Some((now, ok));
                        let mut core = lock(self.core);
                        let Some(state) = core.rooms.get_mut(&room) else {
                            return;
                        };
                        if state.join_ref.as_deref() != join_ref {
                            return;
                        }
                        if ok {
                            state.membership =
                                Some(self.shared.book().join(room, self.slot, self.id));
                        } else {
                            state.join_ref = None;
                            state.rejoin_at = Some(now + REJOIN_AFTER);
                            bump(
                                &mut self.shared.book().reply_errors,
                                format!("join: {}", reason()),
                            );
                        }
                    }
                    Pending::Msg(id) => {
                        let mut book = self.shared.book();
                        if ok {
                            book.msgs[id].acked = Some(now);
                        } else {
                            bump(&mut book.reply_errors, format!("new_msg: {}", reason()));
                        }
                    }
                    Pending::Status(record) => {
                        let mut book = self.shared.book();
                        book.statuses[record].reply = Some((now, ok));
                        if !ok {
                            bump(&mut book.reply_errors, format!("status: {}", reason()));
                        }
                    }
                    Pending::Leave(membership) => {
                        lock(self.core).leaving.remove(&room);
                        if let Some(m) = membership {
                            self.shared.book().end(m, "leave");
                        }
                    }
                }
            }
            "phx_error" | "phx_close" => {
                let mut core = lock(self.core);
                let Some(state) = core.rooms.get_mut(&room) else {
                    return;
                };
                if join_ref.is_none() || state.join_ref.as_deref() != join_ref {
                    return;
                }
                let mut book = self.shared.book();
                if let Some(m) = state.membership.take() {
                    book.end(m, "channel error");
                }
                state.join_ref = None;
                state.rejoin_at = Some(now + REJOIN_AFTER);
                bump(
                    &mut book.channel_errors,
                    format!(
                        "{event} {}",
                        payload.to_string().chars().take(80).collect::<String>()
                    ),
                );
            }
            "presence_state" | "presence_diff" => {
                let mut core = lock(self.core);
                let Some(state) = core.rooms.get_mut(&room) else {
                    return;
                };
                if state.join_ref.is_none()
                    || (join_ref.is_some() && state.join_ref.as_deref() != join_ref)
                {
                    return;
                }
                if event == "presence_state" {
                    state.view.state(payload);
                } else {
                    state.view.diff(payload);
                }
            }
            "new_msg" => {
                let id = payload["body"]
                    .as_str()
                    .and_then(|b| b.strip_prefix('m'))
                    .and_then(|n| n.parse::<u64>().ok());
                // Broadcasts carry no join ref (phoenix's fastlane): before the leave's reply a
                // message is the leaving membership's, as the node sends them in order.
                let membership = {
                    let core = lock(self.core);
                    core.leaving.get(&room).copied().or_else(|| {
                        core.rooms
                            .get(&room)
                            .filter(|s| join_ref.is_none() || s.join_ref.as_deref() == join_ref)
                            .and_then(|s| s.membership)
                    })
                };
                let mut book = self.shared.book();
                match (id, membership) {
                    (Some(id), _) if id >= book.msgs.len() as u64 => book.unknown_msgs += 1,
                    (None, _) => book.unknown_msgs += 1,
                    (Some(id), Some(m)) => {
                        book.receipts.push((id << 32) | m as u64);
                        book.receipt_times.push(Instant::now());
                    }
                    (Some(id), None) => {
                        book.outside_membership += 1;
                        book.late.push((id, self.id, Instant::now()));
                    }
                }
            }
            _ => {}
        }
    }

    async fn run(&mut self, rng: &mut Rng, phase: &mut watch::Receiver<Phase>) -> End {
        let rooms: Vec<u16> = lock(self.core).rooms.keys().copied().collect();
        for room in rooms {
            if let Err(end) = self.join(room).await {
                return end;
            }
            self.shared.book().ops.rejoins += 1;
        }
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_op = Instant::now() + rng.exp(self.shared.mean_op_interval);
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let churning = *phase.borrow() == Phase::Churn;
            if !churning {
                // No operation starts after this (its branch is off from now on).
                lock(self.core).churn_seen_over = true;
            }
            let rejoin = self.next_rejoin();
            let step: Result<(), End> = tokio::select! {
                message = self.ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        self.frame(text.as_str());
                        Ok(())
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or_else(
                            || "close without code".to_owned(),
                            |f| format!("close {}", u16::from(f.code)),
                        );
                        bump(&mut self.shared.book().sockets_lost, code);
                        Err(End::Lost)
                    }
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => {
                        let why = match e {
                            tokio_tungstenite::tungstenite::Error::Io(io) => format!("io: {}", io.kind()),
                            tokio_tungstenite::tungstenite::Error::Protocol(p) => format!("protocol: {p}"),
                            other => other.to_string(),
                        };
                        bump(&mut self.shared.book().sockets_lost, why);
                        Err(End::Lost)
                    }
                    None => {
                        bump(&mut self.shared.book().sockets_lost, "eof");
                        Err(End::Lost)
                    }
                },
                _ = heartbeat.tick() => {
                    if self.heartbeat.is_some() {
                        self.shared.book().heartbeat_timeouts += 1;
                        Err(End::Lost)
                    } else {
                        let r = self.next_ref();
                        self.heartbeat = Some(r.clone());
                        self.send(json!([null, r, "phoenix", "heartbeat", {}])).await
                    }
                }
                _ = tokio::time::sleep_until(next_op), if churning => {
                    next_op = Instant::now() + rng.exp(self.shared.mean_op_interval);
                    self.operate(rng).await
                }
                _ = tokio::time::sleep_until(rejoin.unwrap_or(far)), if rejoin.is_some() => {
                    let mut result = Ok(());
                    for room in self.due_rejoins(Instant::now()) {
                        self.shared.book().ops.rejoins += 1;
                        result = self.join(room).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
                changed = phase.changed() => match changed {
                    Ok(()) if *phase.borrow() != Phase::Stop => Ok(()),
                    _ => Err(End::Stop),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }
}

/// Forgets the socket: every membership ends, every room waits for the next join.
fn disconnected(shared: &Shared, core: &Mutex<ClientCore>) {
    let mut core = lock(core);
    core.slot = None;
    core.pending = 0;
    let mut book = shared.book();
    for (_, m) in core.leaving.drain() {
        book.end(m, "socket lost");
    }
    for state in core.rooms.values_mut() {
        if let Some(m) = state.membership.take() {
            book.end(m, "socket lost");
        }
        state.join_ref = None;
        state.rejoin_at = None;
        state.view = View::default();
    }
}

async fn client(
    id: u32,
    shared: Arc<Shared>,
    core: Arc<Mutex<ClientCore>>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut rng = Rng::new(shared.args.seed ^ (u64::from(id) << 20).wrapping_mul(0x2545_f491));
    // The client starts in as many rooms as the churn keeps it in on average, so that the
    // load (channels, presences, fan-out) is the same from the first minute to the last, and
    // that minute's RSS is a fair baseline.
    let start_rooms = initial_rooms(&mut rng, shared.args.mix, shared.args.rooms);
    {
        let mut core = lock(&core);
        for room in start_rooms {
            core.rooms.insert(room, RoomState::new("s0".to_owned()));
        }
    }
    // Spread the first connects over the first seconds.
    let mut wait = Duration::from_millis(rng.below(u64::from(shared.args.clients) * 5));
    let mut tries = 0u32;
    let mut connected_before = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Stop {
                    return;
                }
                continue;
            }
        }
        tries += 1;
        wait = reconnect_after(tries);
        let Some(route) = shared.pick_node(&mut rng) else {
            continue;
        };
        let (slot, addr) = (route.slot, route.addr);
        let connected = {
            let Ok(_permit) = shared.connect.acquire().await else {
                return;
            };
            tokio::time::timeout(CONNECT_TIMEOUT, connect(id, addr)).await
        };
        let ws = match connected {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                bump(&mut shared.book().connect_failures, e);
                continue;
            }
            Err(_) => {
                bump(&mut shared.book().connect_failures, "timeout");
                continue;
            }
        };
        {
            let mut book = shared.book();
            book.ops.connects += 1;
            if connected_before {
                book.ops.reconnects += 1;
            }
        }
        connected_before = true;
        lock(&core).slot = Some(slot);
        let mut conn = Conn {
            id,
            slot,
            ws,
            shared: &shared,
            core: &core,
            next_ref: 0,
            pending: HashMap::new(),
            heartbeat: None,
        };
        let end = conn.run(&mut rng, &mut phase).await;
        drop(conn);
        disconnected(&shared, &core);
        drop(route);
        if end == End::Stop {
            return;
        }
        tries = 1;
        wait = reconnect_after(tries);
    }
}

// ---------------------------------------------------------------------------------------
// Processes: Redis and the nodes

/// Our own `redis-server` on a fixed loopback port, killed when dropped.
#[derive(Debug)]
struct Redis {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    async fn start(binary: PathBuf, dir: PathBuf) -> Result<Redis, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut redis = Redis {
            binary,
            port,
            dir,
            child: None,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + PROCESS_DEADLINE;
        while self.ping().await.is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis did not answer within 30 s; see {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// One RESP command; the reply's first line.
    async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            let _ = write!(out, "${}\r\n{a}\r\n", a.len());
        }
        tcp.write_all(out.as_bytes()).await?;
        let mut reader = BufReader::new(tcp);
        let mut reply = String::new();
        // PING: one line; PUBSUB NUMSUB of one channel: `*2`, `$<len>`, the channel, `:<n>`.
        let lines = if args.first() == Some(&"PUBSUB") {
            4
        } else {
            1
        };
        for _ in 0..lines {
            reader.read_line(&mut reply).await?;
        }
        Ok(reply)
    }

    async fn ping(&self) -> std::io::Result<()> {
        let reply = tokio::time::timeout(Duration::from_secs(1), self.command(&["PING"])).await??;
        if reply.starts_with("+PONG") {
            Ok(())
        } else {
            Err(std::io::Error::other(reply))
        }
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    async fn subscribers(&self, channel: &str) -> Option<u64> {
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            self.command(&["PUBSUB", "NUMSUB", channel]),
        )
        .await
        .ok()?
        .ok()?;
        reply.lines().last()?.strip_prefix(':')?.trim().parse().ok()
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid, "TERM");
            }
            if tokio::time::timeout(PROCESS_DEADLINE, child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// One node process.
#[derive(Debug)]
struct Proc {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
    /// Held open: the node exits when this tool dies without killing it.
    _stdin: ChildStdin,
    incarnation: usize,
}

/// One run of a node process, for the report.
#[derive(Debug, Clone)]
struct Incarnation {
    slot: usize,
    name: String,
    pid: u32,
    started: Instant,
    ended: Option<(Instant, String)>,
    /// (when, VmRSS KiB, open file descriptors).
    rss: Vec<(Instant, u64, usize)>,
    /// Where the node writes its heap in use (bytes).
    heap_file: PathBuf,
    /// (when, heap in use in KiB), read with each RSS sample.
    heap: Vec<(Instant, u64)>,
    /// (when, file-backed RSS in KiB: the binary's and libraries' pages read so far), read
    /// with each RSS sample.
    file: Vec<(Instant, u64)>,
    /// The checked figure: VmRSS KiB [`SETTLE_RSS`] after the presence checks, the clients
    /// still connected.
    final_rss: Option<u64>,
    /// Reported, not checked: VmRSS KiB when the clients were quiet (before the presence
    /// check's observers), and right after the presence checks.
    quiet_rss: Option<u64>,
    after_checks_rss: Option<u64>,
}

impl Incarnation {
    /// The heap in use (KiB) read with the RSS sample taken at `t`.
    fn heap_at(&self, t: Instant) -> Option<u64> {
        self.heap.iter().find(|(h, _)| *h == t).map(|(_, k)| *k)
    }
}

const SLOTS: [&str; 3] = ["a", "b", "c"];

/// An RSS baseline: the sample, and the incarnation it was taken of.
#[derive(Clone, Copy)]
struct RssBaseline<'a> {
    from: &'a Incarnation,
    at: Instant,
    kib: u64,
}

/// The RSS baseline `inc`'s final figure is compared with (check 5 of the module docs): its
/// slot's RSS after the first minute of the churn, under the load that every later minute
/// has. That is the first sample at least [`RSS_BASELINE_AFTER`] into the churn of the
/// slot's first incarnation, which started with the churn, if it was still running then.
/// An incarnation started by a restart is compared with it too: its own first minute holds
/// the reconnect ramp (its clients come back over minutes, to the node with the fewest
/// connections), not the steady load. When the slot's first restart came within the first
/// minute (runs under 6 minutes), the baseline is the incarnation's own first sample at
/// least that long into both the churn and its life. `None` when no such sample was taken
/// before the churn ended.
fn rss_baseline<'a>(
    incarnations: &'a [Incarnation],
    inc: &'a Incarnation,
    churn_start: Instant,
    churn_end: Instant,
) -> Option<RssBaseline<'a>> {
    let sample = |of: &'a Incarnation, from: Instant| {
        of.rss
            .iter()
            .find(|(t, _, _)| *t >= from && *t <= churn_end)
            .map(|(at, kib, _)| RssBaseline {
                from: of,
                at: *at,
                kib: *kib,
            })
    };
    let first_minute = churn_start + RSS_BASELINE_AFTER;
    let slot_first = incarnations.iter().find(|i| i.slot == inc.slot)?;
    let ran_the_first_minute = slot_first
        .ended
        .as_ref()
        .is_none_or(|(ended, _)| *ended > first_minute);
    if slot_first.started <= churn_start
        && ran_the_first_minute
        && let Some(b) = sample(slot_first, first_minute)
    {
        return Some(b);
    }
    sample(inc, inc.started.max(churn_start) + RSS_BASELINE_AFTER)
}

#[derive(Debug)]
struct Cluster {
    args: Args,
    redis: Redis,
    pubsub: String,
    procs: Vec<Option<Proc>>,
    /// The current node name of each slot.
    names: Vec<String>,
    renames: Vec<u32>,
    incarnations: Vec<Incarnation>,
    started: Instant,
}

impl Cluster {
    fn channel(&self) -> String {
        format!("presence:{}", self.pubsub)
    }

    async fn start_node(&mut self, slot: usize) -> Result<SocketAddr, String> {
        let name = self.names[slot].clone();
        let log = self.args.log_dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let (broadcast, down, permdown, silent) = PERIODS;
        let heap_file = self
            .args
            .log_dir
            .join(format!("{name}-{}.heap", self.incarnations.len()));
        let mut child = Command::new(&self.args.server)
            .env("CHAT_NODE_HEAP_FILE", &heap_file)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("PRESENCE_NODE", &name)
            .env("PRESENCE_REDIS_URL", self.redis.url())
            .env("PRESENCE_PUBSUB_NAME", &self.pubsub)
            .env("PRESENCE_BROADCAST_PERIOD_MS", broadcast.to_string())
            .env("PRESENCE_DOWN_PERIOD_MS", down.to_string())
            .env("PRESENCE_PERMDOWN_PERIOD_MS", permdown.to_string())
            .env("PRESENCE_MAX_SILENT_PERIODS", silent.to_string())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env("CHAT_NODE_EXIT_WITH_STDIN", "1")
            .envs(self.args.node_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.args.server.display()))?;
        let pid = child.id().ok_or("no pid")?;
        let stdin = child.stdin.take().ok_or("stdin not piped")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout not piped")?);
        let mut line = String::new();
        let read = tokio::time::timeout(PROCESS_DEADLINE, stdout.read_line(&mut line)).await;
        let addr: SocketAddr = match read {
            Ok(Ok(n)) if n > 0 => line
                .trim()
                .strip_prefix("LISTENING ")
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("{name}: unexpected first line {line:?}"))?,
            _ => {
                return Err(format!(
                    "{name} did not say LISTENING; see {}",
                    log.display()
                ));
            }
        };
        self.incarnations.push(Incarnation {
            slot,
            name,
            pid,
            started: Instant::now(),
            ended: None,
            rss: Vec::new(),
            heap_file,
            heap: Vec::new(),
            file: Vec::new(),
            final_rss: None,
            quiet_rss: None,
            after_checks_rss: None,
        });
        self.procs[slot] = Some(Proc {
            child,
            pid,
            addr,
            _stdout: stdout,
            _stdin: stdin,
            incarnation: self.incarnations.len() - 1,
        });
        Ok(addr)
    }

    /// Signals the node of `slot` (`TERM` or `KILL`) and waits for it to exit.
    async fn stop_node(&mut self, slot: usize, sig: &str) -> String {
        let Some(mut proc) = self.procs[slot].take() else {
            return "not running".to_owned();
        };
        signal(proc.pid, sig);
        let status = match tokio::time::timeout(PROCESS_DEADLINE, proc.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                let _ = proc.child.start_kill();
                let _ = proc.child.wait().await;
                format!(
                    "did not exit within {} s; killed",
                    PROCESS_DEADLINE.as_secs()
                )
            }
        };
        let how = format!("SIG{sig}: {status}");
        self.incarnations[proc.incarnation].ended = Some((Instant::now(), how.clone()));
        how
    }

    /// VmRSS of every running node, by incarnation.
    fn rss_now(&self) -> Vec<(usize, Option<u64>)> {
        self.procs
            .iter()
            .flatten()
            .map(|p| (p.incarnation, status_kib(p.pid, "VmRSS:")))
            .collect()
    }

    /// Samples every running node's RSS (with its open fds, file-backed RSS and heap in use)
    /// into its incarnation's timeline; returns (incarnation, VmRSS KiB) of each sample.
    fn sample_rss(&mut self) -> Vec<(usize, u64)> {
        let now = Instant::now();
        let mut sampled = Vec::new();
        for proc in self.procs.iter().flatten() {
            if let Some(kib) = status_kib(proc.pid, "VmRSS:") {
                sampled.push((proc.incarnation, kib));
                let fds =
                    std::fs::read_dir(format!("/proc/{}/fd", proc.pid)).map_or(0, Iterator::count);
                let inc = &mut self.incarnations[proc.incarnation];
                inc.rss.push((now, kib, fds));
                if let Some(file) = status_kib(proc.pid, "RssFile:") {
                    inc.file.push((now, file));
                }
                let heap = std::fs::read_to_string(&inc.heap_file).ok();
                if let Some(bytes) = heap.and_then(|h| h.trim().parse::<u64>().ok()) {
                    inc.heap.push((now, bytes / 1024));
                }
            }
        }
        sampled
    }

    /// Waits until every node is subscribed to the cluster's Redis channel.
    async fn wait_subscribed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let channel = self.channel();
        loop {
            let live = self.procs.iter().flatten().count() as u64;
            if self
                .redis
                .subscribers(&channel)
                .await
                .is_some_and(|n| n >= live)
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(&mut self) {
        for slot in 0..self.procs.len() {
            if self.procs[slot].is_some() {
                self.stop_node(slot, "TERM").await;
            }
        }
        self.redis.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// The run

/// One scheduled restart, for the report.
#[derive(Debug, Clone)]
struct Event {
    at: Duration,
    what: String,
    outcome: String,
    down_for: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    /// Slot, signal, with a new name.
    Restart(usize, &'static str, bool),
    RedisRestart,
}

const SCHEDULE: [Action; 5] = [
    Action::Restart(1, "TERM", false),
    Action::Restart(2, "TERM", true),
    Action::Restart(1, "KILL", false),
    Action::Restart(2, "KILL", true),
    Action::RedisRestart,
];

async fn perform(cluster: &mut Cluster, shared: &Shared, action: Action) -> Event {
    let at = cluster.started.elapsed();
    let t0 = Instant::now();
    match action {
        Action::Restart(slot, sig, rename) => {
            let old = cluster.names[slot].clone();
            lock(&shared.up)[slot] = None;
            let d = shared.book().disturbances.len();
            shared.book().disturbances.push(Disturbance {
                what: format!("node {} ({old}) SIG{sig}", SLOTS[slot]),
                slot: Some(slot),
                from: Instant::now(),
                to: None,
            });
            let outcome = cluster.stop_node(slot, sig).await;
            tokio::time::sleep(RESTART_PAUSE).await;
            if rename {
                cluster.renames[slot] += 1;
                cluster.names[slot] = format!("{}{}", SLOTS[slot], cluster.renames[slot] + 1);
            }
            let new = cluster.names[slot].clone();
            let (outcome, to) = match cluster.start_node(slot).await {
                Ok(addr) => {
                    lock(&shared.up)[slot] = Some(addr);
                    (
                        format!("{outcome}; restarted as {new}"),
                        Instant::now() + RECOVERY,
                    )
                }
                Err(e) => (format!("{outcome}; restart failed: {e}"), far_future()),
            };
            shared.book().disturbances[d].to = Some(to);
            Event {
                at,
                what: format!(
                    "node {} ({old}): SIG{sig}, restart under {} name",
                    SLOTS[slot],
                    if rename { "a new" } else { "the same" }
                ),
                outcome,
                down_for: t0.elapsed(),
            }
        }
        Action::RedisRestart => {
            let d = shared.book().disturbances.len();
            shared.book().disturbances.push(Disturbance {
                what: "redis restart".to_owned(),
                slot: None,
                from: Instant::now(),
                to: None,
            });
            cluster.redis.stop().await;
            tokio::time::sleep(REDIS_DOWN).await;
            let outcome = match cluster.redis.spawn().await {
                Ok(()) => {
                    if cluster.wait_subscribed(Duration::from_secs(60)).await {
                        format!(
                            "down {:.1} s; every node subscribed again after {:.1} s",
                            REDIS_DOWN.as_secs_f64(),
                            t0.elapsed().as_secs_f64()
                        )
                    } else {
                        "nodes did not all subscribe again within 60 s".to_owned()
                    }
                }
                Err(e) => format!("restart failed: {e}"),
            };
            shared.book().disturbances[d].to = Some(Instant::now() + RECOVERY);
            Event {
                at,
                what: "redis: SIGTERM, restart on the same port".to_owned(),
                outcome,
                down_for: t0.elapsed(),
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Every room's presence as listed by the node at `addr`, through a fresh observer join.
async fn node_presence(addr: SocketAddr, rooms: u16) -> Result<BTreeMap<u16, Listed>, String> {
    let url = format!("ws://{addr}{SOCKET_PATH}");
    let (mut ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .map_err(|_| "connect timeout".to_owned())?
    .map_err(|e| format!("connect: {e}"))?;
    for room in 0..rooms {
        let r = room.to_string();
        let frame = json!([r, r, topic(room), "phx_join", {"user": OBSERVER}]);
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < usize::from(rooms) {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("{} presence_state of {rooms} within 20 s", out.len()))?;
        let Some(Ok(Message::Text(text))) = next else {
            if matches!(next, Some(Ok(_))) {
                continue;
            }
            return Err(format!("observer socket closed: {next:?}"));
        };
        let frame: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
        if frame[3] == "presence_state"
            && let Some(room) = frame[2].as_str().and_then(room_of)
        {
            let mut view = View::default();
            view.state(&frame[4]);
            out.insert(room, listed(&view.metas));
        } else if frame[3] == "phx_reply" && frame[4]["status"] != "ok" {
            return Err(format!("observer join refused: {}", frame[4]));
        }
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = ws.send(Message::Close(Some(close))).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(out)
}

/// The figures of a run.
#[derive(Debug, Default)]
struct Outcome {
    /// (name, passed, detail lines)
    checks: Vec<(String, bool, Vec<String>)>,
    json: serde_json::Map<String, Value>,
}

impl Outcome {
    fn check(&mut self, name: &str, passed: bool, detail: Vec<String>) {
        self.checks.push((name.to_owned(), passed, detail));
    }
}

fn progress(started: Instant, text: &str) {
    eprintln!("[{:6.1} s] {text}", started.elapsed().as_secs_f64());
}

/// The expected presence (room => user => status) and each client's views, from the clients.
type Expected = BTreeMap<u16, BTreeMap<String, String>>;

fn expected_presence(cores: &[Arc<Mutex<ClientCore>>]) -> Expected {
    let mut expected: Expected = BTreeMap::new();
    for (id, core) in cores.iter().enumerate() {
        for (room, state) in &lock(core).rooms {
            if state.membership.is_some() {
                expected
                    .entry(*room)
                    .or_default()
                    .insert(format!("u{id}"), state.status.clone());
            }
        }
    }
    expected
}

/// Problems of the clients' own lists: (clients with a wrong list, examples).
fn client_view_problems(
    cores: &[Arc<Mutex<ClientCore>>],
    expected: &Expected,
) -> (usize, Vec<String>) {
    let empty = BTreeMap::new();
    let mut wrong = 0;
    let mut examples = Vec::new();
    for (id, core) in cores.iter().enumerate() {
        let core = lock(core);
        let mut bad = false;
        for (room, state) in &core.rooms {
            let problems = compare(
                &listed(&state.view.metas),
                expected.get(room).unwrap_or(&empty),
            );
            if !problems.is_empty() || !state.view.synced {
                bad = true;
                if examples.len() < 5 {
                    examples.push(format!(
                        "u{id} in room:{room} (synced {}): {}",
                        state.view.synced,
                        problems
                            .iter()
                            .take(4)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
        }
        if bad {
            wrong += 1;
        }
    }
    (wrong, examples)
}

/// Problems of every node's list, by node name.
async fn node_problems(
    nodes: &[(String, SocketAddr)],
    rooms: u16,
    expected: &Expected,
) -> BTreeMap<String, Vec<String>> {
    let empty = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, addr) in nodes {
        let problems = match node_presence(*addr, rooms).await {
            Ok(lists) => lists
                .iter()
                .flat_map(|(room, list)| {
                    compare(list, expected.get(room).unwrap_or(&empty))
                        .into_iter()
                        .map(move |p| format!("room:{room}: {p}"))
                })
                .collect(),
            Err(e) => vec![format!("cannot read its presence: {e}")],
        };
        out.insert(name.clone(), problems);
    }
    out
}

/// The message check: (eligible deliveries, lost, duplicates, misrouted, examples).
#[derive(Debug, Default, PartialEq, Eq)]
struct MessageCheck {
    acked: usize,
    unacked: usize,
    excluded: usize,
    eligible: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    misrouted: u64,
    examples: Vec<String>,
    /// Every lost delivery: `(message id, membership id)`.
    lost_pairs: Vec<(usize, usize)>,
}

fn disturbed(ds: &[Disturbance], slots: [usize; 2], from: Instant, to: Instant) -> bool {
    ds.iter().any(|d| {
        (d.slot.is_none() || d.slot == Some(slots[0]) || d.slot == Some(slots[1]))
            && d.from <= to
            && d.to.is_none_or(|end| end >= from)
    })
}

fn check_messages(book: &mut Book) -> MessageCheck {
    let mut c = MessageCheck::default();
    let mut counts: HashMap<u64, u32> = HashMap::with_capacity(book.receipts.len());
    for r in &book.receipts {
        *counts.entry(*r).or_default() += 1;
    }
    for (&r, &n) in &counts {
        let (id, m) = ((r >> 32) as usize, (r & 0xffff_ffff) as usize);
        if n > 1 {
            c.duplicates += u64::from(n - 1);
            if c.examples.len() < 10 {
                c.examples
                    .push(format!("m{id} received {n} times in membership {m}"));
            }
        }
        if book.msgs[id].room != book.memberships[m].room {
            c.misrouted += 1;
        }
    }
    let mut by_room: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, m) in book.memberships.iter().enumerate() {
        by_room.entry(m.room).or_default().push(i);
    }
    for (id, msg) in book.msgs.iter().enumerate() {
        let Some(acked) = msg.acked else {
            c.unacked += 1;
            continue;
        };
        c.acked += 1;
        let until = acked + GRACE;
        let mut excluded = false;
        for &mi in by_room.get(&msg.room).map_or(&[][..], Vec::as_slice) {
            let m = &book.memberships[mi];
            if m.joined >= msg.sent || m.ended.is_some_and(|e| e <= until) {
                continue;
            }
            if disturbed(&book.disturbances, [m.slot, msg.slot], msg.sent, until) {
                excluded = true;
                continue;
            }
            c.eligible += 1;
            match counts.get(&(((id as u64) << 32) | mi as u64)) {
                Some(_) => c.received += 1,
                None => {
                    c.lost += 1;
                    c.lost_pairs.push((id, mi));
                    if c.examples.len() < 10 {
                        c.examples.push(format!(
                            "m{id} to room:{} via slot {} not received by membership {mi} (slot {})",
                            msg.room, SLOTS[msg.slot], SLOTS[m.slot]
                        ));
                    }
                }
            }
        }
        if excluded {
            c.excluded += 1;
        }
    }
    c
}

/// Seconds since the start of the run, for reports.
fn since(start: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(start).as_secs_f64()
}

/// p50, p99 and max of `delays` (sorted in place), in ms.
fn percentiles(delays: &mut [Duration]) -> String {
    if delays.is_empty() {
        return "no receipts".to_owned();
    }
    delays.sort_unstable();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!(
        "{} receipts, delay p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delays.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// What the report needs to tell a late delivery from a drop: each lost message with when
/// it was sent, where its lost receivers were and what became of their memberships, and the
/// receipt delays around each disturbance.
fn diagnose(book: &Book, mc: &MessageCheck, start: Instant) -> Vec<String> {
    let mut out = Vec::new();
    let mut delays: Vec<Duration> = Vec::with_capacity(book.receipts.len());
    let delay_of = |i: usize| {
        let id = (book.receipts[i] >> 32) as usize;
        book.receipt_times[i].saturating_duration_since(book.msgs[id].sent)
    };
    for i in 0..book.receipts.len().min(book.receipt_times.len()) {
        delays.push(delay_of(i));
    }
    out.push(format!("all messages: {}", percentiles(&mut delays)));
    for d in &book.disturbances {
        let from = d.from.checked_sub(Duration::from_secs(5)).unwrap_or(d.from);
        let to = d.to.unwrap_or_else(Instant::now) + Duration::from_secs(20);
        let mut around: Vec<Duration> = (0..book.receipts.len().min(book.receipt_times.len()))
            .filter(|&i| {
                let sent = book.msgs[(book.receipts[i] >> 32) as usize].sent;
                sent >= from && sent <= to
            })
            .map(delay_of)
            .collect();
        out.push(format!(
            "sent from 5 s before {} (+{:.1} s) to 20 s after its window closed (+{:.1} s): {}",
            d.what,
            since(start, d.from),
            since(start, to - Duration::from_secs(20)),
            percentiles(&mut around)
        ));
    }
    let mut by_msg: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(id, mi) in &mc.lost_pairs {
        by_msg.entry(id).or_default().push(mi);
    }
    if !by_msg.is_empty() {
        out.push(format!(
            "{} lost deliveries of {} messages:",
            mc.lost_pairs.len(),
            by_msg.len()
        ));
    }
    for (&id, lost) in by_msg.iter().take(30) {
        let msg = &book.msgs[id];
        let due = book
            .memberships
            .iter()
            .filter(|m| m.room == msg.room && m.joined < msg.sent)
            .count();
        let mut by_slot = [0usize; SLOTS.len()];
        let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
        let mut late = 0;
        let mut late_delay = Duration::ZERO;
        for &mi in lost {
            let m = &book.memberships[mi];
            by_slot[m.slot] += 1;
            *causes.entry(m.cause).or_default() += 1;
            if let Some(&(_, _, at)) = book
                .late
                .iter()
                .find(|&&(lid, client, _)| lid as usize == id && client == m.client)
            {
                late += 1;
                late_delay = late_delay.max(at.saturating_duration_since(msg.sent));
            }
        }
        let slots: Vec<String> = SLOTS
            .iter()
            .zip(by_slot)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        out.push(format!(
            "  m{id} to room:{} via {} sent +{:.2} s, acked after {}: {} of about {due} members lost it (receivers on {}); their memberships: {:?}; {late} received it later outside a membership{}",
            msg.room,
            SLOTS[msg.slot],
            since(start, msg.sent),
            msg.acked.map_or("never".to_owned(), |a| format!("{} ms", a.saturating_duration_since(msg.sent).as_millis())),
            lost.len(),
            slots.join(", "),
            causes,
            if late > 0 { format!(" (up to {} ms after sending)", late_delay.as_millis()) } else { String::new() },
        ));
    }
    out
}

async fn soak(args: Args) -> Result<(i32, String, Value), String> {
    std::fs::create_dir_all(&args.log_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.log_dir.display()))?;
    if !args.server.is_file() {
        return Err(format!(
            "no chat node at {}: run `cargo build --release -p presence-tests --bin soak --bin chat_node` (or pass --server)",
            args.server.display()
        ));
    }
    let run_start = Instant::now();
    progress(
        run_start,
        &format!("seed {}; logs in {}", args.seed, args.log_dir.display()),
    );
    let redis = Redis::start(args.redis_server.clone(), args.log_dir.clone()).await?;
    let pubsub = format!("soak-{}-{:x}", std::process::id(), args.seed & 0xffff_ffff);
    let mut cluster = Cluster {
        args: args.clone(),
        redis,
        pubsub,
        procs: (0..SLOTS.len()).map(|_| None).collect(),
        names: SLOTS.iter().map(|s| format!("{s}1")).collect(),
        renames: vec![0; SLOTS.len()],
        incarnations: Vec::new(),
        started: Instant::now(),
    };
    let result = drive(&args, &mut cluster, run_start).await;
    progress(run_start, "stopping the nodes and redis");
    cluster.shutdown().await;
    result
}

async fn drive(
    args: &Args,
    cluster: &mut Cluster,
    run_start: Instant,
) -> Result<(i32, String, Value), String> {
    let shared = Arc::new(Shared {
        args: args.clone(),
        up: Mutex::new(vec![None; SLOTS.len()]),
        routed: Mutex::new(vec![0; SLOTS.len()]),
        book: Mutex::new(Book::default()),
        connect: Semaphore::new(64),
        mean_op_interval: Duration::from_secs_f64(f64::from(args.clients) / args.ops_per_sec),
    });
    for slot in 0..SLOTS.len() {
        let addr = cluster.start_node(slot).await?;
        lock(&shared.up)[slot] = Some(addr);
    }
    if !cluster.wait_subscribed(PROCESS_DEADLINE).await {
        return Err("the nodes did not all subscribe to redis".to_owned());
    }
    progress(
        run_start,
        &format!("3 nodes up on redis {}", cluster.redis.url()),
    );
    let (phase_tx, phase_rx) = watch::channel(Phase::Churn);
    let cores: Vec<Arc<Mutex<ClientCore>>> = (0..args.clients)
        .map(|_| Arc::new(Mutex::new(ClientCore::default())))
        .collect();
    let mut clients = JoinSet::new();
    for (id, core) in cores.iter().enumerate() {
        clients.spawn(client(
            id as u32,
            shared.clone(),
            core.clone(),
            phase_rx.clone(),
        ));
    }
    let churn_start = Instant::now();
    cluster.started = churn_start;
    let mut events = Vec::new();
    let mut next_event = 0;
    let mut next_rss = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    let end = churn_start + args.duration;
    while Instant::now() < end {
        let now = Instant::now();
        if !args.no_restarts
            && next_event < SCHEDULE.len()
            && now >= churn_start + args.duration * (next_event as u32 + 1) / 6
        {
            let event = perform(cluster, &shared, SCHEDULE[next_event]).await;
            progress(run_start, &format!("{}: {}", event.what, event.outcome));
            events.push(event);
            next_event += 1;
            continue;
        }
        if now >= next_rss {
            cluster.sample_rss();
            next_rss += RSS_EVERY;
        }
        if now >= next_progress {
            let book = shared.book();
            let o = &book.ops;
            progress(
                run_start,
                &format!(
                    "connects {} joins {} leaves {} statuses {} msgs {} drops {} receipts {}",
                    o.connects,
                    o.joins,
                    o.leaves,
                    o.statuses,
                    o.messages,
                    o.drops,
                    book.receipts.len()
                ),
            );
            next_progress += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let churn_end = Instant::now();
    let _ = phase_tx.send(Phase::Quiesce);
    progress(
        run_start,
        "churn over; waiting for every client to be quiet",
    );
    let quiet_deadline = churn_end + QUIET_DEADLINE;
    let quiet_count = || cores.iter().filter(|c| lock(c).quiet()).count();
    let mut quiet = quiet_count();
    while quiet < cores.len() && Instant::now() < quiet_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        quiet = quiet_count();
    }
    let quiet_at = Instant::now();
    let mut out = Outcome::default();
    out.check(
        "quiet",
        quiet == cores.len(),
        vec![format!(
            "{quiet} of {} clients quiet {:.1} s after the churn",
            cores.len(),
            (quiet_at - churn_end).as_secs_f64()
        )],
    );
    progress(
        run_start,
        &format!("{quiet} clients quiet; checking presence"),
    );
    for (inc, kib) in cluster.rss_now() {
        cluster.incarnations[inc].quiet_rss = kib;
    }
    let expected = expected_presence(&cores);
    let members: usize = expected.values().map(BTreeMap::len).sum();
    let nodes: Vec<(String, SocketAddr)> = cluster
        .procs
        .iter()
        .enumerate()
        .filter_map(|(slot, p)| p.as_ref().map(|p| (cluster.names[slot].clone(), p.addr)))
        .collect();
    let settle = Duration::from_secs(60).max(Duration::from_millis(PERIODS.2 * 4));
    let settle_deadline = quiet_at + settle;
    let (mut node_view, mut views);
    loop {
        node_view = node_problems(&nodes, args.rooms, &expected).await;
        views = client_view_problems(&cores, &expected);
        let nodes_ok = node_view.values().all(Vec::is_empty);
        if (nodes_ok && views.0 == 0) || Instant::now() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settled_in = quiet_at.elapsed();
    let mut detail = vec![format!(
        "{members} memberships in {} rooms; nodes read {:.1} s after the clients were quiet",
        args.rooms,
        settled_in.as_secs_f64()
    )];
    for (name, problems) in &node_view {
        detail.push(format!(
            "{name}: {}",
            if problems.is_empty() {
                "exact".to_owned()
            } else {
                format!(
                    "{} problems: {}",
                    problems.len(),
                    problems
                        .iter()
                        .take(8)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ));
    }
    detail.extend(ghost_histories(
        &shared.book(),
        node_view.values().flatten(),
        churn_start,
    ));
    out.check(
        "presence on every node",
        node_view.values().all(Vec::is_empty),
        detail,
    );
    let mut detail = vec![format!("{} clients with a wrong list", views.0)];
    detail.extend(views.1.iter().cloned());
    out.check("client views", views.0 == 0, detail);
    // RSS right after the presence checks (reported), and the final figure once the
    // allocator had time to return the pages freed before (checked), the clients still
    // connected as at the baseline.
    for (inc, kib) in cluster.sample_rss() {
        cluster.incarnations[inc].after_checks_rss = Some(kib);
    }
    tokio::time::sleep(SETTLE_RSS).await;
    for (inc, kib) in cluster.sample_rss() {
        cluster.incarnations[inc].final_rss = Some(kib);
    }
    progress(run_start, "checking messages");
    let _ = phase_tx.send(Phase::Stop);
    clients.shutdown().await;
    // `SOAK_PROBE_OWNERS=1` runs the probe without a ghost too (to try it).
    let probe = std::env::var_os("SOAK_PROBE_OWNERS").is_some();
    if probe || node_view.values().any(|problems| !problems.is_empty()) {
        progress(
            run_start,
            "stopping the nodes one by one to find the ghosts' owners",
        );
        let owners = ghost_owners(cluster, args.rooms).await;
        out.check("ghost owners (information)", true, owners);
    }
    let mut book = std::mem::take(&mut *shared.book());
    let mc = check_messages(&mut book);
    let mut detail = vec![
        format!(
            "{} sent, {} acked ({} not acked: refused or lost with their socket); {} acked messages had a delivery excluded by a disturbance",
            book.msgs.len(),
            mc.acked,
            mc.unacked,
            mc.excluded
        ),
        format!(
            "{} deliveries due, {} received, {} lost; {} duplicates, {} misrouted; {} receipts in all, {} outside a membership, {} unknown",
            mc.eligible,
            mc.received,
            mc.lost,
            mc.duplicates,
            mc.misrouted,
            book.receipts.len(),
            book.outside_membership,
            book.unknown_msgs
        ),
    ];
    detail.extend(mc.examples.iter().cloned());
    detail.extend(diagnose(&book, &mc, run_start));
    out.check(
        "messages",
        mc.lost == 0 && mc.duplicates == 0 && mc.misrouted == 0 && book.unknown_msgs == 0,
        detail,
    );
    let mut rss_ok = true;
    let mut rss_detail = Vec::new();
    let mut rss_json = Vec::new();
    for inc in &cluster.incarnations {
        let base = rss_baseline(&cluster.incarnations, inc, churn_start, churn_end);
        let baseline = base.map(|b| b.kib);
        let peak = inc.rss.iter().map(|(_, k, _)| *k).max();
        let (text, checked, passed) = match (inc.ended.as_ref(), baseline, inc.final_rss) {
            (Some((_, how)), _, _) => (
                format!("ended ({how}); peak {} MiB", mib(peak)),
                false,
                true,
            ),
            (None, Some(b), Some(f)) => {
                let growth = (f as f64 - b as f64) / b as f64 * 100.0;
                let passed = growth <= RSS_GROWTH_PERCENT;
                (
                    format!(
                        "baseline {} MiB ({} at +{:.0} s), final {} MiB ({growth:+.1} %), peak {} MiB \
                         (not checked: {} MiB when the clients were quiet, {} MiB right after the \
                         presence checks)",
                        mib(Some(b)),
                        base.map_or("", |b| b.from.name.as_str()),
                        base.map_or(0.0, |b| secs(b.at.saturating_duration_since(churn_start))),
                        mib(Some(f)),
                        mib(peak),
                        mib(inc.quiet_rss),
                        mib(inc.after_checks_rss),
                    ),
                    true,
                    passed,
                )
            }
            (None, _, f) => (
                format!(
                    "no baseline (ran less than a minute of churn); final {} MiB",
                    mib(f)
                ),
                false,
                true,
            ),
        };
        rss_ok &= passed;
        let file_at = |t: Instant| inc.file.iter().find(|(h, _)| *h == t).map(|(_, k)| *k);
        let heap_baseline = base.and_then(|b| b.from.heap_at(b.at));
        let heap_final = inc.heap.last().map(|(_, k)| *k);
        let heap_text = match (inc.ended.is_none(), heap_baseline, heap_final) {
            (true, Some(b), Some(f)) => format!(
                "; heap in use {} -> {} MiB ({:+.1} %)",
                mib(Some(b)),
                mib(Some(f)),
                (f as f64 - b as f64) / b.max(1) as f64 * 100.0
            ),
            _ => String::new(),
        };
        rss_detail.push(format!(
            "{} (slot {}, pid {}): {text}{heap_text}{}",
            inc.name,
            SLOTS[inc.slot],
            inc.pid,
            if checked {
                if passed { " ok" } else { " FAILED" }
            } else {
                ""
            }
        ));
        // One sample a minute (the first at or after each minute of the churn), and the last.
        // (s since the churn began, RSS KiB, open fds, heap KiB, file-backed KiB)
        type Sample = (f64, u64, usize, Option<u64>, Option<u64>);
        let mut timeline: Vec<Sample> = Vec::new();
        let mut minute = 0;
        for (i, (t, k, f)) in inc.rss.iter().enumerate() {
            let at = t.saturating_duration_since(churn_start).as_secs();
            if at >= minute * 60 || i + 1 == inc.rss.len() {
                let since_churn = secs(t.saturating_duration_since(churn_start));
                timeline.push((since_churn, *k, *f, inc.heap_at(*t), file_at(*t)));
                minute = at / 60 + 1;
            }
        }
        rss_detail.push(format!(
            "  MiB RSS / of it file-backed / MiB heap in use / open fds: {}",
            timeline
                .iter()
                .map(|(t, k, f, h, file)| {
                    format!(
                        "+{t:.0} s {} / {} / {} / {f}",
                        mib(Some(*k)),
                        mib(*file),
                        mib(*h)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        rss_json.push(json!({
            "timeline_s_kib_fds_heapkib_filekib": timeline,
            "heap_baseline_kib": heap_baseline, "heap_final_kib": heap_final,
            "node": inc.name, "slot": SLOTS[inc.slot], "pid": inc.pid,
            "started_s": secs(inc.started.saturating_duration_since(churn_start)),
            "ended": inc.ended.as_ref().map(|(_, h)| h.clone()),
            "baseline_kib": baseline, "final_kib": inc.final_rss, "peak_kib": peak,
            "quiet_kib": inc.quiet_rss, "after_checks_kib": inc.after_checks_rss,
            "checked": checked, "passed": passed,
        }));
    }
    out.check("rss", rss_ok, rss_detail);

    // The report.
    let o = book.ops.clone();
    let log_counts: Vec<(String, usize, usize)> = cluster
        .incarnations
        .iter()
        .map(|i| i.name.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(args.log_dir.join(format!("{name}.log")))
                .unwrap_or_default();
            let warn = text.lines().filter(|l| l.contains(" WARN ")).count();
            let error = text.lines().filter(|l| l.contains(" ERROR ")).count();
            (name, warn, error)
        })
        .collect();
    let mut text = String::new();
    let (b, d, p, s) = PERIODS;
    let _ = writeln!(
        text,
        "churn soak: {} clients, {} rooms, {} s of churn at {} ops/s, seed {}",
        args.clients,
        args.rooms,
        args.duration.as_secs(),
        args.ops_per_sec,
        args.seed
    );
    let _ = writeln!(
        text,
        "cluster: 3 chat nodes ({}) over redis {}; tracker broadcast {b} ms, max silent periods {s}, down {d} ms, permdown {p} ms",
        args.server.display(),
        cluster.redis.url()
    );
    let _ = writeln!(
        text,
        "operations: {} joins, {} leaves, {} status updates, {} messages, {} abrupt disconnects; {} connects ({} reconnects), {} rejoins",
        o.joins, o.leaves, o.statuses, o.messages, o.drops, o.connects, o.reconnects, o.rejoins
    );
    let _ = writeln!(
        text,
        "sockets lost: {}; connect failures: {}; heartbeat timeouts: {}",
        map_text(&book.sockets_lost),
        map_text(&book.connect_failures),
        book.heartbeat_timeouts
    );
    let _ = writeln!(
        text,
        "channel errors: {}; error replies: {}; unparsed frames: {}",
        map_text(&book.channel_errors),
        map_text(&book.reply_errors),
        book.unparsed_frames
    );
    let _ = writeln!(text, "restarts:");
    for e in &events {
        let _ = writeln!(
            text,
            "  +{:.0} s {}: {} ({:.1} s)",
            e.at.as_secs_f64(),
            e.what,
            e.outcome,
            e.down_for.as_secs_f64()
        );
    }
    let _ = writeln!(text, "windows excluded from the message check:");
    for d in &book.disturbances {
        let at = |t: Instant| t.saturating_duration_since(churn_start).as_secs_f64();
        let _ = writeln!(
            text,
            "  {}: +{:.1} s to +{:.1} s",
            d.what,
            at(d.from),
            d.to.map_or(f64::INFINITY, at)
        );
    }
    let _ = writeln!(
        text,
        "node logs (warnings / errors): {}",
        log_counts
            .iter()
            .map(|(n, w, e)| format!("{n} {w}/{e}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(text, "checks:");
    for (name, passed, detail) in &out.checks {
        let _ = writeln!(text, "  {name}: {}", if *passed { "PASS" } else { "FAIL" });
        for line in detail {
            let _ = writeln!(text, "    {line}");
        }
    }
    let all = out.checks.iter().all(|(_, p, _)| *p);
    let _ = writeln!(text, "result: {}", if all { "PASS" } else { "FAIL" });
    out.json.insert("clients".into(), json!(args.clients));
    let object = json!({
        "clients": args.clients,
        "rooms": args.rooms,
        "duration_s": args.duration.as_secs(),
        "ops_per_sec": args.ops_per_sec,
        "seed": args.seed,
        "periods_ms": {"broadcast": b, "down": d, "permdown": p, "max_silent_periods": s},
        "operations": {
            "joins": o.joins, "leaves": o.leaves, "statuses": o.statuses, "messages": o.messages,
            "drops": o.drops, "connects": o.connects, "reconnects": o.reconnects, "rejoins": o.rejoins,
        },
        "sockets_lost": book.sockets_lost,
        "connect_failures": book.connect_failures,
        "heartbeat_timeouts": book.heartbeat_timeouts,
        "channel_errors": book.channel_errors,
        "reply_errors": book.reply_errors,
        "restarts": events.iter().map(|e| json!({"at_s": secs(e.at), "what": e.what, "outcome": e.outcome, "took_s": secs(e.down_for)})).collect::<Vec<_>>(),
        "messages": {
            "sent": book.msgs.len(), "acked": mc.acked, "excluded": mc.excluded,
            "deliveries_due": mc.eligible, "received": mc.received, "lost": mc.lost,
            "duplicates": mc.duplicates, "misrouted": mc.misrouted,
            "receipts": book.receipts.len(), "outside_membership": book.outside_membership,
        },
        "memberships_at_end": members,
        "settled_s": secs(settled_in),
        "rss": rss_json,
        "node_log_warnings": log_counts.iter().map(|(n, w, e)| json!({"node": n, "warn": w, "error": e})).collect::<Vec<_>>(),
        "checks": out.checks.iter().map(|(n, p, d)| json!({"check": n, "passed": p, "detail": d})).collect::<Vec<_>>(),
        "passed": all,
    });
    Ok((if all { 0 } else { 3 }, text, object))
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn map_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{v} x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("soak: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let json_out = args.json;
    let code = runtime.block_on(async move {
        tokio::select! {
            result = soak(args) => match result {
                Ok((code, text, object)) => {
                    print!("{text}");
                    if json_out {
                        println!("{object}");
                    }
                    code
                }
                Err(e) => {
                    eprintln!("soak: {e}");
                    1
                }
            },
            // Dropping the run kills its processes (kill_on_drop).
            _ = tokio::signal::ctrl_c() => {
                eprintln!("soak: interrupted");
                130
            }
        }
    });
    let _ = std::io::stdout().flush();
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incarnation(
        slot: usize,
        name: &str,
        started: Instant,
        samples: &[(u64, u64)],
    ) -> Incarnation {
        Incarnation {
            slot,
            name: name.to_owned(),
            pid: 0,
            started,
            ended: None,
            rss: samples
                .iter()
                .map(|(s, kib)| (started + Duration::from_secs(*s), *kib, 0))
                .collect(),
            heap_file: PathBuf::new(),
            heap: Vec::new(),
            file: Vec::new(),
            final_rss: None,
            quiet_rss: None,
            after_checks_rss: None,
        }
    }

    #[test]
    fn restarted_nodes_are_compared_with_their_slots_first_minute() {
        let t0 = Instant::now();
        let churn = t0 + Duration::from_secs(2);
        let end = churn + Duration::from_secs(600);
        let mut b1 = incarnation(1, "b1", t0, &[(55, 900), (62, 1000), (90, 1100)]);
        b1.ended = Some((churn + Duration::from_secs(100), "SIGTERM".to_owned()));
        // The restart's own first minute is its clients' ramp: 700 KiB, not the steady 1000.
        let b2 = incarnation(
            1,
            "b2",
            churn + Duration::from_secs(100),
            &[(61, 700), (200, 1050)],
        );
        let a1 = incarnation(0, "a1", t0, &[(62, 2000)]);
        let incs = [a1, b1, b2];
        let base = rss_baseline(&incs, &incs[2], churn, end).expect("a baseline");
        assert_eq!((base.from.name.as_str(), base.kib), ("b1", 1000));
        let own = rss_baseline(&incs, &incs[1], churn, end).expect("a baseline");
        assert_eq!((own.from.name.as_str(), own.kib), ("b1", 1000));
        assert_eq!(
            rss_baseline(&incs, &incs[0], churn, end).map(|b| b.kib),
            Some(2000)
        );

        // A slot restarted within the first minute has no steady first minute: the
        // incarnation's own, a minute into its life.
        let mut incs = incs;
        incs[1].ended = Some((churn + Duration::from_secs(50), "SIGKILL".to_owned()));
        let base = rss_baseline(&incs, &incs[2], churn, end).expect("a baseline");
        assert_eq!((base.from.name.as_str(), base.kib), ("b2", 700));
        // No sample before the churn's end: no baseline.
        let base = rss_baseline(&incs, &incs[2], churn, churn + Duration::from_secs(150));
        assert!(base.is_none());
    }

    #[test]
    fn views_follow_phoenix_js() {
        let mut v = View::default();
        v.diff(
            &json!({"joins": {"u1": {"metas": [{"phx_ref": "b", "status": "x"}]}}, "leaves": {}}),
        );
        assert!(v.metas.is_empty(), "held until the state");
        v.state(&json!({"u1": {"metas": [{"phx_ref": "a", "status": "s0"}]}}));
        assert_eq!(listed(&v.metas)["u1"], vec!["s0", "x"]);
        v.diff(&json!({"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": "a"}]}}}));
        assert_eq!(listed(&v.metas)["u1"], vec!["x"]);
        v.diff(&json!({"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": "b"}]}}}));
        assert!(v.metas.is_empty());
    }

    #[test]
    fn compare_names_ghosts_losses_and_metas() {
        let list: Listed = [
            ("u1".to_owned(), vec!["a".to_owned()]),
            ("u2".to_owned(), vec!["b".to_owned(), "b".to_owned()]),
        ]
        .into();
        let expected: BTreeMap<String, String> = [
            ("u2".to_owned(), "b".to_owned()),
            ("u3".to_owned(), "c".to_owned()),
        ]
        .into();
        let problems = compare(&list, &expected);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn deliveries_due_follow_the_rule() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut book = Book::default();
        book.msgs.push(Msg {
            room: 0,
            slot: 0,
            sent: t + s(10),
            acked: Some(t + s(11)),
        });
        let membership = |room, slot, joined, ended| Membership {
            room,
            slot,
            client: 0,
            joined,
            ended,
            cause: "open",
        };
        book.memberships.push(membership(0, 1, t, None));
        book.memberships.push(membership(0, 1, t, Some(t + s(12))));
        book.memberships.push(membership(0, 2, t + s(10), None));
        book.memberships.push(membership(1, 2, t, None));
        let c = check_messages(&mut book);
        assert_eq!((c.eligible, c.lost), (1, 1), "only membership 0 is due");
        assert_eq!(c.lost_pairs, vec![(0, 0)]);
        book.late.push((0, 0, t + s(30)));
        let report = diagnose(&book, &c, t).join("\n");
        assert!(
            report.contains("m0 to room:0 via a sent +10.00 s, acked after 1000 ms: 1 of about 2 members lost it (receivers on a 0, b 1, c 0)"),
            "{report}"
        );
        assert!(
            report.contains(
                "1 received it later outside a membership (up to 20000 ms after sending)"
            ),
            "{report}"
        );
        book.receipts = vec![0, 0];
        let c = check_messages(&mut book);
        assert_eq!((c.lost, c.duplicates), (0, 1));
        book.receipts = vec![0];
        book.disturbances.push(Disturbance {
            what: String::new(),
            slot: Some(1),
            from: t + s(14),
            to: Some(t + s(20)),
        });
        let c = check_messages(&mut book);
        assert_eq!(
            (c.eligible, c.excluded),
            (0, 1),
            "the receiver's node was disturbed"
        );
    }

    #[test]
    fn a_ghost_is_reported_once_with_its_clients_memberships_of_the_room() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut book = Book::default();
        let membership = |room, slot, client, ended, cause| Membership {
            room,
            slot,
            client,
            joined: t + s(10),
            ended,
            cause,
        };
        book.memberships
            .push(membership(1, 1, 225, Some(t + s(40)), "socket lost"));
        book.memberships.push(membership(2, 0, 225, None, "open"));
        book.memberships.push(membership(1, 2, 7, None, "open"));
        let problems = [
            "room:1: ghost u225 [\"s720\"]".to_owned(),
            "room:1: ghost u225 [\"s720\"]".to_owned(),
            "room:3: missing u7".to_owned(),
            "room:1: u8: metas [], expected [\"s1\"]".to_owned(),
        ];
        book.statuses.push(StatusSent {
            room: 1,
            client: 8,
            slot: 2,
            status: "s1".to_owned(),
            event: "status",
            join_ref: Some("3".to_owned()),
            sent: t + s(20),
            reply: Some((t + s(21), true)),
        });
        let out = ghost_histories(&book, problems.iter(), t);
        assert_eq!(
            out,
            [
                "  ghost u225 in room:1: its memberships: slot b +10.00 s to +40.00 s (socket lost)",
                "  missing u7 in room:3: its memberships: none",
                "  wrong meta of u8 in room:1: its memberships: none",
                "    statuses sent: status s1 via slot c join_ref 3 +20.00 s, ok +21.00 s",
            ]
        );
    }

    #[test]
    fn clients_start_in_the_churns_average_number_of_rooms() {
        let mut rng = Rng::new(7);
        let counts: Vec<usize> = (0..10_000)
            .map(|_| initial_rooms(&mut rng, [20, 12, 20, 38, 10], 20).len())
            .collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        // 1 : 5/3 : 25/9 for one, two and three rooms: 2.33 on average.
        assert!((2.28..2.38).contains(&mean), "{mean}");
        assert!(counts.iter().all(|&k| (1..=3).contains(&k)));
        // Never more rooms than there are, and always distinct ones.
        for _ in 0..100 {
            let mut two = initial_rooms(&mut rng, [20, 12, 20, 38, 10], 2);
            two.sort_unstable();
            two.dedup();
            assert!((1..=2).contains(&two.len()));
        }
    }

    #[test]
    fn a_client_is_quiet_only_once_it_has_seen_the_churn_end() {
        let mut core = ClientCore {
            slot: Some(0),
            ..ClientCore::default()
        };
        // Connected, nothing pending, no room: quiet but for the churn's end, unseen.
        assert!(!core.quiet());
        core.churn_seen_over = true;
        assert!(core.quiet());
        core.pending = 1;
        assert!(!core.quiet());
    }

    #[test]
    fn arguments_parse() {
        let args = |s: &str| parse_args(s.split_whitespace().map(str::to_owned).collect());
        let a = args("--duration-secs 60 --clients=10 --json").unwrap();
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.clients, 10);
        assert!(a.json);
        assert!(args("--clients 0").is_err());
        assert!(args("--bogus 1").is_err());
    }
}
