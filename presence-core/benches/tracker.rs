//! `cargo bench -p presence-core`: tracker throughput, latency, memory and convergence.
//!
//! A plain harness (no framework), so that it can also measure memory (RSS growth) and
//! multi-node convergence. Figures go into BENCHMARKS.md.
//!
//! `TRACKER_BENCH_RECORDER=compare` runs the chosen sections four times, each in a process of
//! its own, alternating without a metrics recorder and with the Prometheus recorder installed
//! (rendered every 5 s, as a scrape would), to measure what the metrics cost.

#[path = "support/procfs.rs"]
mod procfs;

use std::hint::black_box;
use std::time::{Duration, Instant};

use presence_core::pubsub::LocalCluster;
use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
use serde_json::json;

/// The system allocator, counting the bytes in use, so that the memory section can tell the
/// heap the tracker holds from what the allocator keeps of freed memory (both count in RSS).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Bytes requested from the allocator and not freed (without the allocator's own overhead).
fn live_bytes() -> i64 {
    ALLOCATOR.allocated() as i64
}

fn per_sec(n: usize, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

fn topic_of(i: usize, topics: usize) -> String {
    format!("room:{}", i % topics)
}

fn ops(n: usize, topics: usize) {
    let tracker = Tracker::start("Bench", PubSub::new("a"), TrackerConfig::default()).unwrap();
    let owners: Vec<Owner> = (0..n).map(|_| Owner::new()).collect();
    let names: Vec<String> = (0..n).map(|i| format!("user{i}")).collect();
    let topic_names: Vec<String> = (0..n).map(|i| topic_of(i, topics)).collect();
    let t = Instant::now();
    for i in 0..n {
        tracker
            .track(
                &owners[i],
                &topic_names[i],
                &names[i],
                json!({"status": "online", "device": "web"}),
            )
            .unwrap();
    }
    let track = t.elapsed();

    let t = Instant::now();
    for i in 0..n {
        tracker
            .update(
                &owners[i],
                &topic_names[i],
                &names[i],
                json!({"status": "away", "device": "web"}),
            )
            .unwrap();
    }
    let update = t.elapsed();

    let lists = if topics == 1 { 20 } else { 2000 };
    let t = Instant::now();
    for i in 0..lists {
        black_box(tracker.list(&topic_of(i, topics)));
    }
    let list = t.elapsed() / lists as u32;

    let gets = 10_000;
    let t = Instant::now();
    for i in 0..gets {
        let j = (i * 7919) % n;
        black_box(tracker.get_by_key(&topic_names[j], &names[j]));
    }
    let get = t.elapsed() / gets as u32;

    let t = Instant::now();
    for i in 0..n {
        tracker.untrack(&owners[i], &topic_names[i], &names[i]);
    }
    let untrack = t.elapsed();

    println!(
        "| {n} | {topics} | {} | {} | {} | {:.3} ms | {:.2} µs |",
        per_sec(n, track),
        per_sec(n, update),
        per_sec(n, untrack),
        list.as_secs_f64() * 1e3,
        get.as_secs_f64() * 1e6,
    );
}

/// `largest_topics(10)` over `n` presences spread on `topics` topics (what a status page or
/// the opt-in topic gauges cost per refresh).
fn largest(n: usize, topics: usize) {
    let tracker = Tracker::start("Bench", PubSub::new("a"), TrackerConfig::default()).unwrap();
    let owners: Vec<Owner> = (0..n).map(|_| Owner::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        let topic = topic_of(i, topics);
        tracker
            .track(
                owner,
                &topic,
                &format!("user{i}"),
                json!({"status": "online"}),
            )
            .unwrap();
    }
    let runs = 20;
    let t = Instant::now();
    for _ in 0..runs {
        black_box(tracker.largest_topics(10));
    }
    let each = t.elapsed() / runs;
    println!("| {n} | {topics} | {:.0} µs |", each.as_secs_f64() * 1e6);
}

async fn converge(n: usize) {
    let cluster = LocalCluster::new();
    let config = TrackerConfig {
        broadcast_period: Duration::from_millis(100),
        ..TrackerConfig::default()
    };
    let a = Tracker::start(
        "Conv",
        PubSub::builder("a").adapter(cluster.adapter()).build(),
        config.clone(),
    )
    .unwrap();
    let owners: Vec<Owner> = (0..n).map(|_| Owner::new()).collect();
    for (i, o) in owners.iter().enumerate() {
        a.track(
            o,
            &topic_of(i, 1),
            &format!("user{i}"),
            json!({"status": "online"}),
        )
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let b = Tracker::start(
        "Conv",
        PubSub::builder("b").adapter(cluster.adapter()).build(),
        config,
    )
    .unwrap();
    while b.list("room:0").len() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.elapsed() < Duration::from_secs(60), "no convergence");
    }
    println!(
        "| {n} | {:.0} ms | broadcast_period 100 ms |",
        t.elapsed().as_secs_f64() * 1e3
    );
}

