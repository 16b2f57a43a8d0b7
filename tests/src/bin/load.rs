//! A load tool for the chat example: many phoenix.js-like clients in one room.
//!
//! # Usage
//!
//! ```text
//! cargo build --release --example chat -p presence-examples
//! cargo run --release -p presence-tests --bin load -- big-room --clients 3000 \
//!     [--server target/release/examples/chat] [--env KEY=VAL ...] \
//!     [--url ws://127.0.0.1:4000 [--pid <server pid>]] [--topic room:big] \
//!     [--timeout-secs 120] [--connect-concurrency 64] [--sources 16] [--settle-ms 1000] \
//!     [--heartbeat-secs 30] [--drop] [--client-threads N] [--server-log FILE] [--json]
//! ```
//!
//! `tests/load/big-room.sh N` builds both and runs the scenario twice in a row, with the
//! server's default diff window and with `PRESENCE_DIFF_WINDOW_MS=0`.
//!
//! Unless `--url` is given, the tool starts the server itself: the `--server` binary (default
//! `target/release/examples/chat`) with `PORT=0`, `RUST_LOG=warn` and every `--env KEY=VAL`
//! (applied last, so they may override those two), reads its stdout up to
//! `LISTENING <ip>:<port>`, measures it through `/proc/<pid>` and kills it at the end. Its
//! stderr is counted (and copied to `--server-log`). With `--url` (loopback only), the server is
//! measured only when `--pid` names it. The tool only ever connects to loopback addresses; it
//! spreads its clients over `--sources` local addresses 127.0.0.2, 127.0.0.3, ... so that
//! repeated runs never run out of ephemeral ports (TIME_WAIT).
//!
//! # The clients
//!
//! Each client does what phoenix.js does: a websocket to `/socket/websocket?vsn=2.0.0`, V2
//! JSON frames `[join_ref, ref, topic, event, payload]`, a join
//! `["1","1","room:big","phx_join",{"user":"u<i>"}]`, a heartbeat
//! `[null,"<n>","phoenix","heartbeat",{}]` every 30 s (and, like phoenix.js, closing the
//! socket when the previous heartbeat got no reply by the next one), and a presence list kept
//! like phoenix.js's `Presence`: `presence_diff`s received before the first `presence_state`
//! are queued and applied after it, a `presence_state` replaces the list, a diff applies its
//! joins and then its leaves. Unlike phoenix.js, a client never reconnects nor rejoins: a
//! socket the server closes, a channel error (`phx_error`, `phx_close`), a refused join or a
//! heartbeat timeout makes it *lost*, and that is counted and reported.
//!
//! At most `--connect-concurrency` clients (default 64) are between their TCP connect and
//! their join reply at any time. Keep it under the server's listen backlog (128 for poem's
//! `TcpListener`, as for std and tokio): beyond it the accept queue overflows, the kernel drops
//! SYNs, and each dropped one costs its client a 1 s retransmit, which then dominates the
//! phase 1 time (see "listen overflows" below; 256 in flight made a 1000-client phase 1 take
//! 1.15 s instead of 0.23 s).
//!
//! # The scenario (`big-room`)
//!
//! - **Phase 1**: the N clients connect and join the topic at full speed. It ends when every
//!   client lists every key, or after `--timeout-secs` (default 120).
//! - Then the tool waits `--settle-ms` (default 1000) and counts what still arrives.
//! - **Phase 2** (only when phase 1 converged): clients `0..N/2` close at once (a close frame,
//!   or with `--drop` just their TCP connection). It ends when every remaining client lists
//!   exactly the remaining keys, or after the timeout.
//!
//! The *target* of a phase is the set of keys of the clients that should be present: all N
//! in phase 1, `N/2..N` in phase 2, minus the keys of lost clients (their presence leaves the
//! server too). A client has *converged* when its list is exactly the target; a phase has
//! converged when every client that is still expected (not lost, not closed on purpose) has.
//! Without lost clients this is exactly "every client lists all N keys" (phase 1) and "every
//! remaining client lists exactly the N/2 remaining keys" (phase 2).
//!
//! # The figures, per phase
//!
//! - **converged in**: from the first connect (phase 1) or the close signal (phase 2) to the
//!   moment the last expected client converged; phase 1 also gives the time from the last
//!   join reply to that moment. On a timeout: how many clients had converged.
//! - **keys listed / client**: min / mean / max over the expected clients at the phase end.
//! - **connect latency**: from the start of the TCP connect to the end of the websocket
//!   handshake; **join latency**: from sending `phx_join` to its reply (ms; phase 1).
//! - **frames / client**: text and binary frames received in the phase (min / mean / max over
//!   the phase's clients: all N in phase 1, the remaining ones in phase 2), all of them and
//!   the presence ones (`presence_state` + `presence_diff`). **bytes / client**: their
//!   payload bytes (mean / max). The phase's counters stop at its end; what arrives while
//!   settling is reported on its own line.
//! - **closed by the server**: sockets that got a close frame from the server (by close code),
//!   or EOF / an error while not closing on purpose. **channel errors**: `phx_error` or
//!   `phx_close` on the topic, by payload. **heartbeat timeouts**, **connect failures**,
//!   **joins refused**: other ways to lose a client. A client is counted once, under the
//!   first way it was lost (a channel error then a close counts as a channel error).
//! - **server CPU**: user + system CPU seconds of the server process during the phase
//!   (`/proc/<pid>/stat`, in `getconf CLK_TCK` ticks). **server peak RSS**: `VmHWM` at the end of
//!   the phase; the tool resets it at the start of each phase (`/proc/<pid>/clear_refs`), and
//!   says "since start" when that was refused. **client CPU**: this process's CPU seconds in
//!   the phase: the clients share the machine with the server, so their parsing is part of
//!   what is measured. **client peak RSS**: this process's `VmHWM` since it started.
//! - **server log lines**: lines the server wrote on stderr during the phase (warnings, with
//!   the default `RUST_LOG=warn`).
//! - **listen overflows (system)**: how much `TcpExt: ListenOverflows` of `/proc/net/netstat`
//!   grew during the phase: connection attempts dropped because an accept queue was full
//!   (system-wide, so only meaningful on an otherwise quiet machine). Each one delays its
//!   client's connect by a 1 s SYN retransmit, which shows in the connect latency.
//!
//! - **unparsed frames / bad keys**: frames that are not V2 JSON arrays of 5 elements, and
//!   presence keys that are not `u<i>` with `i < N`; both should stay 0.
//!
//! # Verdicts and exit status
//!
//! A phase *converged* (JSON `"converged": true`) when every client of the phase converged on
//! the full target, none lost. When clients were lost but the rest converged on the keys
//! left, the text says "NOT converged: only K of N clients are left" with the time it took,
//! and the JSON has `"converged": false, "remaining_converged": true, "lost_clients": ...`.
//! `"status"` is `converged`, `timeout`, `server exited (...)` or `interrupted` (Ctrl-C).
//!
//! Exit status: 0 when both phases converged, 3 when one did not (the report is printed
//! either way), 1 when the server could not be started or reached, 2 on a usage error.
//!
//! With `--json`, one JSON object line on stdout, after the text report, carries the same
//! figures (durations in seconds, `null` when unknown); progress lines go to stderr.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use presence_tests::procfs::status_kib;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

type Ws = WebSocketStream<TcpStream>;

