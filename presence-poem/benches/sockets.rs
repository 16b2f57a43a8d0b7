//! `cargo bench -p presence-poem --bench sockets`: sockets at scale, over loopback.
//!
//! The server runs in its own process (this binary re-executed with the argument `server`), so
//! that its RSS is the server's alone and each side has its own open-file limit. It prints its
//! port, then answers `rss` lines on stdin with its VmRSS, and exits when stdin closes. The
//! clients (tokio-tungstenite, `vsn=2.0.0`, one reader task each) run in this process.
//!
//! Each scenario starts a fresh server and connects from its own loopback source address
//! (127.0.0.x), so that the TIME_WAIT ports of one scenario never limit the next.
//!
//! Printed: server RSS per idle joined socket (channel without presence, channel tracking one
//! presence per socket), connect+join rates, and the fan-out time of one broadcast and of one
//! `presence_diff` to every socket joined to one topic.
//!
//! `SOCKETS_BENCH_RECORDER=compare` runs the whole bench four times, alternating a server
//! without a metrics recorder and one with the Prometheus recorder installed (rendered every
//! 5 s, as a scrape would), to measure what the metrics cost.

#[path = "../../presence-core/benches/support/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async_with_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Concurrent connect+join attempts while ramping up.
const CONNECT_CONCURRENCY: usize = 64;
/// Topics of the `room:<i % 100>` scenarios.
const TOPICS: usize = 100;
/// Fan-out rounds per measurement.
const ROUNDS: usize = 5;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("server") {
        server::main();
        return;
    }
    if std::env::var("SOCKETS_BENCH_RECORDER").as_deref() == Ok("compare") {
        compare_recorders();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(client_main());
}

mod server {
    //! The server process: a `PhoenixSocket` with two channels on one pub/sub and presence.
    //!
    //! - `bare:*` tracks nothing (pure socket + channel cost). Its `shout` event broadcasts
    //!   the payload on the topic; its `track` event tracks `{"key": ..}` for this channel, so
    //!   the presence layer broadcasts one `presence_diff` to the topic.
    //! - `room:*` is the chat example's room: it tracks the join param `user` with an
    //!   `online_at`/`status` meta and pushes `presence_state` after the join reply.

    use std::io::BufRead;
    use std::time::Duration;

    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::{EndpointExt, Route, Server};
    use presence_core::presence::{Presence, PresenceHandle, PresenceOptions};
    use presence_core::pubsub::Payload;
    use presence_core::registry::Registry;
    use presence_core::{PubSub, pubsub_server};
    use presence_poem::{
        Channel, ChannelContext, HandleIn, Join, PhoenixSocket, PresenceMiddleware, Reply,
    };
    use serde_json::{Value, json};

    pubsub_server!(BenchPubSub);

    #[derive(Presence)]
    #[presence(pubsub = BenchPubSub)]
    struct BenchPresence;