async fn burst(n: usize) {
    let tracker = Tracker::start("Burst", PubSub::new("a"), TrackerConfig::default()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let updated = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n + 1));
    for i in 0..n {
        let (tracker, done, updated, barrier, stop, tx) = (
            tracker.clone(),
            done.clone(),
            updated.clone(),
            barrier.clone(),
            stop.clone(),
            tx.clone(),
        );
        tasks.spawn(async move {
            let owner = Owner::new();
            let topic = topic_of(i, 1);
            let key = format!("user{i}");
            tracker
                .track(&owner, &topic, &key, json!({"status": "online"}))
                .unwrap();
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            barrier.wait().await;
            barrier.wait().await;
            tracker
                .update(&owner, &topic, &key, json!({"status": "away"}))
                .unwrap();
            updated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(tx);
            stop.notified().await;
        });
    }
    drop(tx);
    let t = Instant::now();
    barrier.wait().await;
    let tracks = t.elapsed();
    let t = Instant::now();
    barrier.wait().await;
    let _ = rx.recv().await; // every task dropped its sender after updating
    let updates = t.elapsed();
    println!(
        "| {n} concurrent tracks | {} of {n} completed | {:.0} ms | {} |",
        done.load(std::sync::atomic::Ordering::Relaxed),
        tracks.as_secs_f64() * 1e3,
        per_sec(n, tracks)
    );
    println!(
        "| {n} concurrent updates | {} of {n} completed | {:.0} ms | {} |",
        updated.load(std::sync::atomic::Ordering::Relaxed),
        updates.as_secs_f64() * 1e3,
        per_sec(n, updates)
    );
    stop.notify_waiters();
    tasks.abort_all();
}

/// Runs in a fresh child process: tracks `n` presences over `topics` topics and prints the
/// growth of the resident set per presence, after a heartbeat has flushed the pending delta.
fn memory_child(n: usize, topics: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = TrackerConfig {
            broadcast_period: Duration::from_millis(20),
            ..TrackerConfig::default()
        };
        let tracker = Tracker::start("Mem", PubSub::new("a"), config).unwrap();
        let names: Vec<String> = (0..n).map(|i| format!("user{i}")).collect();
        let topic_names: Vec<String> = (0..n).map(|i| topic_of(i, topics)).collect();
        let owners: Vec<Owner> = (0..n).map(|_| Owner::new()).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = procfs::rss_kib() * 1024;
        let live_before = live_bytes();
        // Each meta is built here, as a caller builds it: what the tracker keeps of it (all of
        // it, or a compact copy) counts, and nothing else of the bench's is allocated meanwhile.
        for i in 0..n {
            let meta = json!({"status": "online", "device": "web"});
            tracker
                .track(&owners[i], &topic_names[i], &names[i], meta)
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = procfs::rss_kib() * 1024;
        let live = (live_bytes() - live_before) / n as i64;
        println!("{} {live}", after.saturating_sub(before) / n as u64);
        black_box(&tracker);
    });
}

fn memory(n: usize, topics: usize) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["memory-child", &n.to_string(), &topics.to_string()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let mut figures = out.split_whitespace();
    let rss = figures.next().unwrap_or("?");
    let live = figures.next().unwrap_or("?");
    println!("| {n} | {topics} | {rss} B | {live} B |");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("memory-child") {
        memory_child(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    match std::env::var("TRACKER_BENCH_RECORDER").as_deref() {
        Ok("compare") => {
            let exe = std::env::current_exe().expect("current exe");
            for pass in ["off", "on", "off", "on"] {
                println!("\n## Pass with the metrics recorder {pass}\n");
                let status = std::process::Command::new(&exe)
                    .args(&args[1..])
                    .env("TRACKER_BENCH_RECORDER", pass)
                    .status()
                    .expect("run a pass");
                assert!(status.success(), "the pass failed: {status}");
            }
            return;
        }
        Ok("on") => {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("install the recorder");
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    black_box(handle.render());
                }
            });
        }
        _ => {}
    }
    // `cargo bench` passes `--bench`; a filter argument picks sections.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| filter.is_empty() || filter.iter().any(|f| s.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    if want("ops") {
        println!("| presences | topics | track | update | untrack | list one topic | get_by_key |");
        println!("|---|---|---|---|---|---|---|");
        for (n, topics) in [(10_000, 1), (10_000, 1000), (100_000, 1), (100_000, 1000)] {
            ops(n, topics);
        }
    }
    if want("largest") {
        println!("\n| presences | topics | largest_topics(10) |\n|---|---|---|");
        for (n, topics) in [(100_000, 1000), (100_000, 100_000)] {
            largest(n, topics);
        }
    }
    if want("memory") {
        println!(
            "\n| presences | topics | resident memory per presence | heap in use per presence |\n|---|---|---|---|"
        );
        for (n, topics) in [(10_000, 1), (100_000, 1), (100_000, 1000)] {
            memory(n, topics);
        }
    }
    if want("converge") {
        println!("\n| presences | second node converged after | note |\n|---|---|---|");
        for n in [10_000, 50_000] {
            rt.block_on(converge(n));
        }
    }
    if want("burst") {
        println!("\n| burst | completed | wall time | rate |\n|---|---|---|---|");
        rt.block_on(burst(100_000));
    }
    println!("\nProcess CPU time: {} ms.", procfs::cpu_ms());
}
