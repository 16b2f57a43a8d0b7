//! The per-socket outbound queue, shared by the connection, its channel tasks and the hubs.
//!
//! It is bounded twice: in frames and in bytes (the frames' encoded sizes). A push that would
//! pass either bound closes the socket with 1013, unless the queue is empty (one frame larger
//! than the whole budget, such as the `presence_state` of a huge room, still goes out).
//!
//! Once a client is behind (a quarter of its frames or an eighth of its bytes queued), a
//! `presence_diff` for a topic whose previous diff is still queued, with nothing queued after
//! it, is merged into it (see [`merge_diff`]) instead of taking another slot: a client that
//! reads slowly but steadily receives fewer, larger diffs, and is never closed for it. A
//! client that keeps up gets the frames shared with every other socket, encoded once.
//! Its bytes still count, so a client that stops reading entirely is closed once its budget is
//! spent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use presence_core::presence::{PRESENCE_DIFF, merge_diff};
use presence_core::pubsub::{Message, Payload};
use serde_json::Value;
use tokio::sync::Notify;

use crate::protocol::{Out, Vsn};

/// The most slots an empty queue keeps: the room a burst (a join's replies and
/// `presence_state`, a storm of diffs) took is freed once the writer has taken it all, so
/// a socket's idle queue stays small whatever its past.
const KEPT_SLOTS: usize = 4;

/// Close codes the server uses.
pub(crate) mod code {
    pub(crate) const NORMAL: u16 = 1000;
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    pub(crate) const POLICY: u16 = 1008;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const SERVICE_RESTART: u16 = 1012;
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why and how a socket closes: a close code and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    /// Whether a close frame should be written (false when the peer is already gone).
    pub(crate) send_frame: bool,
}

/// The bounds of one socket's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

/// A handle to one socket's outbound queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    handle: Arc<Handle>,
}

/// What every [`Outbox`] clone shares: when the last goes, those waiting for the close
/// ([`CloseRx::wait`]) are told that none can come.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.queue().senders_gone = true;
        self.shared.wake_ended();
    }
}

/// The receiving ends, owned by the connection.
#[derive(Debug)]
pub(crate) struct OutboxRx {
    pub(crate) frames: Frames,
    pub(crate) close: CloseRx,
}

/// Watches for the socket's close request. Cheap to clone.
///
/// Part of the queue's shared state rather than a `tokio::sync::watch` channel, which
/// costs about 400 bytes per socket (its notifier is eight cache-padded parts).
#[derive(Debug, Clone)]
pub(crate) struct CloseRx {
    shared: Arc<Shared>,
}

impl CloseRx {
    /// The close requested, if any.
    pub(crate) fn get(&self) -> Option<Close> {
        self.shared.queue().close
    }

    /// Resolves once a close is requested (with it), or once every [`Outbox`] is gone and
    /// none can be (with `None`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn wait(&self) -> Option<Close> {
        loop {
            let notified = self.shared.closing.notified();
            tokio::pin!(notified);
            // Registered before the check: a close requested after it wakes this wait.
            notified.as_mut().enable();
            if let Some(close) = self.shared.queue().ended() {
                return close;
            }
            notified.await;
        }
    }
}

/// What a websocket's writer sends next.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A queued frame.
    Frame(Out),
    /// The answer to a ping, with its payload.
    Pong(Bytes),
}

/// The writer's end of the queue.
#[derive(Debug)]
pub(crate) struct Frames {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Notified when a close is requested and when the last [`Outbox`] goes.
    closing: Notify,
    limits: Limits,
    vsn: Vsn,
}