    fn track(ctx: &ChannelContext, key: &str, meta: &Value) -> Result<(), String> {
        let presence = PresenceHandle::<BenchPresence>::from_registry(ctx.registry())
            .map_err(|e| e.to_string())?;
        presence
            .track(ctx.owner(), ctx.topic(), key, meta)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    struct Bare;

    impl Channel for Bare {
        async fn join(&mut self, _: &str, _: Value, _: &mut ChannelContext) -> Join {
            Join::ok()
        }

        async fn handle_in(
            &mut self,
            event: &str,
            payload: Payload,
            ctx: &mut ChannelContext,
        ) -> HandleIn {
            let Payload::Json(payload) = payload else {
                return HandleIn::NoReply;
            };
            let result = match event {
                "shout" => ctx.broadcast("shout", payload).map_err(|e| e.to_string()),
                "track" => {
                    let key = payload["key"].as_str().unwrap_or("?").to_owned();
                    track(ctx, &key, &json!({}))
                }
                _ => Err(format!("unknown event {event:?}")),
            };
            match result {
                Ok(()) => HandleIn::NoReply,
                Err(reason) => HandleIn::Reply(Reply::error(json!({ "reason": reason }))),
            }
        }
    }

    struct Room;

    impl Channel for Room {
        async fn join(&mut self, _: &str, params: Value, ctx: &mut ChannelContext) -> Join {
            let user = params["user"].as_str().unwrap_or("?").to_owned();
            let meta = json!({"online_at": 1_700_000_000, "status": "online"});
            if let Err(reason) = track(ctx, &user, &meta) {
                return Join::error(json!({ "reason": reason }));
            }
            if let Err(e) = ctx.push_presence_state::<BenchPresence>().await {
                return Join::error(json!({ "reason": e.to_string() }));
            }
            Join::ok()
        }
    }

    pub(super) fn main() {
        // `SOCKETS_BENCH_RECORDER=on`: what a node exporting Prometheus metrics pays.
        if std::env::var("SOCKETS_BENCH_RECORDER").as_deref() == Ok("on") {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("install the recorder");
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    std::hint::black_box(handle.render());
                }
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async {
            let registry = Registry::new();
            let pubsub = PubSub::new("bench");
            registry.insert_pubsub(&BenchPubSub, pubsub.clone());
            // `SOCKETS_BENCH_DIFF_WINDOW_MS` sets the presence's diff window (default 50 ms).
            let mut options = PresenceOptions::new();
            if let Some(ms) = std::env::var("SOCKETS_BENCH_DIFF_WINDOW_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                options = options.diff_window(Duration::from_millis(ms));
            }
            let presence =
                PresenceHandle::start(BenchPresence, pubsub.clone(), &options).expect("presence");
            registry.insert(presence);
            let socket = PhoenixSocket::builder(pubsub)
                .idle_timeout(Duration::from_secs(600))
                .channel("bare:*", || Bare)
                .channel("room:*", || Room)
                .build();
            let app = Route::new()
                .at("/socket/websocket", socket)
                .with(PresenceMiddleware::new(registry));
            let acceptor = TcpListener::bind("127.0.0.1:0")
                .into_acceptor()
                .await
                .expect("bind");
            let port = acceptor
                .local_addr()
                .first()
                .and_then(|a| a.as_socket_addr().copied())
                .expect("address")
                .port();
            tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
            println!("port {port}");
            // Commands on stdin; EOF (the bench ended or died) ends the process.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            while let Some(line) = rx.recv().await {
                if line.trim() == "rss" {
                    println!("rss {}", crate::procfs::rss_kib());
                } else if line.trim() == "cpu" {
                    println!("cpu {}", crate::procfs::cpu_ms());
                }
            }
        });
        // Do not wait for 10k sockets to shut down gracefully.
        std::process::exit(0);
    }
}

/// The server process, spoken to over its stdin and stdout.
struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let exe = std::env::current_exe().expect("current exe");
        // `SOCKETS_BENCH_WRAP=heaptrack` (or any command taking a program and its arguments)
        // runs the server under it.
        let mut command = match std::env::var("SOCKETS_BENCH_WRAP") {
            Ok(wrap) if !wrap.trim().is_empty() => {
                let mut words = wrap.split_whitespace();
                let mut command = Command::new(words.next().expect("a command"));
                command.args(words).arg(exe);
                command
            }
            _ => Command::new(exe),
        };
        let mut child = command
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the server");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let port = read_value(&mut stdout, "port") as u16;
        ServerProcess {
            child,
            stdin,
            stdout,
            port,
        }
    }

    fn rss_kib(&mut self) -> u64 {
        writeln!(self.stdin, "rss").expect("ask the server");
        self.stdin.flush().expect("ask the server");
        read_value(&mut self.stdout, "rss")
    }

    fn cpu_ms(&mut self) -> u64 {
        writeln!(self.stdin, "cpu").expect("ask the server");
        self.stdin.flush().expect("ask the server");
        read_value(&mut self.stdout, "cpu")
    }

    fn stop(self) {
        let ServerProcess {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = child.wait();
    }
}