/// The join's `join_ref` and `ref`.
const JOIN_REF: &str = "1";
/// Socket path and serializer, as phoenix.js asks for them.
const SOCKET_PATH: &str = "/socket/websocket?vsn=2.0.0";
/// How long a client's TCP connect and websocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client closing on purpose waits for the server's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to print its `LISTENING` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Server stderr lines kept for the report.
const LOG_LINES_KEPT: usize = 5;

const USAGE: &str = "\
usage: load big-room --clients N [options]

  --clients N               clients joining the room (required)
  --server PATH             chat server binary (default target/release/examples/chat)
  --env KEY=VAL             environment for the server (repeatable)
  --url ws://HOST:PORT      use a running server (loopback only) instead of starting one
  --pid PID                 with --url: the server's pid, to measure its CPU and RSS
  --topic TOPIC             topic to join (default room:big)
  --timeout-secs S          per-phase deadline (default 120)
  --connect-concurrency K   clients between connect and join reply at once (default 64)
  --sources K               local addresses 127.0.0.2.. to connect from (default 16)
  --settle-ms MS            pause between the phases (default 1000)
  --heartbeat-secs S        heartbeat interval (default 30, as phoenix.js)
  --drop                    phase 2: drop the TCP connections instead of sending close frames
  --client-threads K        tokio worker threads of this process (default: one per core)
  --server-log FILE         copy the server's stderr to FILE
  --json                    also print one JSON object line on stdout
";

// ---------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    clients: usize,
    server: Option<PathBuf>,
    envs: Vec<(String, String)>,
    url: Option<String>,
    pid: Option<u32>,
    topic: String,
    timeout: Duration,
    connect_concurrency: usize,
    sources: u8,
    settle: Duration,
    heartbeat: Duration,
    drop_tcp: bool,
    client_threads: Option<usize>,
    server_log: Option<PathBuf>,
    json: bool,
}

fn parse_args(raw: Vec<String>) -> Result<Args, String> {
    let mut it = raw.into_iter();
    match it.next().as_deref() {
        Some("big-room") => {}
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown scenario {other:?} (expected big-room)")),
    }
    let mut args = Args {
        clients: 0,
        server: None,
        envs: Vec::new(),
        url: None,
        pid: None,
        topic: "room:big".to_owned(),
        timeout: Duration::from_secs(120),
        connect_concurrency: 64,
        sources: 16,
        settle: Duration::from_millis(1000),
        heartbeat: Duration::from_secs(30),
        drop_tcp: false,
        client_threads: None,
        server_log: None,
        json: false,
    };
    fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{name} expects a number, got {v:?}"))
    }
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let flag = |inline: &Option<String>| -> Result<(), String> {
            match inline {
                Some(_) => Err(format!("{name} takes no value")),
                None => Ok(()),
            }
        };
        match name.as_str() {
            "--json" => {
                flag(&inline)?;
                args.json = true;
                continue;
            }
            "--drop" => {
                flag(&inline)?;
                args.drop_tcp = true;
                continue;
            }
            "-h" | "--help" => return Err(String::new()),
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} expects a value"))?,
        };
        match name.as_str() {
            "--clients" => args.clients = number(&name, &value)?,
            "--server" => args.server = Some(PathBuf::from(value)),
            "--env" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("--env expects KEY=VAL, got {value:?}"))?;
                args.envs.push((k.to_owned(), v.to_owned()));
            }
            "--url" => args.url = Some(value),
            "--pid" => args.pid = Some(number(&name, &value)?),
            "--topic" => args.topic = value,
            "--timeout-secs" => args.timeout = Duration::from_secs_f64(number(&name, &value)?),
            "--connect-concurrency" => args.connect_concurrency = number(&name, &value)?,
            "--sources" => args.sources = number(&name, &value)?,
            "--settle-ms" => args.settle = Duration::from_millis(number(&name, &value)?),
            "--heartbeat-secs" => {
                args.heartbeat = Duration::from_secs_f64(number(&name, &value)?);
            }
            "--client-threads" => args.client_threads = Some(number(&name, &value)?),
            "--server-log" => args.server_log = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {name:?}")),
        }
    }
    if args.clients == 0 {
        return Err("--clients N (N >= 1) is required".to_owned());
    }
    if args.clients > u32::MAX as usize / 2 {
        return Err("--clients is too large".to_owned());
    }
    if args.connect_concurrency == 0 {
        return Err("--connect-concurrency must be at least 1".to_owned());
    }
    if !(1..=200).contains(&args.sources) {
        return Err("--sources must be 1 to 200".to_owned());
    }
    if args.timeout.is_zero() || args.heartbeat.is_zero() {
        return Err("--timeout-secs and --heartbeat-secs must be positive".to_owned());
    }
    if args.client_threads == Some(0) {
        return Err("--client-threads must be at least 1".to_owned());
    }
    if args.url.is_some() && (args.server.is_some() || !args.envs.is_empty()) {
        return Err("--url uses a running server: --server and --env do not apply".to_owned());
    }
    if args.url.is_none() && args.pid.is_some() {
        return Err("--pid only applies with --url".to_owned());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// Frames: parsed in one pass, presence payloads without building JSON trees.

/// The keys of a presence map (`{key: {"metas": [...]}, ...}`): the `i` of each `u<i>`, the
/// metas skipped unparsed.
#[derive(Debug, Default)]
struct Keys {
    ids: Vec<u32>,
    /// Keys that are not `u<number>`.
    unknown: u32,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<u32>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<u32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a presence key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<u32>, E> {
        Ok(key
            .strip_prefix('u')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok()))
    }
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = Keys;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of presences")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Keys {
                    ids: Vec::with_capacity(map.size_hint().unwrap_or(0)),
                    unknown: 0,
                };
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    map.next_value::<IgnoredAny>()?;
                    match key {
                        Some(id) => keys.ids.push(id),
                        None => keys.unknown += 1,
                    }
                }
                Ok(keys)
            }
        }
        d.deserialize_map(KeysVisitor)
    }
}

#[derive(Debug, Deserialize)]
struct DiffPayload {
    #[serde(default)]
    joins: Keys,
    #[serde(default)]
    leaves: Keys,
}

#[derive(Debug, Deserialize)]
struct ReplyPayload<'a> {
    status: &'a str,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

/// What a received text frame means to a client.
#[derive(Debug)]
enum Event {
    /// The join reply: `Err` carries the refusal.
    JoinReply(Result<(), String>),
    /// A reply on the `phoenix` topic, with its ref.
    HeartbeatReply(Option<String>),
    State(Keys),
    Diff {
        joins: Keys,
        leaves: Keys,
    },
    /// `phx_error` or `phx_close` on the topic: the channel is gone.
    ChannelError(String),
    Other,
}

/// Parses one V2 frame, deserializing the payload straight into what its event needs.
struct FrameSeed<'t> {
    topic: &'t str,
}

impl<'de> DeserializeSeed<'de> for FrameSeed<'_> {
    type Value = Event;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        d.deserialize_seq(self)
    }
}

fn element<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    index: usize,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(index, &"a V2 frame of 5 elements"))
}