impl Shared {
    /// The queue, locked; a poisoned lock is used as it is, by the sender and the writer
    /// alike.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes all that wait for the queue's end, once [`Queue::ended`] became `Some`: the
    /// close's waiters ([`CloseRx::wait`]) and the writer, which waits for frames and the end
    /// at once ([`Frames::recv_ws`]).
    fn wake_ended(&self) {
        self.closing.notify_waiters();
        self.ready.notify_one();
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    /// Sequence number of `items[0]`.
    first: u64,
    /// The queued diff each topic may still merge into: `(topic, sequence number)`. Any other
    /// frame clears it, so a merge never moves a diff past another frame.
    open: Vec<(Arc<str>, u64)>,
    /// The close requested: the first request wins. Once set, pushes are dropped.
    close: Option<Close>,
    /// Set when the last [`Outbox`] is dropped.
    senders_gone: bool,
    /// The payload of the last ping read and not answered yet: a websocket's writer sends its
    /// pong before the next frame. Only the last is answered (RFC 6455, section 5.5.3), so a
    /// client's pings take no more room than one.
    pong: Option<Bytes>,
    /// The most bytes queued at once (for the metrics).
    peak: usize,
}

impl Queue {
    /// `Some` once nothing more will be written: with the close requested, or with `None`
    /// when every [`Outbox`] went without one.
    fn ended(&self) -> Option<Option<Close>> {
        (self.close.is_some() || self.senders_gone).then_some(self.close)
    }
}

#[derive(Debug)]
enum Item {
    Frame(Out),
    Diff {
        /// The diff as broadcast, and those merged into it since.
        run: DiffRun,
        /// The first diff's shared encoding.
        out: Out,
        /// The sizes of the diffs it holds (a bound on the merged encoding).
        bytes: usize,
    },
}

/// A `presence_diff` and the diffs of its topic merged into it since (with [`merge_diff`]):
/// what a hub holds back within its window, and what a slow socket's queue holds.
#[derive(Debug)]
pub(crate) struct DiffRun {
    /// The first diff, as broadcast (shared with other sockets).
    first: Arc<Message>,
    /// Set once a second diff was merged in. Boxed: only a slow client's diffs merge, and
    /// every queued diff keeps room for it.
    merged: Option<Box<Value>>,
}

impl DiffRun {
    pub(crate) fn new(first: Arc<Message>) -> Self {
        DiffRun {
            first,
            merged: None,
        }
    }

    /// Merges `next` in; false, and nothing merged, when either is not a JSON diff.
    pub(crate) fn absorb(&mut self, next: &Message) -> bool {
        let (Payload::Json(first), Payload::Json(next)) = (self.first.payload(), next.payload())
        else {
            return false;
        };
        let acc = self.merged.get_or_insert_with(|| Box::new(first.clone()));
        merge_diff(acc, next).is_ok()
    }

    /// Whether anything was merged into the first diff.
    fn is_merged(&self) -> bool {
        self.merged.is_some()
    }

