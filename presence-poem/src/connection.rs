//! One websocket connection: a control loop that reads frames and routes them to channel
//! tasks, and a writer that drains the outbound queue. Both run inside the task poem spawns
//! for the upgraded connection; the channel tasks are owned by the control loop, which stops
//! them (and waits for them, within a deadline) when the socket closes.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use poem::http::Extensions;
use poem::web::websocket::{CloseCode, Message as WsMessage, WebSocketStream};
use presence_core::Registry;
use presence_core::pubsub::{Message, Payload, RecvError, Subscription};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::StopReason;
use crate::context::{ChannelContext, Cmd, SocketShared, Start};
use crate::outbox::{Close, Outbox, OutboxRx, code};
use crate::protocol::{Inbound, Out, PHOENIX_TOPIC, Raw, Vsn, event};
use crate::socket::{Drain, Inner};

/// Capacity of the command queue from the connection to one channel task.
const CHANNEL_QUEUE: usize = 16;
/// Frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Serves one upgraded websocket until it closes.
///
/// The setup runs before the returned future exists, so that the future does not keep room
/// for its arguments (an unsplit `WebSocketStream` is a few hundred bytes) for its whole
/// life: it is one of the 10k futures a 10k-socket server holds.
pub(crate) fn run(
    stream: WebSocketStream,
    inner: Arc<Inner>,
    vsn: Vsn,
    assigns: Extensions,
    id: Option<Arc<str>>,
    registry: Registry,
) -> impl Future<Output = ()> + Send + 'static {
    // Counted as open (for a drain) until the returned future ends.
    let (open, draining) = Drain::enter(&inner);
    let (outbox, OutboxRx { frames, close }) = Outbox::new(inner.config.outbound_capacity);
    let socket = Arc::new(SocketShared {
        assigns,
        id,
        key: inner.hubs.socket_key(),
        vsn,
        outbox: outbox.clone(),
        hubs: inner.hubs.clone(),
        registry,
    });
    let (sink, stream) = stream.split();
    let deadline = inner.config.shutdown_timeout;
    let control = Control {
        inner,
        socket,
        channels: HashMap::new(),
        dying: Vec::new(),
        close: close.clone(),
        draining,
    };
    let writer = write_loop(sink, frames, close, outbox, deadline);
    futures_util::future::join(writer, control.run(stream)).map(move |((), ())| drop(open))
}