impl<'de> Visitor<'de> for FrameSeed<'_> {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a V2 frame [join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Event, A::Error> {
        let _join_ref: Option<&'de str> = element(&mut seq, 0)?;
        let msg_ref: Option<&'de str> = element(&mut seq, 1)?;
        let topic: &'de str = element(&mut seq, 2)?;
        let event: &'de str = element(&mut seq, 3)?;
        let parsed = if topic == self.topic {
            match event {
                "presence_state" => Event::State(element(&mut seq, 4)?),
                "presence_diff" => {
                    let diff: DiffPayload = element(&mut seq, 4)?;
                    Event::Diff {
                        joins: diff.joins,
                        leaves: diff.leaves,
                    }
                }
                "phx_reply" if msg_ref == Some(JOIN_REF) => {
                    let reply: ReplyPayload<'de> = element(&mut seq, 4)?;
                    Event::JoinReply(if reply.status == "ok" {
                        Ok(())
                    } else {
                        let response = reply.response.map_or("", RawValue::get);
                        Err(format!("{}: {}", reply.status, shorten(response)))
                    })
                }
                "phx_error" | "phx_close" => {
                    let payload: &'de RawValue = element(&mut seq, 4)?;
                    Event::ChannelError(format!("{event} {}", shorten(payload.get())))
                }
                _ => {
                    element::<IgnoredAny, _>(&mut seq, 4)?;
                    Event::Other
                }
            }
        } else {
            element::<IgnoredAny, _>(&mut seq, 4)?;
            if topic == "phoenix" && event == "phx_reply" {
                Event::HeartbeatReply(msg_ref.map(str::to_owned))
            } else {
                Event::Other
            }
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(6, &"a V2 frame of 5 elements"));
        }
        Ok(parsed)
    }
}

fn parse_frame(text: &str, topic: &str) -> Result<Event, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let event = FrameSeed { topic }.deserialize(&mut de)?;
    de.end()?;
    Ok(event)
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

// ---------------------------------------------------------------------------------------
// The clients' presence lists and the convergence bookkeeping.

/// One client's presence list, as a bitset of the `i` of its keys `u<i>`.
///
/// Key-level set semantics are exact in this scenario: every user (`u<i>`, one per client)
/// has exactly one meta and never rejoins nor updates it, so a key's join always adds its
/// only meta and a key's leave always removes it, as phoenix.js's meta-level (`phx_ref`)
/// bookkeeping would. (With a leave and a join of the same key in one diff, e.g. a meta
/// update, phoenix.js would keep the key where this drops it; that never happens here.)
#[derive(Debug)]
struct ClientList {
    bits: Vec<u64>,
    /// Keys listed.
    listed: u32,
    /// Keys listed that are in the target.
    in_target: u32,
    /// Whether the first `presence_state` arrived.
    state_seen: bool,
    /// Diffs received before the first `presence_state`, applied after it.
    pending: Vec<(Keys, Keys)>,
    /// Counts toward convergence (not lost, not closed on purpose).
    expected: bool,
    converged: bool,
}

impl ClientList {
    fn insert(&mut self, target: &[u64], k: usize) {
        let (w, b) = (k / 64, 1u64 << (k % 64));
        if self.bits[w] & b == 0 {
            self.bits[w] |= b;
            self.listed += 1;
            if target[w] & b != 0 {
                self.in_target += 1;
            }
        }
    }

    fn remove(&mut self, target: &[u64], k: usize) {
        let (w, b) = (k / 64, 1u64 << (k % 64));
        if self.bits[w] & b != 0 {
            self.bits[w] &= !b;
            self.listed -= 1;
            if target[w] & b != 0 {
                self.in_target -= 1;
            }
        }
    }
}

/// Counters of one phase (or of the pause between the phases).
#[derive(Debug, Default)]
struct Counters {
    frames: Vec<u32>,
    presence_frames: Vec<u32>,
    bytes: Vec<u64>,
    total_frames: u64,
    total_presence_frames: u64,
    closed_by_server: BTreeMap<String, usize>,
    channel_errors: BTreeMap<String, usize>,
    connect_failures: BTreeMap<String, usize>,
    joins_refused: BTreeMap<String, usize>,
    heartbeat_timeouts: usize,
    connect_latencies: Vec<Duration>,
    join_latencies: Vec<Duration>,
    unparsed_frames: usize,
    unknown_keys: u64,
}

impl Counters {
    fn new(n: usize) -> Counters {
        Counters {
            frames: vec![0; n],
            presence_frames: vec![0; n],
            bytes: vec![0; n],
            ..Counters::default()
        }
    }

    fn lost(&self) -> usize {
        let sum = |m: &BTreeMap<String, usize>| m.values().sum::<usize>();
        sum(&self.closed_by_server)
            + sum(&self.channel_errors)
            + sum(&self.connect_failures)
            + sum(&self.joins_refused)
            + self.heartbeat_timeouts
    }
}

/// Why a client stopped counting.
#[derive(Debug)]
enum Loss {
    ServerClosed(String),
    ChannelError(String),
    ConnectFailed(String),
    JoinRefused(String),
    HeartbeatTimeout,
}

/// Every client's list, the target, and the counters; behind one lock.
#[derive(Debug)]
struct World {
    n: usize,
    target: Vec<u64>,
    target_len: u32,
    clients: Vec<ClientList>,
    expected: usize,
    converged: usize,
    /// Whether the current phase watches for convergence.
    armed: bool,
    converged_at: Option<Instant>,
    joined: usize,
    last_join_reply: Option<Instant>,
    counters: Counters,
    /// Set once the run is over: what happens to the sockets then is not counted.
    ended: bool,
    done: Arc<Notify>,
}

impl World {
    fn new(n: usize, done: Arc<Notify>) -> World {
        let words = n.div_ceil(64);
        let mut target = vec![0u64; words];
        for k in 0..n {
            target[k / 64] |= 1 << (k % 64);
        }
        let clients = (0..n)
            .map(|_| ClientList {
                bits: vec![0; words],
                listed: 0,
                in_target: 0,
                state_seen: false,
                pending: Vec::new(),
                expected: true,
                converged: false,
            })
            .collect();
        World {
            n,
            target,
            target_len: n as u32,
            clients,
            expected: n,
            converged: 0,
            armed: false,
            converged_at: None,
            joined: 0,
            last_join_reply: None,
            counters: Counters::new(n),
            ended: false,
            done,
        }
    }

    fn refresh(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let now =
            c.expected && c.state_seen && c.in_target == self.target_len && c.listed == c.in_target;
        if now != c.converged {
            c.converged = now;
            if now {
                self.converged += 1;
            } else {
                self.converged -= 1;
            }
        }
    }

    fn refresh_all(&mut self) {
        for i in 0..self.n {
            self.refresh(i);
        }
    }

    fn check_done(&mut self) {
        if self.armed && self.converged_at.is_none() && self.converged == self.expected {
            self.converged_at = Some(Instant::now());
            self.done.notify_one();
        }
    }

    fn unexpect(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if !c.expected {
            return;
        }
        c.expected = false;
        if c.converged {
            c.converged = false;
            self.converged -= 1;
        }
        self.expected -= 1;
    }

    /// Takes key `k` out of the target: its client is gone, so its presence leaves.
    fn untarget(&mut self, k: usize) {
        let (w, b) = (k / 64, 1u64 << (k % 64));
        if self.target[w] & b == 0 {
            return;
        }
        self.target[w] &= !b;
        self.target_len -= 1;
        for c in &mut self.clients {
            if c.bits[w] & b != 0 {
                c.in_target -= 1;
            }
        }
        self.refresh_all();
    }

    /// Takes the keys `range` out of the target at once (phase 2).
    fn untarget_range(&mut self, range: Range<usize>) {
        for k in range {
            self.target[k / 64] &= !(1 << (k % 64));
        }
        self.target_len = self.target.iter().map(|w| w.count_ones()).sum();
        for c in &mut self.clients {
            c.in_target = c
                .bits
                .iter()
                .zip(&self.target)
                .map(|(b, t)| (b & t).count_ones())
                .sum();
        }
        self.refresh_all();
    }