fn read_value(stdout: &mut BufReader<ChildStdout>, name: &str) -> u64 {
    // Skips what a wrapper (`SOCKETS_BENCH_WRAP`) may print first.
    loop {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).expect("read the server");
        assert!(read > 0, "the server exited before saying {name}");
        if let Some(value) = line.strip_prefix(name).and_then(|v| v.trim().parse().ok()) {
            return value;
        }
    }
}

/// Counts the clients that received the current round's marker.
#[derive(Default)]
struct FanOut {
    marker: Mutex<String>,
    received: AtomicUsize,
    target: AtomicUsize,
    last: Mutex<Option<Instant>>,
    done: Notify,
}

impl FanOut {
    fn seen(&self, text: &str) {
        let hit = {
            let marker = self.marker.lock().unwrap_or_else(PoisonError::into_inner);
            !marker.is_empty() && text.contains(marker.as_str())
        };
        if hit {
            let n = self.received.fetch_add(1, Ordering::AcqRel) + 1;
            if n == self.target.load(Ordering::Acquire) {
                *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                self.done.notify_one();
            }
        }
    }
}

/// The clients of one scenario.
struct Clients {
    port: u16,
    source: Ipv4Addr,
    sinks: Vec<SplitSink<Ws, WsMessage>>,
    fanout: Arc<FanOut>,
}

fn client_config() -> WebSocketConfig {
    // Small client buffers too: the client process holds 10k sockets as well.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn connect_join(
    port: u16,
    source: Ipv4Addr,
    topic: &str,
    params: &str,
) -> (SplitSink<Ws, WsMessage>, SplitStream<Ws>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the source address");
    let tcp = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .expect("connect");
    let url = format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0");
    let (ws, _) = client_async_with_config(url, MaybeTlsStream::Plain(tcp), Some(client_config()))
        .await
        .expect("websocket handshake");
    let (mut sink, mut stream) = ws.split();
    let join = format!(r#"["1","1","{topic}","phx_join",{params}]"#);
    sink.send(WsMessage::text(join)).await.expect("send join");
    let expected = format!(r#"["1","1","{topic}","phx_reply",{{"status":"ok""#);
    loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(text))) if text.starts_with(&expected) => break,
            Some(Ok(WsMessage::Text(text))) if text.contains("phx_reply") => {
                panic!("join of {topic} refused: {text}")
            }
            Some(Ok(_)) => {}
            other => panic!("join of {topic} failed: {other:?}"),
        }
    }
    (sink, stream)
}

impl Clients {
    fn new(port: u16, source: Ipv4Addr) -> Clients {
        Clients {
            port,
            source,
            sinks: Vec::new(),
            fanout: Arc::new(FanOut::default()),
        }
    }