    /// The diff to send: the first as broadcast, or one carrying the merged payload (still
    /// marked with the first's merge window).
    pub(crate) fn into_message(self) -> Arc<Message> {
        match self.merged {
            None => self.first,
            Some(merged) => {
                let window = self.first.merge_window().unwrap_or_default();
                Arc::new(
                    Message::json(self.first.topic_arc().clone(), PRESENCE_DIFF, *merged)
                        .with_merge_window(window),
                )
            }
        }
    }
}

impl Item {
    fn bytes(&self) -> usize {
        match self {
            Item::Frame(out) => out.len(),
            Item::Diff { bytes, .. } => *bytes,
        }
    }
}

impl Outbox {
    pub(crate) fn new(limits: Limits, vsn: Vsn) -> (Outbox, OutboxRx) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            closing: Notify::new(),
            limits: Limits {
                frames: limits.frames.max(1),
                bytes: limits.bytes.max(1),
            },
            vsn,
        });
        (
            Outbox {
                handle: Arc::new(Handle {
                    shared: shared.clone(),
                }),
            },
            OutboxRx {
                frames: Frames {
                    shared: shared.clone(),
                },
                close: CloseRx { shared },
            },
        )
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.shared().queue()
    }

    /// Queues a frame without waiting. A full queue means the client does not keep up: the
    /// socket is closed with 1013 (see the crate docs, "Slow clients").
    pub(crate) fn send(&self, out: Out) {
        let full = {
            let mut queue = self.queue();
            queue.open.clear();
            self.push(&mut queue, Item::Frame(out))
        };
        self.after_push(full);
    }

    /// Queues a broadcast frame `out` encoding `message`: a `presence_diff` merges into the
    /// topic's queued diff when it can (see the module docs).
    pub(crate) fn send_broadcast(&self, out: Out, message: &Arc<Message>) {
        // Whatever the presence's window: merging here only ever spares a slow client.
        let mergeable =
            message.event() == PRESENCE_DIFF && matches!(message.payload(), Payload::Json(_));
        if !mergeable {
            return self.send(out);
        }
        let full = {
            let mut queue = self.queue();
            if queue.close.is_some() {
                return;
            }
            let topic = message.topic_arc();
            let first = queue.first;
            let open = queue
                .open
                .iter()
                .find(|(t, seq)| t == topic && *seq >= first)
                .map(|(_, seq)| (seq - first) as usize);
            // Merging makes this socket's diff its own (decoded, merged, encoded again): only
            // worth it once the client is behind; until then the shared frame is queued.
            let limits = self.shared().limits;
            let behind =
                queue.items.len() >= (limits.frames / 4).max(1) || queue.bytes >= limits.bytes / 8;
            let merged =
                behind && open.is_some_and(|i| merge_into(&mut queue.items[i], message, &out));
            if merged {
                crate::metrics::diff_coalesced_in_socket();
                queue.bytes += out.len();
                queue.peak = queue.peak.max(queue.bytes);
                let over = queue.bytes > self.shared().limits.bytes;
                over.then_some("outbound queue over its byte budget")
            } else {
                let seq = queue.first + queue.items.len() as u64;
                let full = self.push(
                    &mut queue,
                    Item::Diff {
                        run: DiffRun::new(message.clone()),
                        bytes: out.len(),
                        out,
                    },
                );
                queue.open.retain(|(t, _)| t != topic);
                queue.open.push((topic.clone(), seq));
                full
            }
        };
        self.after_push(full);
    }

    /// Appends `item` unless that passes a bound; returns why the socket must close, if so.
    fn push(&self, queue: &mut Queue, item: Item) -> Option<&'static str> {
        if queue.close.is_some() {
            return None;
        }
        let limits = self.shared().limits;
        let bytes = item.bytes();
        if !queue.items.is_empty() {
            if queue.items.len() >= limits.frames {
                return Some("outbound queue full");
            }
            if queue.bytes + bytes > limits.bytes {
                return Some("outbound queue over its byte budget");
            }
        }
        queue.bytes += bytes;
        queue.peak = queue.peak.max(queue.bytes);
        queue.items.push_back(item);
        None
    }

    fn after_push(&self, full: Option<&'static str>) {
        match full {
            None => self.shared().ready.notify_one(),
            Some(reason) => {
                if self.close(code::TRY_AGAIN_LATER, reason) {
                    crate::metrics::slow_close();
                    let limits = self.shared().limits;
                    tracing::warn!(
                        frames = limits.frames,
                        bytes = limits.bytes,
                        reason,
                        "closing a slow websocket client"
                    );
                }
            }
        }
    }

    /// Answers a ping: the writer sends a pong with `payload` before its next frame.
    pub(crate) fn pong(&self, payload: Bytes) {
        {
            let mut queue = self.queue();
            if queue.close.is_some() {
                return;
            }
            queue.pong = Some(payload);
        }
        self.shared().ready.notify_one();
    }

    /// Asks the connection to close with `code`. The first request wins; returns whether this
    /// one did.
    pub(crate) fn close(&self, code: u16, reason: &'static str) -> bool {
        self.request_close(Close {
            code,
            reason,
            send_frame: true,
        })
    }

    pub(crate) fn request_close(&self, close: Close) -> bool {
        let dropped = {
            let mut queue = self.queue();
            if queue.close.is_some() {
                return false;
            }
            queue.close = Some(close);
            // Nothing more will be written: free what is queued.
            queue.open.clear();
            queue.bytes = 0;
            queue.pong = None;
            std::mem::take(&mut queue.items)
        };
        drop(dropped);
        self.shared().wake_ended();
        true
    }

    /// The most bytes the queue held at once.
    pub(crate) fn peak_bytes(&self) -> usize {
        self.queue().peak
    }

    /// Frames and bytes queued (for tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> (usize, usize) {
        let queue = self.queue();
        (queue.items.len(), queue.bytes)
    }
}

/// Merges the diff `message` into `item`, a queued diff of the same topic.
fn merge_into(item: &mut Item, message: &Message, out: &Out) -> bool {
    let Item::Diff { run, bytes, .. } = item else {
        return false;
    };
    if !run.absorb(message) {
        return false;
    }
    *bytes += out.len();
    true
}

impl Frames {
    /// The next frame, waiting for one (for tests).
    #[cfg(test)]
    pub(crate) async fn recv(&self) -> Out {
        loop {
            if let Some(out) = self.try_recv() {
                return out;
            }
            self.shared.ready.notified().await;
        }
    }

    /// Wakes whoever waits in [`recv`](Self::recv) or on [`ready`](Self::ready) (a long poll
    /// that gives up its turn passes on a wake-up it may have taken).
    pub(crate) fn wake(&self) {
        self.shared.ready.notify_one();
    }

    /// Resolves when a frame may have been queued since the last wait (or a wake-up is
    /// pending). Then [`try_recv`](Self::try_recv) tells.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; a wake-up taken by a cancelled wait is lost, so a reader that gives up
    /// calls [`wake`](Self::wake).
    pub(crate) async fn ready(&self) {
        self.shared.ready.notified().await;
    }

