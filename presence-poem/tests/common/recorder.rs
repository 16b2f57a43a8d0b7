//! A metrics recorder for tests: `metrics-util`'s atomic registry (what its
//! `DebuggingRecorder` stores into), read without resetting, so a test reads counters and
//! gauges as they stand, as often as it likes.
//!
//! Installed per test with `metrics::set_default_local_recorder` on a current-thread
//! runtime: every task the test's server spawns runs on that thread and records here, and
//! tests running in parallel on other threads never see each other's counts.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

#[derive(Clone)]
pub struct TestRecorder {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

impl std::fmt::Debug for TestRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestRecorder")
    }
}

impl Default for TestRecorder {
    fn default() -> Self {
        TestRecorder {
            registry: Arc::new(Registry::atomic()),
        }
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string()))
        .collect();
    Key::from_parts(name.to_owned(), labels)
}

impl TestRecorder {
    /// The counter `name` with exactly `labels` (0 if never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry
            .get_counter(&key(name, labels))
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// The sum of the counters `name` over all their labels.
    pub fn counter_total(&self, name: &str) -> u64 {
        let mut total = 0;
        self.registry.visit_counters(|k, c| {
            if k.name() == name {
                total += c.load(Ordering::Acquire);
            }
        });
        total
    }

    /// The gauge `name` with exactly `labels` (0 if never registered).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.registry
            .get_gauge(&key(name, labels))
            .map_or(0.0, |g| f64::from_bits(g.load(Ordering::Acquire)))
    }

    /// The values recorded into histogram `name` with `labels`.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut values = Vec::new();
        if let Some(h) = self.registry.get_histogram(&key(name, labels)) {
            h.data_with(|xs| values.extend_from_slice(xs));
        }
        values
    }

    /// Every metric name registered, for a failing assertion's message.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.registry
            .visit_counters(|k, _| names.push(format!("{k:?}")));
        self.registry
            .visit_gauges(|k, _| names.push(format!("{k:?}")));
        names.sort();
        names
    }

    /// Waits (up to `deadline`) until `check` holds: metrics recorded by other tasks of the
    /// test's runtime land a few polls after the client sees the effect.
    pub async fn eventually(
        &self,
        deadline: std::time::Duration,
        what: &str,
        check: impl Fn(&TestRecorder) -> bool,
    ) {
        let until = tokio::time::Instant::now() + deadline;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < until,
                "{what}: not reached; metrics: {:#?}",
                self.names()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}