    /// Connects and joins until there are `total` clients; client `i` joins `topic(i)`.
    /// Returns the time it took.
    async fn grow_to(
        &mut self,
        total: usize,
        topic: impl Fn(usize) -> String + Send + Sync + 'static,
        with_user: bool,
    ) -> Duration {
        let start = self.sinks.len();
        let topic = Arc::new(topic);
        let t = Instant::now();
        let mut workers = Vec::new();
        for w in 0..CONNECT_CONCURRENCY {
            let (port, source, topic, fanout) =
                (self.port, self.source, topic.clone(), self.fanout.clone());
            workers.push(tokio::spawn(async move {
                let mut sinks = Vec::new();
                for i in (start + w..total).step_by(CONNECT_CONCURRENCY) {
                    let params = if with_user {
                        format!(r#"{{"user":"user{i}"}}"#)
                    } else {
                        "{}".to_owned()
                    };
                    let (sink, stream) = connect_join(port, source, &topic(i), &params).await;
                    tokio::spawn(read_loop(stream, fanout.clone()));
                    sinks.push(sink);
                }
                sinks
            }));
        }
        for worker in workers {
            self.sinks.extend(worker.await.expect("connect worker"));
        }
        t.elapsed()
    }

    /// Sends `frame` from client 0, and waits until every client saw `marker`. Returns the
    /// time from just before the send to the last client's receipt.
    async fn fan_out(&mut self, frame: String, marker: String) -> Duration {
        let fanout = &self.fanout;
        *fanout.marker.lock().unwrap_or_else(PoisonError::into_inner) = marker;
        fanout.received.store(0, Ordering::Release);
        fanout.target.store(self.sinks.len(), Ordering::Release);
        let done = fanout.done.notified();
        let t = Instant::now();
        self.sinks[0]
            .send(WsMessage::text(frame))
            .await
            .expect("send");
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("every client receives the fan-out within 30 s");
        let last = fanout
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("stamped");
        fanout
            .marker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        last - t
    }

    async fn close(self) {
        for mut sink in self.sinks {
            let _ = sink.close().await;
        }
    }
}

async fn read_loop(mut stream: SplitStream<Ws>, fanout: Arc<FanOut>) {
    while let Some(Ok(message)) = stream.next().await {
        if let WsMessage::Text(text) = message {
            fanout.seen(&text);
        }
    }
}

/// Lets the server finish what the joins started (presence diffs, deferred pushes) before
/// its RSS is read.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct MemRow {
    sockets: usize,
    rss_kib: u64,
    growth_kib: u64,
    marginal: Option<f64>,
    rate: f64,
}

fn print_mem_table(title: &str, baseline_kib: u64, rows: &[MemRow]) {
    println!("\n### {title}\n");
    println!("Server RSS before the first connection: {baseline_kib} KiB.\n");
    println!(
        "| sockets | server RSS (MiB) | growth (MiB) | bytes / socket | marginal bytes / socket | connect+join / s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let per = r.growth_kib as f64 * 1024.0 / r.sockets as f64;
        let marginal = r
            .marginal
            .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}"));
        println!(
            "| {} | {:.1} | {:.1} | {per:.0} | {marginal} | {:.0} |",
            r.sockets,
            r.rss_kib as f64 / 1024.0,
            r.growth_kib as f64 / 1024.0,
            r.rate
        );
    }
}

/// Ramps one fresh server up through `steps` sockets and records RSS at each step.
async fn memory_scenario(
    title: &str,
    source: Ipv4Addr,
    steps: &[usize],
    topic: impl Fn(usize) -> String + Clone + Send + Sync + 'static,
    with_user: bool,
) {
    let mut server = ServerProcess::start();
    settle().await;
    let baseline = server.rss_kib();
    let mut clients = Clients::new(server.port, source);
    let mut rows = Vec::new();
    let mut previous = (0usize, baseline);
    for &n in steps {
        let added = n - clients.sinks.len();
        let took = clients.grow_to(n, topic.clone(), with_user).await;
        settle().await;
        let rss = server.rss_kib();
        let marginal = (previous.0 > 0)
            .then(|| (rss.saturating_sub(previous.1)) as f64 * 1024.0 / (n - previous.0) as f64);
        rows.push(MemRow {
            sockets: n,
            rss_kib: rss,
            growth_kib: rss.saturating_sub(baseline),
            marginal,
            rate: per_sec(added, took),
        });
        previous = (n, rss);
    }
    print_mem_table(title, baseline, &rows);
    println!("\nServer CPU time: {} ms.", server.cpu_ms());
    clients.close().await;
    server.stop();
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let median = millis(times[times.len() / 2]);
    (
        millis(times[0]),
        median,
        millis(*times.last().expect("rounds")),
    )
}

