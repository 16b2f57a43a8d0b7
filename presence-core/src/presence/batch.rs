//! One `presence_state` listing for a batch of joiners of the same topic.
//!
//! A joiner needs a listing taken after it subscribed to the topic's diffs, so a listing made
//! for an earlier joiner cannot serve it. Joiners are therefore batched: the first caller after
//! a quiet period lists at once; callers that arrive while that batch is recent join the next
//! batch, which lists once the window since the previous listing has passed, for all of them.
//! Every member of a batch called before its listing started, so the listing serves them all.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// The shared listings of one presence, per topic.
pub(crate) struct StateBatches {
    window: Duration,
    topics: Mutex<HashMap<Arc<str>, TopicBatches>>,
}

#[derive(Default)]
struct TopicBatches {
    /// The batch that has not started listing yet, if any: new callers join it.
    pending: Option<watch::Receiver<Outcome>>,
    last_start: Option<Instant>,
}

#[derive(Clone)]
enum Outcome {
    Waiting,
    Done(Arc<str>),
    /// The leader was cancelled before listing: the members start over.
    Abandoned,
}

/// Marks a batch abandoned unless its leader finished it.
struct Lead {
    tx: watch::Sender<Outcome>,
    done: bool,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.done {
            self.tx.send_replace(Outcome::Abandoned);
        }
    }
}

impl StateBatches {
    pub(crate) fn new(window: Duration) -> Self {
        StateBatches {
            window,
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// The listing of `topic` for a caller that is already subscribed to its diffs: made by
    /// `list` at once after a quiet period, or shared with the callers of the same window.
    pub(crate) async fn get<F, Fut>(&self, topic: &str, list: F) -> Arc<str>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Arc<str>>,
    {
        if self.window.is_zero() {
            return list().await;
        }
        loop {
            let joined = {
                let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                if topics.len() > 64 {
                    let window = self.window;
                    topics.retain(|_, t| {
                        t.pending.is_some() || t.last_start.is_some_and(|s| now < s + window)
                    });
                }
                let entry = topics.entry(Arc::from(topic)).or_default();
                match &entry.pending {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(Outcome::Waiting);
                        entry.pending = Some(rx);
                        let at = entry.last_start.map_or(now, |s| (s + self.window).max(now));
                        Ok((Lead { tx, done: false }, at))
                    }
                }
            };
            match joined {
                Ok((mut lead, at)) => {
                    if at > Instant::now() {
                        sleep_until(at).await;
                    }
                    {
                        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
                        let entry = topics.entry(Arc::from(topic)).or_default();
                        entry.pending = None;
                        entry.last_start = Some(Instant::now());
                    }
                    let state = list().await;
                    lead.tx.send_replace(Outcome::Done(state.clone()));
                    lead.done = true;
                    return state;
                }
                Err(mut rx) => {
                    let outcome = rx
                        .wait_for(|o| !matches!(o, Outcome::Waiting))
                        .await
                        .map(|o| o.clone());
                    match outcome {
                        Ok(Outcome::Done(state)) => return state,
                        // Abandoned, or the leader's sender is gone: start over.
                        _ => {
                            let mut topics =
                                self.topics.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(entry) = topics.get_mut(topic)
                                && entry.pending.as_ref().is_some_and(|p| p.same_channel(&rx))
                            {
                                entry.pending = None;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn raw(n: usize) -> Arc<str> {
        Arc::from(n.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn callers_of_one_window_share_a_listing_that_starts_after_they_called() {
        let batches = Arc::new(StateBatches::new(Duration::from_millis(50)));
        let lists = Arc::new(AtomicUsize::new(0));
        let list = {
            let lists = lists.clone();
            move || {
                let n = lists.fetch_add(1, Ordering::SeqCst) + 1;
                async move { raw(n) }
            }
        };
        // After a quiet period: at once.
        let first = batches.get("t", list.clone()).await;
        assert_eq!(first.as_ref(), "1");
        // Ten callers within the window share the second listing, made when it ends.
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (b, l) = (batches.clone(), list.clone());
            tasks.push(tokio::spawn(async move { b.get("t", l).await }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().as_ref(), "2");
        }
        assert_eq!(lists.load(Ordering::SeqCst), 2);
        // Another topic is not held back by this one.
        assert_eq!(batches.get("u", list.clone()).await.as_ref(), "3");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_hands_over() {
        let batches = Arc::new(StateBatches::new(Duration::from_millis(50)));
        let list = || async { raw(7) };
        batches.get("t", list).await;
        // The next batch's leader waits for the window; cancel it while a member waits.
        let leader = {
            let b = batches.clone();
            tokio::spawn(async move { b.get("t", list).await })
        };
        tokio::task::yield_now().await;
        let member = {
            let b = batches.clone();
            tokio::spawn(async move { b.get("t", list).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(member.await.unwrap().as_ref(), "7");
    }

    #[tokio::test]
    async fn zero_window_lists_every_time() {
        let batches = StateBatches::new(Duration::ZERO);
        let lists = AtomicUsize::new(0);
        for _ in 0..3 {
            batches
                .get("t", || async {
                    lists.fetch_add(1, Ordering::SeqCst);
                    raw(0)
                })
                .await;
        }
        assert_eq!(lists.load(Ordering::SeqCst), 3);
    }
}