    /// The next thing a websocket's writer sends, waiting for one: a pong first. Once a
    /// close is requested, `Err` with it before anything still queued (`Err(None)` once every
    /// [`Outbox`] is gone), so the writer waits on one future rather than two.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn recv_ws(&self) -> Result<Outgoing, Option<Close>> {
        loop {
            {
                let mut queue = self.shared.queue();
                if let Some(close) = queue.ended() {
                    return Err(close);
                }
                // The pong under the same lock (`try_recv_ws` takes it on its own).
                if let Some(payload) = queue.pong.take() {
                    return Ok(Outgoing::Pong(payload));
                }
            }
            if let Some(out) = self.try_recv() {
                return Ok(Outgoing::Frame(out));
            }
            // A close requested from here on leaves a wake-up (`request_close`).
            self.shared.ready.notified().await;
        }
    }

    /// The next thing a websocket's writer sends, if any: a pong first.
    pub(crate) fn try_recv_ws(&self) -> Option<Outgoing> {
        let pong = self.shared.queue().pong.take();
        match pong {
            Some(payload) => Some(Outgoing::Pong(payload)),
            None => self.try_recv().map(Outgoing::Frame),
        }
    }

    /// The next frame, if one is queued.
    pub(crate) fn try_recv(&self) -> Option<Out> {
        self.try_recv_within(usize::MAX)
    }

    /// The next frame, if one is queued and counts at most `limit` bytes (a merged diff is
    /// counted by the diffs it holds): a larger one stays queued.
    pub(crate) fn try_recv_within(&self, limit: usize) -> Option<Out> {
        loop {
            let item = {
                let mut queue = self.shared.queue();
                if queue.items.front()?.bytes() > limit {
                    return None;
                }
                let item = queue.items.pop_front()?;
                queue.first += 1;
                queue.bytes -= item.bytes().min(queue.bytes);
                if queue.items.is_empty() && queue.items.capacity() > KEPT_SLOTS {
                    // A burst is out: the room it took goes back to the allocator.
                    queue.items = VecDeque::new();
                }
                item
            };
            // Encoded outside the lock: the hubs keep pushing meanwhile.
            let run = match item {
                Item::Frame(out) => return Some(out),
                Item::Diff { run, out, .. } if !run.is_merged() => return Some(out),
                Item::Diff { run, .. } => run.into_message(),
            };
            let encoded = self
                .shared
                .vsn
                .broadcast(run.topic(), run.event(), run.payload());
            match encoded {
                Ok(out) => return Some(out),
                Err(error) => tracing::warn!(topic = run.topic(), %error,
                    "merged presence diff cannot be encoded; not sent"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn diff(join: &str, r: &str) -> Arc<Message> {
        let payload = json!({"joins": {join: {"metas": [{"phx_ref": r}]}}, "leaves": {}});
        Arc::new(Message::json("t", PRESENCE_DIFF, payload))
    }

    fn encode(message: &Message) -> Out {
        Vsn::V2
            .broadcast(message.topic(), message.event(), message.payload())
            .unwrap()
    }

    /// An outbox bounded at `frames` and `bytes`, speaking V2.
    fn outbox_of(frames: usize, bytes: usize) -> (Outbox, OutboxRx) {
        Outbox::new(Limits { frames, bytes }, Vsn::V2)
    }

    fn text(out: Out) -> Value {
        serde_json::from_str(&out.into_text().unwrap()).unwrap()
    }

    #[test]
    fn queued_diffs_of_a_topic_merge_until_another_frame_comes() {
        let (outbox, rx) = outbox_of(4, 1 << 20);
        for i in 0..10 {
            let m = diff(&format!("u{i}"), &format!("r{i}"));
            outbox.send_broadcast(encode(&m), &m);
        }
        assert_eq!(outbox.queued().0, 1, "ten diffs, one slot");
        outbox.send(Out::Text(Arc::from("x")));
        let m = diff("late", "rl");
        outbox.send_broadcast(encode(&m), &m);
        assert_eq!(outbox.queued().0, 3, "no merge past another frame");
        let first = text(rx.frames.try_recv().unwrap());
        assert_eq!(first[3], "presence_diff");
        assert_eq!(first[4]["joins"].as_object().unwrap().len(), 10);
        assert_eq!(rx.frames.try_recv(), Some(Out::Text(Arc::from("x"))));
        assert_eq!(
            text(rx.frames.try_recv().unwrap())[4]["joins"]["late"]["metas"][0]["phx_ref"],
            "rl"
        );
        assert!(rx.frames.try_recv().is_none());
        assert_eq!(outbox.queued(), (0, 0));
        assert!(rx.close.get().is_none());
    }

    #[test]
    fn the_byte_budget_closes_with_1013_but_one_big_frame_fits_an_empty_queue() {
        let (outbox, rx) = outbox_of(100, 100);
        outbox.send(Out::Text(Arc::from("y".repeat(500))));
        assert!(
            rx.close.get().is_none(),
            "one frame over the budget still goes out"
        );
        assert!(rx.frames.try_recv().is_some());
        for _ in 0..5 {
            outbox.send(Out::Text(Arc::from("z".repeat(30))));
        }
        let close = rx.close.get().expect("closed");
        assert_eq!(close.code, code::TRY_AGAIN_LATER);
        assert_eq!(outbox.queued(), (0, 0), "a closing socket's queue is freed");
        // Merged diffs count too.
        let (outbox, rx) = outbox_of(100, 100);
        for i in 0..10 {
            let m = diff(&format!("u{i}"), &format!("r{i}"));
            outbox.send_broadcast(encode(&m), &m);
        }
        assert_eq!(rx.close.get().map(|c| c.code), Some(code::TRY_AGAIN_LATER));
    }

    #[tokio::test]
    async fn a_close_wakes_every_waiter_and_the_first_request_wins() {
        let (outbox, rx) = outbox_of(4, 1 << 10);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let close = rx.close.clone();
                tokio::spawn(async move { close.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let sender = outbox.clone();
        assert!(sender.close(code::GOING_AWAY, "idle timeout"));
        assert!(
            !outbox.close(code::POLICY, "rate limited"),
            "the first request wins"
        );
        for waiter in waiters {
            let close = waiter.await.unwrap().expect("a close");
            assert_eq!(
                (close.code, close.reason),
                (code::GOING_AWAY, "idle timeout")
            );
        }
        // Set already: a new wait resolves at once.
        assert_eq!(
            rx.close.wait().await.map(|c| c.code),
            Some(code::GOING_AWAY)
        );
    }

    #[tokio::test]
    async fn a_wait_ends_with_none_when_the_last_outbox_goes() {
        let (outbox, rx) = outbox_of(4, 1 << 10);
        let close = rx.close.clone();
        let waiter = tokio::spawn(async move { close.wait().await });
        let second = outbox.clone();
        drop(outbox);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a clone still lives");
        drop(second);
        assert_eq!(waiter.await.unwrap(), None);
        assert_eq!(rx.close.get(), None);
    }

    #[test]
    fn an_emptied_queue_gives_back_the_room_of_a_burst() {
        let (outbox, rx) = outbox_of(100, 1 << 20);
        for i in 0..40 {
            outbox.send(Out::Text(Arc::from(format!("f{i}"))));
        }
        assert!(outbox.queue().items.capacity() >= 40);
        for i in 0..40 {
            assert_eq!(
                rx.frames.try_recv(),
                Some(Out::Text(Arc::from(format!("f{i}"))))
            );
        }
        assert!(outbox.queue().items.capacity() <= KEPT_SLOTS);
        // A small queue keeps its room: no allocation per frame at a steady trickle.
        outbox.send(Out::Text(Arc::from("a")));
        let kept = outbox.queue().items.capacity();
        assert!(rx.frames.try_recv().is_some());
        assert_eq!(outbox.queue().items.capacity(), kept);
    }

    #[tokio::test]
    async fn the_writer_hears_of_a_close_before_what_is_still_queued() {
        let (outbox, rx) = outbox_of(8, 1 << 10);
        outbox.send(Out::Text(Arc::from("a")));
        assert!(matches!(rx.frames.recv_ws().await, Ok(Outgoing::Frame(_))));
        // A writer waiting for a frame is woken by the close.
        let frames = rx.frames;
        let writer = tokio::spawn(async move { frames.recv_ws().await.err() });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        outbox.close(code::GOING_AWAY, "idle timeout");
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        let close = woken
            .expect("woken")
            .unwrap()
            .expect("a close")
            .expect("requested");
        assert_eq!(close.code, code::GOING_AWAY);
        // Once every outbox is gone, a waiting writer ends with no close.
        let (outbox, rx) = outbox_of(8, 1 << 10);
        let frames = rx.frames;
        let writer = tokio::spawn(async move { frames.recv_ws().await.err() });
        tokio::task::yield_now().await;
        drop(outbox);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        assert_eq!(woken.expect("woken").unwrap(), Some(None));
    }
}
