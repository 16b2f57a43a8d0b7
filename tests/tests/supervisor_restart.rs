//! The start-up supervisor: order, rest-for-one restarts, reverse shutdown, start failures,
//! restart intensity, and option merging for presences.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::presence::{PresenceHandle, PresenceOptions};
use presence_core::registry::Registry;
use presence_core::supervisor::{BoxError, BoxFuture, Child, ChildSpec, PubSubSpec, Supervisor};
use presence_core::{Presence, presence, pubsub_server};
use tokio::sync::Notify;

pubsub_server!(
    /// The test's pub/sub.
    pub SupPubSub
);

/// A presence whose attribute sets defaults that child specs override.
#[derive(Debug)]
#[presence(pubsub = SupPubSub, pool_size = 2, max_silent_periods = 5)]
pub struct SupPresence;

type Log = Arc<Mutex<Vec<String>>>;

/// A child that logs its starts and stops, and whose task ends (a crash) when notified.
struct Probe {
    name: &'static str,
    log: Log,
    crash: Arc<Notify>,
    fail_start: bool,
}

impl Probe {
    fn new(name: &'static str, log: &Log) -> (Self, Arc<Notify>) {
        let crash = Arc::new(Notify::new());
        (
            Probe {
                name,
                log: log.clone(),
                crash: crash.clone(),
                fail_start: false,
            },
            crash,
        )
    }
}

impl ChildSpec for Probe {
    fn id(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.name)
    }

    fn start<'a>(&'a mut self, _registry: &'a Registry) -> BoxFuture<'a, Result<Child, BoxError>> {
        Box::pin(async move {
            if self.fail_start {
                return Err(format!("{} refuses to start", self.name).into());
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            let (name, crash) = (self.name, self.crash.clone());
            // Made before the task runs, so a stop is logged even if the task never got polled.
            let stop = LogOnDrop(self.log.clone(), name);
            let task = tokio::spawn(async move {
                let _stop = stop;
                crash.notified().await;
                Err::<(), BoxError>(format!("{name} crashed").into())
            });
            Ok(Child::task(task))
        })
    }
}

struct LogOnDrop(Log, &'static str);

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(format!("stop {}", self.1));
    }
}

async fn wait_for(log: &Log, entry: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().iter().filter(|e| *e == entry).count() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {entry:?} x{count}: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn starts_in_order_restarts_rest_for_one_and_stops_in_reverse() {
    let log: Log = Log::default();
    let (a, _a_crash) = Probe::new("a", &log);
    let (b, b_crash) = Probe::new("b", &log);
    let (c, _c_crash) = Probe::new("c", &log);
    let running = Supervisor::new()
        .child(a)
        .child(b)
        .child(c)
        .start()
        .await
        .unwrap();
    assert_eq!(*log.lock().unwrap(), ["start a", "start b", "start c"]);

    // b crashes: c then b stop, b then c start again; a is untouched.
    log.lock().unwrap().clear();
    b_crash.notify_one();
    wait_for(&log, "start c", 1).await;
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["stop b", "stop c", "start b", "start c"],
        "rest for one, the crashed child's own task ended first"
    );

    log.lock().unwrap().clear();
    running.shutdown().await;
    assert_eq!(
        *log.lock().unwrap(),
        ["stop c", "stop b", "stop a"],
        "shutdown in reverse order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_child_that_fails_to_start_stops_the_ones_before_it() {
    let log: Log = Log::default();
    let (a, _ac) = Probe::new("a", &log);
    let (mut b, _bc) = Probe::new("b", &log);
    b.fail_start = true;
    let err = Supervisor::new()
        .child(a)
        .child(b)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.child, "b");
    assert!(err.to_string().contains("refuses to start"), "{err}");
    assert_eq!(*log.lock().unwrap(), ["start a", "stop a"]);
}

#[tokio::test(start_paused = true)]
async fn too_many_restarts_stop_everything() {
    let log: Log = Log::default();
    let (a, _ac) = Probe::new("a", &log);
    let (b, b_crash) = Probe::new("b", &log);
    let running = Supervisor::new()
        .restart_intensity(2, Duration::from_secs(5))
        .child(a)
        .child(b)
        .start()
        .await
        .unwrap();
    // b crashes twice: restarted each time.
    for starts in 2..=3 {
        b_crash.notify_one();
        wait_for(&log, "start b", starts).await;
    }
    // A third crash within 5 s is one too many: everything stops, last first.
    log.lock().unwrap().clear();
    b_crash.notify_one();
    let reason = running.wait().await.unwrap_err();
    assert!(reason.contains("crashed too often"), "{reason}");
    assert_eq!(*log.lock().unwrap(), ["stop b", "stop a"]);
}

#[tokio::test(start_paused = true)]
async fn presences_start_on_their_pubsub_with_merged_options() {
    let running = Supervisor::new()
        .child(PubSubSpec::new(SupPubSub).node_name("node-a"))
        .child(SupPresence.child_spec(PresenceOptions::new().pool_size(3)))
        .start()
        .await
        .unwrap();
    let handle = PresenceHandle::<SupPresence>::from_registry(running.registry()).unwrap();
    assert_eq!(handle.pubsub().node_name(), "node-a");
    let config = PresenceOptions::new()
        .pool_size(3)
        .merged_over(&SupPresence::options())
        .tracker_config();
    assert_eq!(
        (config.pool_size, config.max_silent_periods),
        (3, 5),
        "child over attribute over defaults"
    );
    assert_eq!(
        handle.tracker().replicas().len(),
        3,
        "the tracker runs with the merged pool size"
    );
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_presence_without_its_pubsub_fails_to_start_with_a_clear_error() {
    let err = Supervisor::new()
        .child(SupPresence.child_spec(PresenceOptions::new()))
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SupPubSub"), "{err}");
    assert!(err.to_string().contains("not running"), "{err}");
}