    /// Counts client `i` as lost (once: only while it is expected) and takes its key out of
    /// the target.
    fn lose(&mut self, i: usize, loss: Loss) {
        if self.ended || !self.clients[i].expected {
            return;
        }
        let c = &mut self.counters;
        match loss {
            Loss::ServerClosed(code) => *c.closed_by_server.entry(code).or_default() += 1,
            Loss::ChannelError(why) => *c.channel_errors.entry(why).or_default() += 1,
            Loss::ConnectFailed(why) => *c.connect_failures.entry(why).or_default() += 1,
            Loss::JoinRefused(why) => *c.joins_refused.entry(why).or_default() += 1,
            Loss::HeartbeatTimeout => c.heartbeat_timeouts += 1,
        }
        self.unexpect(i);
        self.untarget(i);
        self.check_done();
    }

    fn count_frame(&mut self, i: usize, bytes: usize, presence: bool) {
        let c = &mut self.counters;
        c.frames[i] += 1;
        c.bytes[i] += bytes as u64;
        c.total_frames += 1;
        if presence {
            c.presence_frames[i] += 1;
            c.total_presence_frames += 1;
        }
    }

    fn known(&mut self, keys: Keys) -> Vec<u32> {
        let n = self.n as u32;
        let mut ids = keys.ids;
        let before = ids.len();
        ids.retain(|&k| k < n);
        self.counters.unknown_keys += u64::from(keys.unknown) + (before - ids.len()) as u64;
        ids
    }

    fn apply_diff_now(&mut self, i: usize, joins: Keys, leaves: Keys) {
        let joins = self.known(joins);
        let leaves = self.known(leaves);
        let (c, target) = (&mut self.clients[i], &self.target);
        for k in joins {
            c.insert(target, k as usize);
        }
        for k in leaves {
            c.remove(target, k as usize);
        }
    }

    fn apply_state(&mut self, i: usize, keys: Keys) {
        let keys = self.known(keys);
        let (c, target) = (&mut self.clients[i], &self.target);
        c.bits.fill(0);
        c.listed = 0;
        c.in_target = 0;
        for k in keys {
            c.insert(target, k as usize);
        }
        c.state_seen = true;
        for (joins, leaves) in std::mem::take(&mut c.pending) {
            self.apply_diff_now(i, joins, leaves);
        }
        self.refresh(i);
        self.check_done();
    }

    fn apply_diff(&mut self, i: usize, joins: Keys, leaves: Keys) {
        if !self.clients[i].state_seen {
            self.clients[i].pending.push((joins, leaves));
            return;
        }
        self.apply_diff_now(i, joins, leaves);
        self.refresh(i);
        self.check_done();
    }

    fn take_counters(&mut self) -> Counters {
        std::mem::replace(&mut self.counters, Counters::new(self.n))
    }
}

// ---------------------------------------------------------------------------------------
// The clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    /// Clients `0..half` close.
    CloseHalf,
    Stop,
}

#[derive(Debug)]
struct Shared {
    world: Mutex<World>,
    connect: Semaphore,
    addr: SocketAddr,
    url: String,
    topic: String,
    sources: u8,
    heartbeat: Duration,
    drop_tcp: bool,
    half: usize,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn client_config() -> WebSocketConfig {
    // Small buffers: this process may hold 10k sockets.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn connect(shared: &Shared, i: usize) -> Result<Ws, String> {
    let socket = match shared.addr.ip() {
        IpAddr::V4(_) => {
            let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
            // 127.0.0.2, 127.0.0.3, ...: each source address has its own ephemeral ports.
            let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(shared.sources)) as u8);
            socket
                .bind(SocketAddr::from((source, 0)))
                .map_err(|e| format!("bind {source}: {e}"))?;
            socket
        }
        IpAddr::V6(_) => TcpSocket::new_v6().map_err(|e| format!("socket: {e}"))?,
    };
    let tcp = socket
        .connect(shared.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = client_async_with_config(shared.url.as_str(), tcp, Some(client_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

async fn client(i: usize, shared: Arc<Shared>, mut control: watch::Receiver<Control>) {
    let permit = tokio::select! {
        permit = shared.connect.acquire() => permit,
        _ = control.changed() => return,
    };
    let Ok(permit) = permit else { return };
    let started = Instant::now();
    let connected = tokio::select! {
        c = tokio::time::timeout(CONNECT_TIMEOUT, connect(&shared, i)) => c,
        _ = control.changed() => return,
    };
    let mut ws = match connected {
        Ok(Ok(ws)) => {
            shared
                .world()
                .counters
                .connect_latencies
                .push(started.elapsed());
            ws
        }
        Ok(Err(e)) => {
            shared.world().lose(i, Loss::ConnectFailed(shorten(&e)));
            return;
        }
        Err(_) => {
            let why = format!("timed out after {} s", CONNECT_TIMEOUT.as_secs());
            shared.world().lose(i, Loss::ConnectFailed(why));
            return;
        }
    };
    let join = format!(
        r#"["{JOIN_REF}","{JOIN_REF}","{}","phx_join",{{"user":"u{i}"}}]"#,
        shared.topic
    );
    let join_sent = Instant::now();
    if let Err(e) = ws.send(Message::text(join)).await {
        let why = format!("send join: {}", shorten(&e.to_string()));
        shared.world().lose(i, Loss::ConnectFailed(why));
        return;
    }
    let mut permit = Some(permit);
    let start = tokio::time::Instant::now() + shared.heartbeat;
    let mut heartbeat = tokio::time::interval_at(start, shared.heartbeat);
    // Like phoenix.js's timer, re-armed after each heartbeat: a late tick is not doubled.
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ref: u64 = 1;
    let mut pending_heartbeat: Option<String> = None;
    let mut closing = false;
    let mut close_deadline = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    let parsed = parse_frame(text, &shared.topic);
                    let mut world = shared.world();
                    let presence = matches!(parsed, Ok(Event::State(_) | Event::Diff { .. }));
                    if !closing {
                        world.count_frame(i, text.len(), presence);
                    }
                    match parsed {
                        Ok(Event::State(keys)) => world.apply_state(i, keys),
                        Ok(Event::Diff { joins, leaves }) => world.apply_diff(i, joins, leaves),
                        Ok(Event::JoinReply(Ok(()))) => {
                            let now = Instant::now();
                            world.joined += 1;
                            world.last_join_reply = Some(now);
                            world.counters.join_latencies.push(now - join_sent);
                            permit = None;
                        }
                        Ok(Event::JoinReply(Err(why))) => {
                            world.lose(i, Loss::JoinRefused(why));
                            break;
                        }
                        Ok(Event::HeartbeatReply(r)) => {
                            if r.is_some() && r == pending_heartbeat {
                                pending_heartbeat = None;
                            }
                        }
                        Ok(Event::ChannelError(why)) => world.lose(i, Loss::ChannelError(why)),
                        Ok(Event::Other) => {}
                        Err(_) => world.counters.unparsed_frames += 1,
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if !closing {
                        shared.world().count_frame(i, bytes.len(), false);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if !closing {
                        let code = frame.map_or_else(
                            || "close without code".to_owned(),
                            |f| u16::from(f.code).to_string(),
                        );
                        shared.world().lose(i, Loss::ServerClosed(code));
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if !closing {
                        let why = format!("error: {}", shorten(&e.to_string()));
                        shared.world().lose(i, Loss::ServerClosed(why));
                    }
                    break;
                }
                None => {
                    if !closing {
                        shared.world().lose(i, Loss::ServerClosed("eof".to_owned()));
                    }
                    break;
                }
            },
            _ = heartbeat.tick(), if !closing => {
                if pending_heartbeat.is_some() {
                    // phoenix.js: no reply since the last heartbeat, close (and reconnect).
                    shared.world().lose(i, Loss::HeartbeatTimeout);
                    closing = true;
                    close_deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "heartbeat timeout".into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    continue;
                }
                next_ref += 1;
                let r = next_ref.to_string();
                let frame = format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#);
                pending_heartbeat = Some(r);
                let _ = ws.send(Message::text(frame)).await;
            },
            changed = control.changed(), if !closing => {
                let value = match changed {
                    Ok(()) => *control.borrow_and_update(),
                    Err(_) => Control::Stop,
                };
                match value {
                    Control::Stop => break,
                    Control::CloseHalf if i < shared.half => {
                        closing = true;
                        permit = None;
                        if shared.drop_tcp {
                            break;
                        }
                        close_deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
                        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                        let _ = ws.send(Message::Close(Some(frame))).await;
                    }
                    Control::CloseHalf | Control::Run => {}
                }
            },
            _ = tokio::time::sleep_until(close_deadline), if closing => break,
        }
    }
    drop(permit);
}

// ---------------------------------------------------------------------------------------
// The server process and /proc

#[derive(Debug, Default)]
struct ServerLog {
    lines: u64,
    first: Vec<String>,
}

#[derive(Debug)]
struct Server {
    child: Option<Child>,
    pid: Option<u32>,
    addr: SocketAddr,
    label: String,
    log: Arc<Mutex<ServerLog>>,
}

/// A server log line without colours nor its leading timestamp, shortened.
fn clean_log_line(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI sequence: ESC [ parameters final-letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(ch);
        }
    }
    let trimmed = plain.trim();
    let without_time = match trimmed.split_once(' ') {
        Some((first, rest)) if first.ends_with('Z') && first.contains('T') => rest.trim_start(),
        _ => trimmed,
    };
    shorten(without_time)
}

fn default_server_path() -> PathBuf {
    let local = PathBuf::from("target/release/examples/chat");
    if local.exists() {
        return local;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/examples/chat");
    if workspace.exists() { workspace } else { local }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

async fn start_server(args: &Args) -> Result<Server, String> {
    let path = args.server.clone().unwrap_or_else(default_server_path);
    if !path.is_file() {
        return Err(format!(
            "no server binary at {}: run `cargo build --release --example chat -p presence-examples` first (or pass --server PATH)",
            path.display()
        ));
    }
    let mut command = Command::new(&path);
    command
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .envs(args.envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let pid = child.id();
    let log = Arc::new(Mutex::new(ServerLog::default()));
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        let mut file = match &args.server_log {
            Some(p) => Some(
                std::fs::File::create(p)
                    .map_err(|e| format!("cannot create {}: {e}", p.display()))?,
            ),
            None => None,
        };
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(f) = &mut file {
                    let _ = writeln!(f, "{line}");
                }
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                log.lines += 1;
                if log.first.len() < LOG_LINES_KEPT {
                    let line = clean_log_line(&line);
                    if !log.first.contains(&line) {
                        log.first.push(line);
                    }
                }
            }
        });
    }
    let Some(stdout) = child.stdout.take() else {
        return Err("the server's stdout is not piped".to_owned());
    };
    let mut lines = BufReader::new(stdout).lines();
    let listening = tokio::time::timeout(LISTEN_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                return Some(addr.trim().to_owned());
            }
        }
        None
    })
    .await;
    let addr = match listening {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let first = log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first
                .join("\n  ");
            return Err(format!(
                "the server exited before printing LISTENING ({}); its stderr:\n  {first}",
                match status {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "status unknown".to_owned(),
                }
            ));
        }
        Err(_) => {
            return Err(format!(
                "the server printed no LISTENING line within {} s",
                LISTEN_TIMEOUT.as_secs()
            ));
        }
    };
    // Drain whatever else it prints.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("cannot parse the server's address {addr:?}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    if !is_loopback(addr.ip()) {
        return Err(format!(
            "the server listens on {addr}, not on loopback: this tool only connects to loopback"
        ));
    }
    Ok(Server {
        child: Some(child),
        pid,
        addr,
        label: path.display().to_string(),
        log,
    })
}