/// Sockets joined to one topic (`bare:all`): RSS, and fan-out of a broadcast and of a
/// `presence_diff`, at each step.
async fn fan_out_scenario(source: Ipv4Addr, steps: &[usize]) {
    let mut server = ServerProcess::start();
    settle().await;
    let baseline = server.rss_kib();
    let mut clients = Clients::new(server.port, source);
    let mut mem = Vec::new();
    let mut fan = Vec::new();
    let mut previous = (0usize, baseline);
    let mut round = 0;
    for &n in steps {
        let added = n - clients.sinks.len();
        let took = clients.grow_to(n, |_| "bare:all".to_owned(), false).await;
        settle().await;
        let rss = server.rss_kib();
        let marginal = (previous.0 > 0)
            .then(|| (rss.saturating_sub(previous.1)) as f64 * 1024.0 / (n - previous.0) as f64);
        mem.push(MemRow {
            sockets: n,
            rss_kib: rss,
            growth_kib: rss.saturating_sub(baseline),
            marginal,
            rate: per_sec(added, took),
        });
        previous = (n, rss);

        let mut broadcast = Vec::new();
        let mut diff = Vec::new();
        for _ in 0..ROUNDS {
            round += 1;
            let marker = format!("fanout-{round}");
            let frame = format!(r#"["1","{round}","bare:all","shout",{{"marker":"{marker}"}}]"#);
            broadcast.push(clients.fan_out(frame, marker).await);
            round += 1;
            let marker = format!("fanout-{round}");
            let frame = format!(r#"["1","{round}","bare:all","track",{{"key":"{marker}"}}]"#);
            diff.push(clients.fan_out(frame, marker).await);
        }
        fan.push((n, summary(broadcast), summary(diff)));
    }
    print_mem_table("One topic (`bare:all`), no presence", baseline, &mem);
    println!(
        "\n### Fan-out to every socket of one topic ({ROUNDS} rounds each; ms from the send on \
         client 0 to the receipt on the last client)\n"
    );
    println!("| sockets | broadcast min | median | max | presence_diff min | median | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, b, d) in fan {
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            b.0, b.1, b.2, d.0, d.1, d.2
        );
    }
    println!("\nServer CPU time: {} ms.", server.cpu_ms());
    clients.close().await;
    server.stop();
}

/// Runs this bench four times, without a recorder and with one, alternately.
fn compare_recorders() {
    let exe = std::env::current_exe().expect("current exe");
    for pass in ["off", "on", "off", "on"] {
        println!("\n## Pass with the metrics recorder {pass}");
        let status = Command::new(&exe)
            .args(std::env::args().skip(1))
            .env("SOCKETS_BENCH_RECORDER", pass)
            .status()
            .expect("run a pass");
        assert!(status.success(), "the pass failed: {status}");
    }
}

/// Whether `SOCKETS_BENCH_ONLY` (a comma-separated list of `bare`, `presence`, `fanout`)
/// selects `name`; unset selects everything.
fn selected(name: &str) -> bool {
    std::env::var("SOCKETS_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|s| s.trim() == name))
}

async fn client_main() {
    let t = Instant::now();
    println!("## presence-poem sockets bench (server in its own process, clients here)");
    let steps = [1_000, 5_000, 10_000];
    if selected("bare") {
        memory_scenario(
            "Channel without presence, topics `bare:<i % 100>`",
            Ipv4Addr::new(127, 0, 0, 2),
            &steps,
            |i| format!("bare:{}", i % TOPICS),
            false,
        )
        .await;
    }
    if selected("presence") {
        memory_scenario(
            "Channel tracking one presence per socket (+ presence_state), topics `room:<i % 100>`",
            Ipv4Addr::new(127, 0, 0, 3),
            &steps,
            |i| format!("room:{}", i % TOPICS),
            true,
        )
        .await;
    }
    if selected("fanout") {
        fan_out_scenario(Ipv4Addr::new(127, 0, 0, 4), &[1_000, 10_000]).await;
    }
    println!("\nTotal bench time: {:.1} s", t.elapsed().as_secs_f64());
}