fn to_ws(out: Out) -> WsMessage {
    match out {
        Out::Text(text) => WsMessage::Text(text.to_string()),
        Out::Binary(bytes) => WsMessage::Binary(bytes.to_vec()),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocketStream, WsMessage>,
    mut frames: mpsc::Receiver<Out>,
    mut close: watch::Receiver<Option<Close>>,
    outbox: Outbox,
    deadline: std::time::Duration,
) {
    let requested = loop {
        tokio::select! {
            biased;
            _ = close.changed() => break *close.borrow(),
            out = frames.recv() => {
                let Some(out) = out else { break None };
                // Boxed: only the idle state of this loop stays in every socket's task.
                let write = Box::pin(async {
                    sink.feed(to_ws(out)).await?;
                    for _ in 1..WRITE_BATCH {
                        match frames.try_recv() {
                            Ok(out) => sink.feed(to_ws(out)).await?,
                            Err(_) => break,
                        }
                    }
                    sink.flush().await
                });
                tokio::select! {
                    biased;
                    _ = close.changed() => break *close.borrow(),
                    written = write => if let Err(error) = written {
                        tracing::debug!(%error, "websocket write failed");
                        outbox.request_close(Close { code: code::INTERNAL, reason: "write failed", send_frame: false });
                        break None;
                    }
                }
            }
        }
    };
    Box::pin(close_sink(sink, requested, deadline)).await;
}

/// Writes the close frame, if any, and closes the sink.
async fn close_sink(
    mut sink: SplitSink<WebSocketStream, WsMessage>,
    requested: Option<Close>,
    deadline: std::time::Duration,
) {
    if let Some(Close {
        code,
        reason,
        send_frame: true,
    }) = requested
    {
        let frame = WsMessage::Close(Some((CloseCode::from(code), reason.to_owned())));
        let _ = timeout(deadline, sink.send(frame)).await;
    }
    let _ = timeout(deadline, sink.close()).await;
}

/// A joined channel, as the connection sees it.
#[derive(Debug)]
struct Joined {
    join_ref: Arc<str>,
    tx: mpsc::Sender<Box<Cmd>>,
    task: JoinHandle<()>,
}

struct Control {
    inner: Arc<Inner>,
    socket: Arc<SocketShared>,
    channels: HashMap<String, Joined>,
    /// Tasks of channels that have stopped but may not have finished yet.
    dying: Vec<JoinHandle<()>>,
    close: watch::Receiver<Option<Close>>,
    /// Turns true when the endpoint drains.
    draining: watch::Receiver<bool>,
}

/// Resolves once the endpoint drains (never when it cannot any more).
async fn drained(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn next_disconnect(sub: &mut Option<Subscription>) -> Arc<Message> {
    let Some(sub) = sub else {
        return std::future::pending().await;
    };
    loop {
        match sub.recv().await {
            Ok(message) if message.event() == "disconnect" => return message,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(_) => return std::future::pending().await,
        }
    }
}

impl Control {
    fn outbox(&self) -> &Outbox {
        &self.socket.outbox
    }

    async fn run(mut self, mut stream: SplitStream<WebSocketStream>) {
        let idle_timeout = self.inner.config.idle_timeout;
        let mut disconnect = self
            .socket
            .id
            .as_deref()
            .map(|id| self.socket.hubs.pubsub().subscribe(id));
        let mut draining = self.draining.clone();
        let idle = sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                _ = self.close.changed() => break,
                () = drained(&mut draining) => {
                    tracing::debug!("closing websocket: the endpoint is draining");
                    self.outbox().close(code::SERVICE_RESTART, "server shutting down");
                }
                () = &mut idle => {
                    tracing::debug!("closing idle websocket");
                    self.outbox().close(code::NORMAL, "idle timeout");
                }
                _ = next_disconnect(&mut disconnect) => {
                    tracing::debug!(id = ?self.socket.id, "socket disconnected by broadcast");
                    self.outbox().close(code::GOING_AWAY, "disconnected");
                }
                frame = stream.next() => {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    match frame {
                        // Boxed, as is `shutdown`: their states (joins, timeouts) are far
                        // larger than the idle loop's and would otherwise stay in every
                        // socket's task for its whole life.
                        Some(Ok(message)) => Box::pin(self.handle_frame(message)).await,
                        Some(Err(error)) => self.read_error(&error),
                        None => {
                            self.outbox().request_close(Close { code: code::NORMAL, reason: "", send_frame: false });
                        }
                    }
                }
            }
        }
        drop(disconnect);
        Box::pin(self.shutdown()).await;
    }

    fn read_error(&self, error: &io::Error) {
        let text = error.to_string();
        if text.contains("Space limit exceeded") || text.contains("too long") {
            tracing::warn!(%error, "closing websocket: message too big");
            self.outbox().close(code::TOO_BIG, "message too big");
        } else if text.contains("UTF-8") {
            tracing::warn!(%error, "closing websocket: invalid UTF-8");
            self.outbox()
                .close(code::INVALID_PAYLOAD, "invalid payload");
        } else {
            tracing::debug!(%error, "websocket read failed");
            self.outbox().request_close(Close {
                code: code::INTERNAL,
                reason: "read failed",
                send_frame: false,
            });
        }
    }

    async fn handle_frame(&mut self, message: WsMessage) {
        let decoded = match &message {
            WsMessage::Text(text) => self.socket.vsn.decode(Raw::Text(text)),
            WsMessage::Binary(bytes) => self.socket.vsn.decode(Raw::Binary(bytes)),
            WsMessage::Close(_) => {
                // tungstenite answers the close frame; the writer flushes it.
                self.outbox().request_close(Close {
                    code: code::NORMAL,
                    reason: "",
                    send_frame: false,
                });
                return;
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => return,
        };
        match decoded {
            Ok(inbound) => self.handle_inbound(inbound).await,
            Err(error) => {
                tracing::warn!(%error, "closing websocket: undecodable frame");
                self.outbox()
                    .close(code::INVALID_PAYLOAD, "invalid payload");
            }
        }
    }

    fn reply(
        &self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        status: &str,
        response: Value,
    ) {
        let encoded =
            self.socket
                .vsn
                .reply(join_ref, reference, topic, status, &Payload::Json(response));
        match encoded {
            Ok(out) => self.outbox().send(out),
            Err(error) => tracing::warn!(%error, topic, "reply cannot be encoded"),
        }
    }

    /// Forgets channels whose task has stopped taking commands.
    fn reap(&mut self) {
        let stopped: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, joined)| joined.tx.is_closed())
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in stopped {
            if let Some(joined) = self.channels.remove(&topic) {
                self.dying.push(joined.task);
            }
        }
        self.dying.retain(|task| !task.is_finished());
    }

    async fn handle_inbound(&mut self, msg: Inbound) {
        if msg.topic == PHOENIX_TOPIC && msg.event == event::HEARTBEAT {
            self.reply(
                None,
                msg.reference.as_deref(),
                PHOENIX_TOPIC,
                "ok",
                json!({}),
            );
            return;
        }
        if msg.event == event::JOIN {
            self.join(msg).await;
            return;
        }
        self.reap();
        let Some(joined) = self.channels.get(&msg.topic) else {
            if msg.event == event::LEAVE {
                let (join_ref, reference) = (msg.join_ref.as_deref(), msg.reference.as_deref());
                self.reply(join_ref, reference, &msg.topic, "ok", json!({}));
            } else {
                tracing::debug!(topic = %msg.topic, event = %msg.event, "ignoring unmatched topic");
                let reason = json!({"reason": "unmatched topic"});
                self.reply(None, msg.reference.as_deref(), &msg.topic, "error", reason);
            }
            return;
        };
        if msg
            .join_ref
            .as_deref()
            .is_some_and(|jr| jr != &*joined.join_ref)
        {
            tracing::debug!(topic = %msg.topic, event = %msg.event, "dropping message with a stale join_ref");
            return;
        }
        let cmd = if msg.event == event::LEAVE {
            Cmd::Leave {
                reference: msg.reference,
            }
        } else {
            Cmd::In {
                event: msg.event,
                reference: msg.reference,
                payload: msg.payload,
            }
        };
        // Waits when the channel is busy: backpressure on this client only. An error means
        // the channel just stopped; the message is dropped as Phoenix drops it.
        let _ = joined.tx.send(Box::new(cmd)).await;
    }

    async fn join(&mut self, msg: Inbound) {
        let Inbound {
            join_ref,
            reference,
            topic,
            payload,
            ..
        } = msg;
        let join_ref: Arc<str> =
            Arc::from(join_ref.or_else(|| reference.clone()).unwrap_or_default());
        let inner = self.inner.clone();
        let Some(route) = inner.route(&topic) else {
            tracing::debug!(%topic, "ignoring unmatched topic");
            let reason = json!({"reason": "unmatched topic"});
            self.reply(None, reference.as_deref(), &topic, "error", reason);
            return;
        };
        if let Some(old) = self.channels.remove(&topic) {
            self.stop_duplicate(&topic, old).await;
        }
        self.reap();
        if self.channels.len() >= self.inner.config.max_channels {
            tracing::warn!(%topic, max = self.inner.config.max_channels, "too many channels joined");
            let reason = json!({"reason": "too many channels joined"});
            self.reply(
                Some(&join_ref),
                reference.as_deref(),
                &topic,
                "error",
                reason,
            );
            return;
        }
        let params = match payload {
            Payload::Json(value) => value,
            _ => Value::Null,
        };
        let (tx, cmds) = mpsc::channel(CHANNEL_QUEUE);
        let (joined_tx, joined_rx) = oneshot::channel();
        let ctx = ChannelContext::new(
            Arc::from(topic.as_str()),
            join_ref.clone(),
            self.socket.clone(),
        );
        let mut task = (route.spawn)(Start {
            ctx,
            params,
            reference,
            joined: joined_tx,
            cmds,
        });
        // Like Phoenix, the socket waits for the join; a socket close interrupts it.
        let joined = tokio::select! {
            result = joined_rx => result.is_ok(),
            _ = self.close.changed() => {
                task.abort();
                false
            }
        };
        if joined {
            self.channels.insert(topic, Joined { join_ref, tx, task });
        } else {
            // Refused or crashed: the task is finishing (or aborted).
            let _ = timeout(self.inner.config.shutdown_timeout, &mut task).await;
            task.abort();
        }
    }

    /// Duplicate join: stops the old channel (which pushes `phx_close` for its join_ref) and
    /// waits for it, so the close reaches the client before the new join's reply.
    async fn stop_duplicate(&mut self, topic: &str, old: Joined) {
        let Joined {
            join_ref,
            tx,
            mut task,
        } = old;
        if tx.is_closed() {
            self.dying.push(task);
            return;
        }
        tracing::debug!(
            topic,
            "duplicate channel join; closing the existing channel"
        );
        let deadline = self.inner.config.shutdown_timeout;
        let _ = timeout(
            deadline,
            tx.send(Box::new(Cmd::Shutdown(StopReason::DuplicateJoin))),
        )
        .await;
        if timeout(deadline, &mut task).await.is_err() {
            task.abort();
            let close = self.socket.vsn.message(
                Some(&join_ref),
                Some(&join_ref),
                topic,
                event::CLOSE,
                &Payload::Json(json!({})),
            );
            if let Ok(out) = close {
                self.outbox().send(out);
            }
        }
    }

    /// Stops every channel (`terminate` with [`StopReason::Closed`]) and waits for their tasks,
    /// aborting those still running at the deadline.
    async fn shutdown(&mut self) {
        let mut tasks: Vec<JoinHandle<()>> = self
            .channels
            .drain()
            .map(|(_, joined)| joined.task) // dropping `tx` tells the channel to stop
            .collect();
        tasks.append(&mut self.dying);
        let deadline = Instant::now() + self.inner.config.shutdown_timeout;
        for mut task in tasks {
            tokio::select! {
                _ = &mut task => {}
                () = sleep_until(deadline) => task.abort(),
            }
        }
    }
}