async fn use_running_server(url: &str, pid: Option<u32>) -> Result<Server, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url must start with ws://, got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if path.len() > 1 {
        return Err(format!(
            "--url takes ws://HOST:PORT only (the path is {SOCKET_PATH}), got {url:?}"
        ));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("cannot resolve {authority:?}: {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .copied()
        .find(|a| is_loopback(a.ip()))
        .ok_or_else(|| {
            format!("{authority} is not a loopback address: this tool only connects to loopback")
        })?;
    Ok(Server {
        child: None,
        pid,
        addr,
        label: url.to_owned(),
        log: Arc::new(Mutex::new(ServerLog::default())),
    })
}

impl Server {
    fn log_lines(&self) -> Option<u64> {
        self.child.as_ref()?;
        Some(
            self.log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .lines,
        )
    }

    /// `Some(status)` once the server we started has exited.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of `/proc/<who>/stat`, in clock ticks.
fn cpu_ticks(who: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resets the peak RSS (`VmHWM`) of `pid`; `false` when not allowed.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// `TcpExt: ListenOverflows` of `/proc/net/netstat` (system-wide): SYNs dropped because an
/// accept queue was full. Each costs its client a 1 s SYN retransmit.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let at = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Phases and the report

#[derive(Debug, Clone, Copy)]
struct Stats {
    min: f64,
    mean: f64,
    max: f64,
}

fn stats(values: impl Iterator<Item = f64>) -> Option<Stats> {
    let mut count = 0usize;
    let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
    for v in values {
        count += 1;
        min = min.min(v);
        max = max.max(v);
        sum += v;
    }
    (count > 0).then(|| Stats {
        min,
        mean: sum / count as f64,
        max,
    })
}

fn stats_json(s: Option<Stats>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({"min": s.min, "mean": s.mean, "max": s.max}),
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Converged,
    Timeout,
    ServerExited(String),
    Interrupted,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Converged => f.write_str("converged"),
            Status::Timeout => f.write_str("timeout"),
            Status::ServerExited(s) => write!(f, "server exited ({s})"),
            Status::Interrupted => f.write_str("interrupted"),
        }
    }
}

#[derive(Debug)]
struct PhaseReport {
    name: &'static str,
    status: Status,
    /// Until convergence, or until the phase gave up.
    elapsed: Duration,
    since_last_join: Option<Duration>,
    clients: usize,
    expected: usize,
    converged: usize,
    target_keys: u32,
    keys_listed: Option<Stats>,
    connect_latency_ms: Option<Stats>,
    join_latency_ms: Option<Stats>,
    frames: Option<Stats>,
    presence_frames: Option<Stats>,
    bytes: Option<Stats>,
    counters: Counters,
    server_cpu_s: Option<f64>,
    server_peak_rss_kib: Option<u64>,
    peak_since_start: bool,
    server_rss_kib: Option<u64>,
    client_cpu_s: Option<f64>,
    client_peak_rss_kib: Option<u64>,
    server_log_lines: Option<u64>,
    listen_overflows: Option<u64>,
}

/// Measures a phase from outside: CPU, peak RSS and log lines.
#[derive(Debug)]
struct Meter {
    pid: Option<u32>,
    ticks: f64,
    server_cpu: Option<u64>,
    client_cpu: Option<u64>,
    log_lines: Option<u64>,
    peak_reset: bool,
    listen_overflows: Option<u64>,
}

impl Meter {
    fn start(server: &Server, ticks: f64) -> Meter {
        let pid = server.pid;
        let peak_reset = pid.is_some_and(reset_peak_rss);
        Meter {
            pid,
            ticks,
            server_cpu: pid.and_then(|p| cpu_ticks(&p.to_string())),
            client_cpu: cpu_ticks("self"),
            log_lines: server.log_lines(),
            peak_reset,
            listen_overflows: listen_overflows(),
        }
    }

    fn cpu(&self, before: Option<u64>, who: &str) -> Option<f64> {
        let after = cpu_ticks(who)?;
        Some(after.saturating_sub(before?) as f64 / self.ticks)
    }
}

#[allow(clippy::too_many_arguments)]
fn phase_report(
    name: &'static str,
    status: Status,
    elapsed: Duration,
    range: Range<usize>,
    world: &mut World,
    meter: &Meter,
    server: &Server,
    phase_start: Instant,
) -> PhaseReport {
    let counters = world.take_counters();
    let since_last_join = match (&status, world.converged_at, world.last_join_reply) {
        (Status::Converged, Some(at), Some(last)) if name == "phase 1" && last >= phase_start => {
            Some(at.saturating_duration_since(last))
        }
        _ => None,
    };
    let keys_listed = stats(
        world.clients[range.clone()]
            .iter()
            .filter(|c| c.expected)
            .map(|c| f64::from(c.listed)),
    );
    let frames = stats(counters.frames[range.clone()].iter().map(|&v| f64::from(v)));
    let presence_frames = stats(
        counters.presence_frames[range.clone()]
            .iter()
            .map(|&v| f64::from(v)),
    );
    let bytes = stats(counters.bytes[range.clone()].iter().map(|&v| v as f64));
    let ms = |v: &[Duration]| stats(v.iter().map(|d| d.as_secs_f64() * 1e3));
    let connect_latency_ms = ms(&counters.connect_latencies);
    let join_latency_ms = ms(&counters.join_latencies);
    let pid_s = meter.pid.map(|p| p.to_string());
    PhaseReport {
        name,
        status,
        elapsed,
        since_last_join,
        clients: range.len(),
        expected: world.expected,
        converged: world.converged,
        target_keys: world.target_len,
        keys_listed,
        connect_latency_ms,
        join_latency_ms,
        frames,
        presence_frames,
        bytes,
        counters,
        server_cpu_s: pid_s
            .as_deref()
            .and_then(|p| meter.cpu(meter.server_cpu, p)),
        server_peak_rss_kib: meter.pid.and_then(|p| status_kib(p, "VmHWM:")),
        peak_since_start: !meter.peak_reset,
        server_rss_kib: meter.pid.and_then(|p| status_kib(p, "VmRSS:")),
        client_cpu_s: meter.cpu(meter.client_cpu, "self"),
        client_peak_rss_kib: status_kib(std::process::id(), "VmHWM:"),
        server_log_lines: server
            .log_lines()
            .zip(meter.log_lines)
            .map(|(now, before)| now.saturating_sub(before)),
        listen_overflows: listen_overflows()
            .zip(meter.listen_overflows)
            .map(|(now, before)| now.saturating_sub(before)),
    }
}

/// Waits until the phase converges, the deadline passes, the server exits or Ctrl-C.
async fn wait_phase(
    shared: &Shared,
    done: &Notify,
    server: &mut Server,
    label: &str,
    start: Instant,
    deadline: Instant,
) -> (Status, Duration) {
    let mut next_progress = start + PROGRESS_EVERY;
    loop {
        {
            let world = shared.world();
            if let Some(at) = world.converged_at {
                return (Status::Converged, at.saturating_duration_since(start));
            }
        }
        if let Some(status) = server.exited() {
            return (Status::ServerExited(status), start.elapsed());
        }
        let now = Instant::now();
        if now >= deadline {
            return (Status::Timeout, start.elapsed());
        }
        if now >= next_progress {
            next_progress += PROGRESS_EVERY;
            let world = shared.world();
            eprintln!(
                "[{label} {:6.1} s] joined {}, converged {}/{} (target {} keys), lost {}, frames {} (presence {})",
                start.elapsed().as_secs_f64(),
                world.joined,
                world.converged,
                world.expected,
                world.target_len,
                world.counters.lost(),
                world.counters.total_frames,
                world.counters.total_presence_frames,
            );
        }
        let wake = deadline
            .min(next_progress)
            .min(now + Duration::from_millis(500));
        tokio::select! {
            _ = done.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = tokio::signal::ctrl_c() => return (Status::Interrupted, start.elapsed()),
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

fn map_text(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "0".to_owned();
    }
    let total: usize = m.values().sum();
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn stats_text(s: Option<Stats>, decimals: usize) -> String {
    s.map_or_else(
        || "-".to_owned(),
        |s| {
            format!(
                "min {:.d$}  mean {:.1}  max {:.d$}",
                s.min,
                s.mean,
                s.max,
                d = decimals
            )
        },
    )
}

fn opt_text<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

impl PhaseReport {
    fn text(&self, what: &str) -> String {
        let mut s = String::new();
        let _ = write!(s, "{} ({what}): ", self.name);
        match &self.status {
            Status::Converged if self.complete() => {
                let _ = write!(s, "converged in {:.3} s", seconds(self.elapsed));
                if let Some(d) = self.since_last_join {
                    let _ = write!(s, " ({:.3} s after the last join reply)", seconds(d));
                }
            }
            Status::Converged => {
                let _ = write!(
                    s,
                    "NOT converged: only {} of {} clients are left ({} lost in this phase); \
                     they converged on their {} keys in {:.3} s",
                    self.expected,
                    self.clients,
                    self.counters.lost(),
                    self.target_keys,
                    seconds(self.elapsed)
                );
            }
            other => {
                let _ = write!(
                    s,
                    "NOT converged: {other} after {:.1} s, {} of {} expected clients converged",
                    seconds(self.elapsed),
                    self.converged,
                    self.expected
                );
            }
        }
        s.push('\n');
        let c = &self.counters;
        let rows: Vec<(&str, String)> = vec![
            (
                "clients converged",
                format!(
                    "{} / {} expected (of {} in the phase; target {} keys)",
                    self.converged, self.expected, self.clients, self.target_keys
                ),
            ),
            ("keys listed / client", stats_text(self.keys_listed, 0)),
            (
                "connect latency (ms)",
                stats_text(self.connect_latency_ms, 1),
            ),
            ("join latency (ms)", stats_text(self.join_latency_ms, 1)),
            ("frames / client", stats_text(self.frames, 0)),
            (
                "presence frames / client",
                stats_text(self.presence_frames, 0),
            ),
            (
                "bytes / client",
                self.bytes.map_or_else(
                    || "-".to_owned(),
                    |b| format!("mean {:.0}  max {:.0}", b.mean, b.max),
                ),
            ),
            ("closed by the server", map_text(&c.closed_by_server)),
            ("channel errors", map_text(&c.channel_errors)),
            ("heartbeat timeouts", c.heartbeat_timeouts.to_string()),
            ("connect failures", map_text(&c.connect_failures)),
            ("joins refused", map_text(&c.joins_refused)),
            (
                "unparsed frames / bad keys",
                format!("{} / {}", c.unparsed_frames, c.unknown_keys),
            ),
            (
                "server CPU",
                self.server_cpu_s
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} s")),
            ),
            (
                "server peak RSS",
                self.server_peak_rss_kib.map_or_else(
                    || "n/a".to_owned(),
                    |v| {
                        format!(
                            "{:.1} MiB{} (RSS now {})",
                            kib_to_mib(v),
                            if self.peak_since_start {
                                " since start"
                            } else {
                                ""
                            },
                            self.server_rss_kib.map_or_else(
                                || "n/a".to_owned(),
                                |r| format!("{:.1} MiB", kib_to_mib(r))
                            )
                        )
                    },
                ),
            ),
            (
                "client CPU",
                self.client_cpu_s
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} s")),
            ),
            (
                "client peak RSS",
                self.client_peak_rss_kib.map_or_else(
                    || "n/a".to_owned(),
                    |v| format!("{:.1} MiB since start", kib_to_mib(v)),
                ),
            ),
            ("server log lines", opt_text(self.server_log_lines)),
            ("listen overflows (system)", opt_text(self.listen_overflows)),
        ];
        for (k, v) in rows {
            if k.contains("latency") && v == "-" {
                continue;
            }
            let _ = writeln!(s, "  {k:<28}{v}");
        }
        if self.listen_overflows.is_some_and(|n| n > 0) {
            s.push_str(
                "  note: accept queue overflows delay connects by 1 s each (SYN retransmit); \
                 a lower --connect-concurrency avoids them\n",
            );
        }
        s
    }

    /// Every client of the phase converged on the phase's full target: none was lost.
    fn complete(&self) -> bool {
        self.status == Status::Converged && self.expected == self.clients
    }

    fn json(&self) -> Value {
        let c = &self.counters;
        json!({
            "phase": self.name,
            "status": self.status.to_string(),
            "converged": self.complete(),
            "remaining_converged": self.status == Status::Converged,
            "lost_clients": c.lost(),
            "time_s": seconds(self.elapsed),
            "since_last_join_reply_s": self.since_last_join.map(seconds),
            "clients": self.clients,
            "expected_clients": self.expected,
            "converged_clients": self.converged,
            "target_keys": self.target_keys,
            "keys_listed": stats_json(self.keys_listed),
            "connect_latency_ms": stats_json(self.connect_latency_ms),
            "join_latency_ms": stats_json(self.join_latency_ms),
            "frames": stats_json(self.frames),
            "presence_frames": stats_json(self.presence_frames),
            "bytes": stats_json(self.bytes),
            "total_frames": c.total_frames,
            "total_presence_frames": c.total_presence_frames,
            "closed_by_server": c.closed_by_server,
            "closed_by_server_total": c.closed_by_server.values().sum::<usize>(),
            "channel_errors": c.channel_errors,
            "heartbeat_timeouts": c.heartbeat_timeouts,
            "connect_failures": c.connect_failures,
            "joins_refused": c.joins_refused,
            "unparsed_frames": c.unparsed_frames,
            "unknown_keys": c.unknown_keys,
            "server_cpu_s": self.server_cpu_s,
            "server_peak_rss_kib": self.server_peak_rss_kib,
            "server_peak_rss_since_start": self.peak_since_start,
            "server_rss_kib": self.server_rss_kib,
            "client_cpu_s": self.client_cpu_s,
            "client_peak_rss_kib": self.client_peak_rss_kib,
            "server_log_lines": self.server_log_lines,
            "listen_overflows": self.listen_overflows,
        })
    }
}

#[derive(Debug)]
struct Run {
    phase1: PhaseReport,
    settle: Option<Counters>,
    phase2: Result<PhaseReport, String>,
}

async fn big_room(args: &Args, server: &mut Server) -> Run {
    let n = args.clients;
    let half = n / 2;
    let ticks = clock_ticks_per_sec();
    let done = Arc::new(Notify::new());
    let shared = Arc::new(Shared {
        world: Mutex::new(World::new(n, done.clone())),
        connect: Semaphore::new(args.connect_concurrency),
        addr: server.addr,
        url: format!("ws://{}{SOCKET_PATH}", server.addr),
        topic: args.topic.clone(),
        sources: args.sources,
        heartbeat: args.heartbeat,
        drop_tcp: args.drop_tcp,
        half,
    });
    let (control, control_rx) = watch::channel(Control::Run);

    // Phase 1: connect and join everyone.
    let meter = Meter::start(server, ticks);
    let start = Instant::now();
    shared.world().armed = true;
    for i in 0..n {
        tokio::spawn(client(i, shared.clone(), control_rx.clone()));
    }
    let deadline = start + args.timeout;
    let (status, elapsed) = wait_phase(&shared, &done, server, "phase 1", start, deadline).await;
    let phase1 = {
        let mut world = shared.world();
        world.armed = false;
        phase_report(
            "phase 1",
            status,
            elapsed,
            0..n,
            &mut world,
            &meter,
            server,
            start,
        )
    };
    if phase1.status != Status::Converged {
        shared.world().ended = true;
        let _ = control.send(Control::Stop);
        let why = format!("skipped: phase 1 {}", phase1.status);
        return Run {
            phase1,
            settle: None,
            phase2: Err(why),
        };
    }

    // Settle, counting what still arrives.
    tokio::time::sleep(args.settle).await;

    // Phase 2: clients 0..half leave at once.
    let settle = {
        let mut world = shared.world();
        let settle = world.take_counters();
        for i in 0..half {
            world.unexpect(i);
        }
        world.untarget_range(0..half);
        world.converged_at = None;
        world.armed = true;
        settle
    };
    let meter = Meter::start(server, ticks);
    let start = Instant::now();
    let _ = control.send(Control::CloseHalf);
    shared.world().check_done();
    let deadline = start + args.timeout;
    let (status, elapsed) = wait_phase(&shared, &done, server, "phase 2", start, deadline).await;
    let phase2 = {
        let mut world = shared.world();
        world.armed = false;
        world.ended = true;
        phase_report(
            "phase 2",
            status,
            elapsed,
            half..n,
            &mut world,
            &meter,
            server,
            start,
        )
    };
    let _ = control.send(Control::Stop);
    Run {
        phase1,
        settle: Some(settle),
        phase2: Ok(phase2),
    }
}

fn settle_text(c: &Counters, settle: Duration) -> String {
    format!(
        "between the phases ({} ms): {} frames ({} presence) arrived, {} clients lost\n",
        settle.as_millis(),
        c.total_frames,
        c.total_presence_frames,
        c.lost()
    )
}

async fn main_async(args: Args) -> i32 {
    if let Some(limit) = open_files_limit()
        && (args.clients as u64) + 64 > limit
    {
        eprintln!(
            "load: {} clients need more than the open-file limit of {limit}: raise it (ulimit -n)",
            args.clients
        );
        return 2;
    }
    let server = match &args.url {
        Some(url) => use_running_server(url, args.pid).await,
        None => start_server(&args).await,
    };
    let mut server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("load: {e}");
            return 1;
        }
    };
    let env_text = if args.envs.is_empty() {
        "(default)".to_owned()
    } else {
        let parts: Vec<String> = args.envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(" ")
    };
    eprintln!(
        "big-room: {} clients on {}, server {} (pid {}, {}), env {env_text}",
        args.clients,
        args.topic,
        server.label,
        opt_text(server.pid),
        server.addr
    );
    let run = big_room(&args, &mut server).await;
    let first_log: Vec<String> = server
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .first
        .clone();
    let total_log = server.log_lines();
    server.stop().await;

    let mut text = String::new();
    let _ = writeln!(
        text,
        "big-room: {} clients on {}, server {} (pid {}, {}), env {env_text}",
        args.clients,
        args.topic,
        server.label,
        opt_text(server.pid),
        server.addr
    );
    text.push_str(&run.phase1.text("join"));
    if let Some(settle) = &run.settle {
        text.push_str(&settle_text(settle, args.settle));
    }
    match &run.phase2 {
        Ok(p) => text.push_str(&p.text("half the clients close")),
        Err(why) => {
            let _ = writeln!(text, "phase 2 (half the clients close): {why}");
        }
    }
    if let Some(total) = total_log {
        let _ = writeln!(text, "server log: {total} lines on stderr");
        for line in &first_log {
            let _ = writeln!(text, "  | {line}");
        }
    }
    print!("{text}");
    if args.json {
        let env: BTreeMap<&str, &str> = args
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let object = json!({
            "scenario": "big-room",
            "clients": args.clients,
            "topic": args.topic,
            "server": server.label,
            "env": env,
            "timeout_s": seconds(args.timeout),
            "phase1": run.phase1.json(),
            "between_phases": run.settle.as_ref().map(|c| json!({
                "frames": c.total_frames,
                "presence_frames": c.total_presence_frames,
                "lost": c.lost(),
            })),
            "phase2": match &run.phase2 {
                Ok(p) => p.json(),
                Err(why) => json!({"phase": "phase 2", "status": why, "converged": false}),
            },
            "server_log_lines": total_log,
            "server_log_first": first_log,
        });
        println!("{object}");
    }
    let _ = std::io::stdout().flush();
    let converged = run.phase1.complete() && run.phase2.as_ref().is_ok_and(PhaseReport::complete);
    if converged { 0 } else { 3 }
}

fn main() {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("load: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.client_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(main_async(args));
    // Do not wait for thousands of client tasks to wind down.
    runtime.shutdown_timeout(Duration::from_millis(500));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(keys: &Keys) -> Vec<u32> {
        keys.ids.clone()
    }

    #[test]
    fn frames_parse_in_one_pass() {
        let topic = "room:big";
        let state = r#"["1",null,"room:big","presence_state",{"u1":{"metas":[{"phx_ref":"x"}]},"u20":{"metas":[]},"bob":{"metas":[]}}]"#;
        match parse_frame(state, topic).unwrap() {
            Event::State(keys) => {
                assert_eq!(ids(&keys), vec![1, 20]);
                assert_eq!(keys.unknown, 1);
            }
            other => panic!("{other:?}"),
        }
        let diff =
            r#"[null,null,"room:big","presence_diff",{"joins":{"u3":{"metas":[{}]}},"leaves":{}}]"#;
        match parse_frame(diff, topic).unwrap() {
            Event::Diff { joins, leaves } => {
                assert_eq!(ids(&joins), vec![3]);
                assert!(leaves.ids.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let ok = r#"["1","1","room:big","phx_reply",{"response":{},"status":"ok"}]"#;
        assert!(matches!(
            parse_frame(ok, topic).unwrap(),
            Event::JoinReply(Ok(()))
        ));
        let refused =
            r#"["1","1","room:big","phx_reply",{"response":{"reason":"no"},"status":"error"}]"#;
        assert!(matches!(
            parse_frame(refused, topic).unwrap(),
            Event::JoinReply(Err(_))
        ));
        let hb = r#"[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]"#;
        assert!(
            matches!(parse_frame(hb, topic).unwrap(), Event::HeartbeatReply(Some(r)) if r == "7")
        );
        let err = r#"["1","1","room:big","phx_error",{"reason":"lagged"}]"#;
        assert!(matches!(
            parse_frame(err, topic).unwrap(),
            Event::ChannelError(_)
        ));
        let other = r#"[null,null,"room:other","presence_diff",{"joins":{}}]"#;
        assert!(matches!(parse_frame(other, topic).unwrap(), Event::Other));
        assert!(parse_frame("[1,2]", topic).is_err());
        assert!(parse_frame(r#"[null,null,"a","b",{},5]"#, topic).is_err());
    }

    fn keys(ids: &[u32]) -> Keys {
        Keys {
            ids: ids.to_vec(),
            unknown: 0,
        }
    }

    #[test]
    fn diffs_before_the_state_are_queued_and_convergence_is_tracked() {
        let done = Arc::new(Notify::new());
        let mut world = World::new(3, done);
        world.armed = true;
        // Client 0 gets a diff first, then a state: the diff applies after the state.
        world.apply_diff(0, keys(&[2]), keys(&[]));
        assert_eq!(world.clients[0].listed, 0);
        world.apply_state(0, keys(&[0, 1]));
        assert_eq!(world.clients[0].listed, 3);
        assert!(world.clients[0].converged);
        world.apply_state(1, keys(&[0, 1, 2]));
        assert!(world.converged_at.is_none());
        // Joins first, then leaves.
        world.apply_state(2, keys(&[0, 1]));
        world.apply_diff(2, keys(&[2]), keys(&[2]));
        assert!(!world.clients[2].converged);
        world.apply_diff(2, keys(&[2]), keys(&[]));
        assert!(world.converged_at.is_some());

        // Phase 2: client 0 closes; the others must drop key 0.
        world.converged_at = None;
        world.unexpect(0);
        world.untarget_range(0..1);
        assert_eq!(world.target_len, 2);
        assert_eq!(world.converged, 0);
        world.apply_diff(1, keys(&[]), keys(&[0]));
        world.check_done();
        assert!(world.converged_at.is_none());
        // Client 2 is lost: its key leaves the target, and client 1 still lists it.
        world.lose(2, Loss::ServerClosed("1013".to_owned()));
        assert_eq!(world.expected, 1);
        assert!(world.converged_at.is_none());
        world.apply_diff(1, keys(&[]), keys(&[2]));
        assert!(world.converged_at.is_some());
        assert_eq!(world.counters.closed_by_server.get("1013"), Some(&1));
    }

    #[test]
    fn proc_files_parse() {
        assert!(cpu_ticks("self").is_some());
        assert!(clock_ticks_per_sec() > 0.0);
        assert!(status_kib(std::process::id(), "VmHWM:").is_some());
        assert!(listen_overflows().is_some());
        assert!(open_files_limit().is_some());
    }

    #[test]
    fn log_lines_lose_colours_and_timestamps() {
        let line = "\u{1b}[2m2026-11-29T05:49:43.642664Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[2mpresence_poem::outbox\u{1b}[0m\u{1b}[2m:\u{1b}[0m closing";
        assert_eq!(clean_log_line(line), "WARN presence_poem::outbox: closing");
        assert_eq!(clean_log_line("plain"), "plain");
    }

    #[test]
    fn arguments_parse() {
        let args = |s: &str| parse_args(s.split_whitespace().map(str::to_owned).collect());
        let a =
            args("big-room --clients 10 --env A=1 --env=B=x=y --json --timeout-secs 5").unwrap();
        assert_eq!(a.clients, 10);
        assert_eq!(
            a.envs,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(a.json);
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert!(args("big-room").is_err());
        assert!(args("small-room --clients 1").is_err());
        assert!(args("big-room --clients 1 --env NOEQUALS").is_err());
        assert!(args("big-room --clients 1 --url ws://127.0.0.1:1 --env A=1").is_err());
    }
}
