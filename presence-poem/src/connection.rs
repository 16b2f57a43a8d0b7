//! One websocket connection: a control loop that reads frames and routes them to channel
//! tasks, and a writer that drains the outbound queue. Both run inside the task spawned for
//! the upgraded connection (`upgrade::Upgrade::accept`); the channel tasks are owned by the
//! control loop, which stops them (and waits for them, within a deadline) when the socket
//! closes.
//!
//! The control loop never waits on a channel: commands are queued without waiting (a full
//! queue is answered `channel busy`), and joins run in their channel's task while the loop
//! goes on serving the socket (see the crate docs, "Channels and isolation").

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{FutureExt, StreamExt};
use poem::http::Extensions;
use presence_core::Registry;
use presence_core::pubsub::{Payload, RecvError, Subscription};
use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::StopReason;
use crate::cmdq;
use crate::context::{ChannelContext, Cmd, Replaced, SocketRegistry, SocketShared, Start};
use crate::metrics::{self, JoinOutcome as JoinMetric, SocketCounters};
use crate::outbox::{Close, CloseRx, Frames, Outbox, OutboxRx, Outgoing, code};
use crate::protocol::{Inbound, Out, PHOENIX_TOPIC, Raw, Vsn, event};
use crate::socket::{Drain, Inner, OpenGuard, RateLimit};
use crate::upgrade::WsStream;

/// Capacity of the command queue from the connection to one channel task. The last slot is
/// kept for a leave or a stop: client pushes are refused (`channel busy`) when only it is
/// free, so a busy channel can still be left or replaced.
const CHANNEL_QUEUE: usize = 16;
/// Frames read in a row before the read loop yields.
const YIELD_EVERY: u32 = 16;
/// Frames written before one flush.
const WRITE_BATCH: usize = 64;
/// The largest websocket frame written: a longer message goes out as fragments of this size
/// (RFC 6455, section 5.4; browsers and websocket libraries join them), so that a client
/// whose frames are bounded still receives a big room's `presence_state`.
const FRAGMENT: usize = 2048;
/// The bytes a write batch gathers before it writes them: a long message goes out in writes
/// of about this size.
const WRITE_CHUNK: usize = 16 * 1024;

/// The span of one socket, with stable field names: `remote_addr` (the TCP peer), `socket_id`
/// (the connect hook's id, if any) and `vsn`. Nothing from the query string or headers: they
/// may carry tokens.
pub(crate) fn span(req: &poem::Request, vsn: Vsn, id: Option<&str>) -> tracing::Span {
    let vsn = match vsn {
        Vsn::V1 => "1.0.0",
        Vsn::V2 => "2.0.0",
    };
    tracing::info_span!(
        "socket",
        remote_addr = %req.remote_addr(),
        socket_id = id,
        vsn,
    )
}

/// Serves one upgraded websocket until it closes.
///
/// The setup runs before the returned future exists, so that the future does not keep room
/// for its arguments (an unsplit `WebSocketStream` is a few hundred bytes) for its whole
/// life: it is one of the 10k futures a 10k-socket server holds.
pub(crate) fn run(
    stream: WsStream,
    inner: Arc<Inner>,
    vsn: Vsn,
    assigns: Extensions,
    id: Option<Arc<str>>,
    registry: Option<Registry>,
) -> impl Future<Output = ()> + Send + 'static {
    let (outbox, OutboxRx { frames, close }) = Outbox::new(inner.config.outbound, vsn);
    // Counted as open (for a drain) until its channels have stopped.
    let open = Drain::enter(&inner, &outbox);
    let socket = Arc::new(SocketShared {
        assigns,
        id,
        vsn,
        outbox: outbox.clone(),
        hubs: inner.hubs.clone(),
        registry: SocketRegistry::new(registry, &inner.no_registry_warned),
        status: inner.status.clone(),
    });
    let WsStream { reader, writer } = stream;
    let deadline = inner.config.shutdown_timeout;
    let control = Control::new(inner, socket, close.clone());
    let sent = control.inner.metrics.clone();
    let writer = write_loop(writer, frames, close, outbox, deadline, sent);
    let idle_timeout = control.inner.config.idle_timeout;
    // Boxed: inline, tungstenite's stream pushed every socket's task into a larger size class
    // (the sockets bench: about 350 bytes more per idle socket).
    let control = control.run(
        Box::new(reader),
        open,
        idle_timeout,
        idle_timeout,
        Transport::WebSocket,
    );
    futures_util::future::join(writer, control).map(|((), ())| ())
}

/// Which transport feeds a connection's control loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    LongPoll,
}

/// What a long-poll session is made of: its queue's receiving ends, the sender of its inbound
/// messages, and the future that serves it (its control loop) until it closes.
pub(crate) struct SessionParts<F> {
    pub(crate) rx: OutboxRx,
    /// Text and binary messages as a websocket would deliver them; a `Ping` only resets the
    /// idle timer (a poll: the client is still there).
    pub(crate) input: mpsc::Sender<WsMessage>,
    pub(crate) run: F,
}

/// The inbound queue of a long-poll session, in messages: a POST's batch (at most 100 from
/// phoenix.js) waits for room when the control loop is behind.
const SESSION_INPUT: usize = 128;

/// A long-poll session: the same control loop as a websocket's (channels, limits, drain,
/// `disconnect` broadcasts), fed by the POSTs' messages instead of a websocket, its queue
/// read by the polls instead of a writer. It closes when nothing arrives (no poll, no
/// message) for `first_idle` after it starts, and for `idle_timeout` after that.
pub(crate) fn session(
    inner: Arc<Inner>,
    vsn: Vsn,
    assigns: Extensions,
    id: Option<Arc<str>>,
    registry: Option<Registry>,
    first_idle: std::time::Duration,
    idle_timeout: std::time::Duration,
) -> SessionParts<impl Future<Output = ()> + Send + 'static> {
    let (outbox, rx) = Outbox::new(inner.config.outbound, vsn);
    let open = Drain::enter(&inner, &outbox);
    let socket = Arc::new(SocketShared {
        assigns,
        id,
        vsn,
        outbox,
        hubs: inner.hubs.clone(),
        registry: SocketRegistry::new(registry, &inner.no_registry_warned),
        status: inner.status.clone(),
    });
    let control = Control::new(inner, socket, rx.close.clone());
    let (input, mut messages) = mpsc::channel(SESSION_INPUT);
    let stream = futures_util::stream::poll_fn(move |cx| {
        messages
            .poll_recv(cx)
            .map(|m: Option<WsMessage>| m.map(Ok::<_, WsError>))
    });
    SessionParts {
        rx,
        input,
        run: control.run(stream, open, first_idle, idle_timeout, Transport::LongPoll),
    }
}

/// Opcodes of the frames the writer sends (RFC 6455, section 5.2).
mod op {
    pub(super) const CONTINUATION: u8 = 0x0;
    pub(super) const TEXT: u8 = 0x1;
    pub(super) const BINARY: u8 = 0x2;
    pub(super) const CLOSE: u8 = 0x8;
    pub(super) const PONG: u8 = 0xA;
}

/// Appends the header of a frame of `len` bytes. A server's frames are not masked (RFC 6455,
/// section 5.1), so the payload follows as it is.
fn push_header(buf: &mut Vec<u8>, opcode: u8, fin: bool, len: usize) {
    buf.push(if fin { 0x80 | opcode } else { opcode });
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The bytes of a write batch, and how many of them went out. The write loop keeps it across
/// a close that cuts a batch short: the batch holds whole frames only (a long message's
/// fragments are frames), so writing the rest before the close frame ends the stream on a
/// frame boundary (a control frame may come between fragments, RFC 6455, section 5.4).
#[derive(Debug, Default)]
struct Batch {
    buf: Vec<u8>,
    written: usize,
}

impl Batch {
    /// Writes what has not gone out yet, then empties the buffer (keeping its capacity).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: `written` counts every byte written.
    async fn write_out<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> std::io::Result<()> {
        while self.written < self.buf.len() {
            let n = io.write(&self.buf[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Ok(())
    }
}

/// Appends one message: one frame, or fragments of at most [`FRAGMENT`] bytes, and writes the
/// batch out whenever it holds [`WRITE_CHUNK`] bytes or more.
async fn feed<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: &mut Batch,
    out: Out,
    sent: &SocketCounters,
) -> std::io::Result<()> {
    let total = out.len();
    sent.frames_out.increment(1);
    sent.bytes_out.increment(total as u64);
    let (text, parts) = out.into_parts();
    let mut opcode = if text { op::TEXT } else { op::BINARY };
    if total == 0 {
        push_header(&mut batch.buf, opcode, true, 0);
        return Ok(());
    }
    let mut done = 0;
    for part in parts.iter().flatten() {
        for chunk in part.chunks(FRAGMENT) {
            done += chunk.len();
            push_header(&mut batch.buf, opcode, done == total, chunk.len());
            batch.buf.extend_from_slice(chunk);
            opcode = op::CONTINUATION;
            if batch.buf.len() >= WRITE_CHUNK {
                batch.write_out(io).await?;
            }
        }
    }
    Ok(())
}

/// Appends what the writer sends next: a queued message, or a pong.
async fn put<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: &mut Batch,
    next: Outgoing,
    sent: &SocketCounters,
) -> std::io::Result<()> {
    match next {
        Outgoing::Frame(out) => feed(io, batch, out, sent).await,
        Outgoing::Pong(payload) => {
            push_header(&mut batch.buf, op::PONG, true, payload.len());
            batch.buf.extend_from_slice(&payload);
            Ok(())
        }
    }
}

#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state (see Control::run)"
)]
fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    frames: Frames,
    close: CloseRx,
    outbox: Outbox,
    deadline: std::time::Duration,
    sent: Arc<SocketCounters>,
) -> impl Future<Output = ()> + use<W> {
    // An async block, for the reason given in `Control::run`.
    async move {
        let mut batch = Batch::default();
        let requested = loop {
            let next = match frames.recv_ws().await {
                Ok(next) => next,
                Err(requested) => break requested,
            };
            // Boxed: only the idle state of this loop stays in every socket's task.
            let write = Box::pin(async {
                put(&mut io, &mut batch, next, &sent).await?;
                for _ in 1..WRITE_BATCH {
                    match frames.try_recv_ws() {
                        Some(next) => put(&mut io, &mut batch, next, &sent).await?,
                        None => break,
                    }
                }
                batch.write_out(&mut io).await?;
                io.flush().await
            });
            tokio::select! {
                biased;
                requested = close.wait() => break requested,
                written = write => if let Err(error) = written {
                    tracing::debug!(%error, "websocket write failed");
                    outbox.request_close(Close { code: code::INTERNAL, reason: "write failed", send_frame: false });
                    break None;
                }
            }
            // Written: no socket keeps a buffer between batches.
            batch = Batch::default();
        };
        Box::pin(close_sink(io, batch, requested, deadline)).await;
    }
}

/// Writes the rest of a batch cut short and the close frame, if one is to be sent (RFC 6455,
/// section 5.5.1).
async fn close_sink<W: AsyncWrite + Unpin>(
    mut io: W,
    mut batch: Batch,
    requested: Option<Close>,
    deadline: std::time::Duration,
) {
    if let Some(Close {
        code,
        reason,
        send_frame: true,
    }) = requested
    {
        push_close(&mut batch.buf, code, reason);
        let _ = timeout(deadline, async {
            batch.write_out(&mut io).await?;
            io.flush().await
        })
        .await;
    }
}

/// Appends a close frame with `code` and `reason`, cut to the 123 bytes a control frame has
/// room for (at a character boundary).
fn push_close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    push_header(buf, op::CLOSE, true, 2 + reason.len());
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(reason);
}

/// A joined (or joining) channel, as the connection sees it.
#[derive(Debug)]
struct Joined {
    join_ref: Arc<str>,
    tx: cmdq::Sender<Box<Cmd>>,
    task: JoinHandle<()>,
    /// Set while the join runs. Boxed: most channels are joined, and this is per channel.
    pending: Option<Box<Pending>>,
}

/// A join in progress: its task settles it (joined or refused) through `joined`, unless the
/// connection gives up first (join timeout, leave, duplicate join).
#[derive(Debug)]
struct Pending {
    reference: Option<String>,
    /// The join message's own join_ref (null in a join without one), for replies to it.
    reply_join_ref: Option<Arc<str>>,
    joined: oneshot::Receiver<bool>,
    timeout: Pin<Box<Sleep>>,
    /// Messages for the topic that came while the join ran: handled once it has joined (as
    /// Phoenix handles a socket's messages in order), answered `unmatched topic` if not.
    queued: Vec<Inbound>,
    /// When the join came, and its route's pattern, for the join metrics.
    started: Instant,
    route: Arc<str>,
}

impl Pending {
    /// Gives up on the join unless its task settled it already: `Some(joined)` if it did,
    /// `None` if not (the task will neither reply nor run the channel).
    fn settle(&mut self) -> Option<bool> {
        self.joined.close();
        self.joined.try_recv().ok()
    }
}

/// How a pending join ended.
#[derive(Debug, Clone, Copy)]
enum JoinOutcome {
    /// Joined: the channel replied `ok` and takes commands.
    Joined,
    /// Refused or crashed: the channel replied `error` and stops.
    Failed,
    /// No answer within the join timeout.
    TimedOut,
}

/// The first pending join that has ended, if any.
fn poll_joins(
    channels: &mut HashMap<String, Joined>,
    cx: &mut Context<'_>,
) -> Poll<(String, JoinOutcome)> {
    for (topic, joined) in channels.iter_mut() {
        let Some(pending) = &mut joined.pending else {
            continue;
        };
        let outcome = match Pin::new(&mut pending.joined).poll(cx) {
            Poll::Ready(Ok(true)) => JoinOutcome::Joined,
            Poll::Ready(_) => JoinOutcome::Failed,
            Poll::Pending => match pending.timeout.as_mut().poll(cx) {
                Poll::Pending => continue,
                Poll::Ready(()) => match pending.settle() {
                    Some(true) => JoinOutcome::Joined,
                    Some(false) => JoinOutcome::Failed,
                    None => JoinOutcome::TimedOut,
                },
            },
        };
        return Poll::Ready((topic.clone(), outcome));
    }
    Poll::Pending
}

struct Control {
    inner: Arc<Inner>,
    socket: Arc<SocketShared>,
    channels: HashMap<String, Joined>,
    /// Tasks of channels that have stopped but may not have finished yet.
    dying: Vec<JoinHandle<()>>,
    close: CloseRx,
    /// Boxed: rarely touched compared with their size, and kept per socket.
    limits: Box<RateState>,
}

#[derive(Debug)]
struct RateState {
    messages: Bucket,
    joins: Bucket,
    abuse: Abuse,
}

/// A token bucket (see [`RateLimit`]).
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(self.limit.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Refused messages counted towards closing an abusive socket.
#[derive(Debug)]
struct Abuse {
    since: Instant,
    refused: u32,
}

/// The window over which refused messages are counted.
const ABUSE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a closing socket waits for the client's close frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads until the client's close frame (or the end of the stream, an error, or
/// [`CLOSE_WAIT`]), discarding everything else.
async fn finish_closing<S>(mut stream: S)
where
    S: futures_util::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let _ = timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Resolves when a `disconnect` broadcast reaches the socket's id. Boxed, and only for a
/// socket with an id: inline, its subscription and wait took 128 bytes of every socket's
/// task, with an id or without.
type Disconnect = Pin<Box<dyn Future<Output = ()> + Send>>;

fn disconnected(mut sub: Subscription) -> Disconnect {
    Box::pin(async move {
        loop {
            match sub.recv().await {
                Ok(message) if message.event() == "disconnect" => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(_) => return std::future::pending().await,
            }
        }
    })
}

impl Control {
    /// The control loop's state for a new socket of either transport, with full rate buckets.
    fn new(inner: Arc<Inner>, socket: Arc<SocketShared>, close: CloseRx) -> Self {
        let limits = Box::new(RateState {
            messages: Bucket::new(inner.config.message_rate),
            joins: Bucket::new(inner.config.join_rate),
            abuse: Abuse {
                since: Instant::now(),
                refused: 0,
            },
        });
        Control {
            inner,
            socket,
            channels: HashMap::new(),
            dying: Vec::new(),
            close,
            limits,
        }
    }

    fn outbox(&self) -> &Outbox {
        &self.socket.outbox
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    fn run<S>(
        mut self,
        mut stream: S,
        open: OpenGuard,
        first_idle: std::time::Duration,
        idle_timeout: std::time::Duration,
        transport: Transport,
    ) -> impl Future<Output = ()> + use<S>
    where
        S: futures_util::Stream<Item = Result<WsMessage, WsError>> + Unpin,
    {
        // An async block, not an `async fn`: an `async fn` keeps its arguments twice in its
        // state, as they were passed and as the locals they are moved into (184 bytes here,
        // in every socket's task).
        async move {
            let mut disconnect = self
                .socket
                .id
                .as_deref()
                .map(|id| disconnected(self.socket.hubs.pubsub().subscribe(id)));
            let idle = sleep(first_idle);
            tokio::pin!(idle);
            let mut handled: u32 = 0;
            let mut pause = false;
            loop {
                tokio::select! {
                    biased;
                    _ = self.close.wait() => break,
                    () = &mut idle => {
                        tracing::debug!("closing idle websocket");
                        // 1001, not 1000: phoenix.js does not reconnect after a 1000.
                        self.outbox().close(code::GOING_AWAY, "idle timeout");
                    }
                    () = poll_fn(|cx| disconnect.as_mut().map_or(Poll::Pending, |d| d.as_mut().poll(cx))) => {
                        // Done: not to be polled again.
                        disconnect = None;
                        tracing::debug!(id = ?self.socket.id, "socket disconnected by broadcast");
                        self.outbox().close(code::GOING_AWAY, "disconnected");
                    }
                    (topic, outcome) = poll_fn(|cx| poll_joins(&mut self.channels, cx)) => {
                        self.join_ended(&topic, outcome);
                    }
                    frame = stream.next() => {
                        idle.as_mut().reset(Instant::now() + idle_timeout);
                        handled += 1;
                        pause = handled.is_multiple_of(YIELD_EVERY);
                        match frame {
                            Some(Ok(message)) => {
                                // A long-poll session's pings are its polls resetting the idle
                                // timer, not client messages.
                                let keepalive = transport == Transport::LongPoll
                                    && matches!(message, WsMessage::Ping(_));
                                if !keepalive {
                                    let counters = &self.inner.metrics;
                                    counters.frames_in.increment(1);
                                    counters.bytes_in.increment(message.len() as u64);
                                }
                                self.handle_frame(&message);
                            }
                            Some(Err(error)) => self.read_error(&error),
                            None => {
                                self.outbox().request_close(Close { code: code::NORMAL, reason: "", send_frame: false });
                            }
                        }
                    }
                }
                // A client whose frames are all buffered would keep this loop busy: let the
                // writer (and the other tasks of this thread) run now and then. Outside the
                // `select!`, so that its output is not kept in the task's state meanwhile.
                if std::mem::take(&mut pause) {
                    tokio::task::yield_now().await;
                }
            }
            drop(disconnect);
            if let Some(close) = self.close.get() {
                metrics::closed(close.code, self.outbox().peak_bytes());
                let id = self.socket.id.as_ref();
                self.socket.status.closed(close.code, close.reason, id);
            }
            // Boxed: its state is far larger than the idle loop's and would otherwise stay in
            // every socket's task for its whole life.
            Box::pin(self.shutdown()).await;
            // A drain waits for the channels (their presences have left), not for the client.
            drop(open);
            // A close this side started: read (and drop) what the client still sends until its
            // close frame, so the closing handshake completes and the client sees our code.
            // Dropping the connection with unread data would reset it: the client would see 1006.
            let websocket = transport == Transport::WebSocket;
            if websocket && self.close.get().is_some_and(|c| c.send_frame) {
                Box::pin(finish_closing(stream)).await;
            }
        }
    }

    fn read_error(&self, error: &WsError) {
        if matches!(error, WsError::Capacity(_)) {
            tracing::warn!(%error, "closing websocket: message too big");
            self.outbox().close(code::TOO_BIG, "message too big");
        } else if matches!(error, WsError::Utf8(_)) {
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

    fn handle_frame(&mut self, message: &WsMessage) {
        let decoded = match message {
            WsMessage::Text(text) => self.socket.vsn.decode(Raw::Text(text.as_str())),
            WsMessage::Binary(bytes) => self.socket.vsn.decode(Raw::Binary(bytes)),
            WsMessage::Close(frame) => {
                // Answered with the client's code (RFC 6455, section 5.5.1) by the writer:
                // tungstenite's own answer goes nowhere (`upgrade::ReadOnly`).
                let code = frame.as_ref().map_or(code::NORMAL, |f| u16::from(f.code));
                self.outbox().request_close(Close {
                    code,
                    reason: "",
                    send_frame: true,
                });
                return;
            }
            WsMessage::Ping(payload) => {
                self.outbox().pong(payload.clone());
                return;
            }
            WsMessage::Pong(_) | WsMessage::Frame(_) => return,
        };
        match decoded {
            Ok(inbound) => {
                let heartbeat = inbound.topic == PHOENIX_TOPIC && inbound.event == event::HEARTBEAT;
                if heartbeat || self.within_rates(&inbound) {
                    self.handle_inbound(inbound);
                }
            }
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

    /// Whether `msg` is within the socket's rates; answers it `rate limited` (and closes an
    /// abusive socket with 1008) when not.
    fn within_rates(&mut self, msg: &Inbound) -> bool {
        let now = Instant::now();
        let limits = &mut self.limits;
        let joining = msg.event == event::JOIN;
        let within_messages = limits.messages.take(now);
        let allowed = within_messages && (!joining || limits.joins.take(now));
        if allowed {
            return true;
        }
        metrics::rate_limited(within_messages);
        if now.duration_since(limits.abuse.since) > ABUSE_WINDOW {
            limits.abuse = Abuse {
                since: now,
                refused: 0,
            };
        }
        limits.abuse.refused += 1;
        let refused = limits.abuse.refused;
        let bound = 2 * self.inner.config.message_rate.burst;
        if refused > bound {
            if self.outbox().close(code::POLICY, "rate limited") {
                tracing::warn!(
                    refused,
                    "closing a websocket client that floods past its rate limit"
                );
            }
            return false;
        }
        if refused == 1 {
            tracing::warn!(topic = %msg.topic, event = %msg.event,
                "websocket client over its rate limit: messages refused");
        }
        let reason = json!({"reason": "rate limited"});
        self.reply(
            msg.join_ref.as_deref(),
            msg.reference.as_deref(),
            &msg.topic,
            "error",
            reason,
        );
        false
    }

    fn handle_inbound(&mut self, msg: Inbound) {
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
            self.join(msg);
            return;
        }
        self.reap();
        let leave = msg.event == event::LEAVE;
        let Some(joined) = self.channels.get(&msg.topic) else {
            self.not_joined(&msg);
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
        if joined.pending.is_some() {
            if leave {
                self.cancel_join(&msg);
                return;
            }
            let full = match self
                .channels
                .get_mut(&msg.topic)
                .and_then(|j| j.pending.as_mut())
            {
                Some(pending) if pending.queued.len() < CHANNEL_QUEUE - 1 => {
                    pending.queued.push(msg);
                    return;
                }
                _ => true,
            };
            if full {
                self.busy(&msg.topic, msg.reference.as_deref());
            }
            return;
        }
        // Pushes leave the last slot free for a leave (or a stop).
        if !leave && joined.tx.capacity() <= 1 {
            self.busy(&msg.topic, msg.reference.as_deref());
            return;
        }
        let Inbound {
            join_ref,
            reference,
            topic,
            event,
            payload,
        } = msg;
        let cmd = if leave {
            Cmd::Leave { reference }
        } else {
            Cmd::In {
                event,
                reference,
                payload,
            }
        };
        // Never waits: a read loop blocked on one channel would stop serving the whole socket.
        let (cmd, full) = match joined.tx.try_send(Box::new(cmd)) {
            Ok(()) => return,
            Err(cmdq::TrySendError::Full(cmd)) => (cmd, true),
            Err(cmdq::TrySendError::Closed(cmd)) => (cmd, false),
        };
        let (event, reference) = match *cmd {
            Cmd::In {
                event, reference, ..
            } => (event, reference),
            Cmd::Leave { reference } => (event::LEAVE.to_owned(), reference),
            Cmd::Shutdown(_) => return,
        };
        if full {
            self.busy(&topic, reference.as_deref());
        } else {
            // The channel just stopped: answered as for a topic not joined.
            self.not_joined(&Inbound {
                join_ref,
                reference,
                topic,
                event,
                payload: Payload::Json(Value::Null),
            });
        }
    }

    /// Answers a message for a topic this socket has not joined.
    fn not_joined(&self, msg: &Inbound) {
        if msg.event == event::LEAVE {
            let (join_ref, reference) = (msg.join_ref.as_deref(), msg.reference.as_deref());
            self.reply(join_ref, reference, &msg.topic, "ok", json!({}));
        } else {
            tracing::debug!(topic = %msg.topic, event = %msg.event, "ignoring unmatched topic");
            let reason = json!({"reason": "unmatched topic"});
            self.reply(None, msg.reference.as_deref(), &msg.topic, "error", reason);
        }
    }

    /// Refuses a message its channel has no room for (see the crate docs, "Channels and
    /// isolation").
    fn busy(&self, topic: &str, reference: Option<&str>) {
        tracing::warn!(topic, "channel busy: message refused");
        let join_ref = self.channels.get(topic).map(|j| j.join_ref.clone());
        let reason = json!({"reason": "channel busy"});
        self.reply(join_ref.as_deref(), reference, topic, "error", reason);
    }

    /// Pushes `phx_close` for `join_ref` on `topic`.
    fn push_close(&self, topic: &str, join_ref: &str) {
        let close = self.socket.vsn.message(
            Some(join_ref),
            Some(join_ref),
            topic,
            event::CLOSE,
            &Payload::Json(json!({})),
        );
        if let Ok(out) = close {
            self.outbox().send(out);
        }
    }

    /// `phx_leave` for a topic whose join is pending: the join is abandoned, as phoenix.js
    /// does when its join push times out.
    fn cancel_join(&mut self, msg: &Inbound) {
        let Some(mut joined) = self.channels.remove(&msg.topic) else {
            return;
        };
        let settled = joined.pending.as_mut().and_then(|p| p.settle());
        let queued = joined
            .pending
            .as_mut()
            .map(|p| std::mem::take(&mut p.queued))
            .unwrap_or_default();
        match settled {
            Some(true) => {
                // It joined meanwhile: what came meanwhile, then the leave, as on any channel.
                joined.pending = None;
                self.channels.insert(msg.topic.clone(), joined);
                for queued in queued {
                    self.handle_inbound(queued);
                }
                self.handle_inbound(msg.clone());
            }
            Some(false) => {
                self.dying.push(joined.task);
                for queued in &queued {
                    self.not_joined(queued);
                }
                self.not_joined(msg);
            }
            None => {
                joined.task.abort();
                self.dying.push(joined.task);
                for queued in &queued {
                    self.not_joined(queued);
                }
                let reference = msg.reference.as_deref();
                self.reply(
                    Some(&joined.join_ref),
                    reference,
                    &msg.topic,
                    "ok",
                    json!({}),
                );
                self.push_close(&msg.topic, &joined.join_ref);
            }
        }
    }

    /// A pending join has ended.
    fn join_ended(&mut self, topic: &str, outcome: JoinOutcome) {
        if let Some(pending) = self.channels.get(topic).and_then(|j| j.pending.as_ref()) {
            let answer = match outcome {
                JoinOutcome::Joined => JoinMetric::Ok,
                JoinOutcome::Failed => JoinMetric::Error,
                JoinOutcome::TimedOut => JoinMetric::Timeout,
            };
            metrics::join_answered(&pending.route, answer, Some(pending.started.elapsed()));
        }
        match outcome {
            JoinOutcome::Joined => {
                let queued = self
                    .channels
                    .get_mut(topic)
                    .and_then(|joined| joined.pending.take())
                    .map(|p| p.queued)
                    .unwrap_or_default();
                for msg in queued {
                    self.handle_inbound(msg);
                }
            }
            // The channel replied and its task is finishing.
            JoinOutcome::Failed => {
                if let Some(joined) = self.channels.remove(topic) {
                    self.dying.push(joined.task);
                    for msg in joined.pending.map(|p| p.queued).unwrap_or_default() {
                        self.not_joined(&msg);
                    }
                }
            }
            JoinOutcome::TimedOut => {
                let Some(joined) = self.channels.remove(topic) else {
                    return;
                };
                let timeout = self.inner.config.join_timeout;
                tracing::warn!(%topic, ?timeout, "channel join timed out; aborting it");
                joined.task.abort();
                self.dying.push(joined.task);
                let Some(pending) = joined.pending else {
                    return;
                };
                let reason = json!({"reason": "join timeout"});
                let join_ref = pending.reply_join_ref.as_deref();
                self.reply(
                    join_ref,
                    pending.reference.as_deref(),
                    topic,
                    "error",
                    reason,
                );
                for msg in &pending.queued {
                    self.not_joined(msg);
                }
            }
        }
    }

    /// Starts a join: the channel's task runs it (after stopping the channel it replaces, if
    /// any) while this loop goes on; [`poll_joins`] sees it end.
    fn join(&mut self, msg: Inbound) {
        let Inbound {
            join_ref,
            reference,
            topic,
            payload,
            ..
        } = msg;
        // A join without a join_ref is answered without one, as Phoenix does; the channel's
        // join_ref (for its pushes and stale checks) is then the join's ref.
        let reply_join_ref: Option<Arc<str>> = join_ref.as_deref().map(Arc::from);
        let join_ref: Arc<str> = reply_join_ref
            .clone()
            .or_else(|| reference.as_deref().map(Arc::from))
            .unwrap_or_else(|| Arc::from(""));
        let inner = self.inner.clone();
        let refused = if topic.len() > inner.config.max_topic_length {
            Some("topic too long")
        } else if !self.channels.contains_key(&topic)
            && !self
                .socket
                .hubs
                .has_room_for(&topic, inner.config.max_topics)
        {
            Some("too many topics")
        } else {
            None
        };
        if let Some(reason) = refused {
            tracing::warn!(topic_len = topic.len(), reason, "join refused");
            metrics::join_refused(inner.route(&topic).map(|r| &r.label));
            self.refuse_join(
                reply_join_ref.as_deref(),
                reference.as_deref(),
                &topic,
                reason,
            );
            return;
        }
        let Some(route) = inner.route(&topic) else {
            tracing::debug!(%topic, "ignoring unmatched topic");
            metrics::join_refused(None);
            let reason = json!({"reason": "unmatched topic"});
            self.reply(None, reference.as_deref(), &topic, "error", reason);
            return;
        };
        let replaces = self
            .channels
            .remove(&topic)
            .and_then(|old| self.replace(&topic, old));
        self.reap();
        // Channels still shutting down count: they hold their resources until they end.
        if self.channels.len() + self.dying.len() >= self.inner.config.max_channels {
            tracing::warn!(%topic, max = self.inner.config.max_channels, "too many channels joined");
            metrics::join_refused(Some(&route.label));
            let reason = "too many channels joined";
            self.refuse_join(
                reply_join_ref.as_deref(),
                reference.as_deref(),
                &topic,
                reason,
            );
            return;
        }
        let params = match payload {
            Payload::Json(value) => value,
            _ => Value::Null,
        };
        let (tx, cmds) = cmdq::queue(CHANNEL_QUEUE);
        let (joined_tx, joined_rx) = oneshot::channel();
        let ctx = ChannelContext::new(
            Arc::from(topic.as_str()),
            join_ref.clone(),
            self.socket.clone(),
        );
        let task = (route.spawn)(Start {
            ctx,
            params,
            reference: reference.clone(),
            reply_join_ref: reply_join_ref.clone(),
            joined: joined_tx,
            cmds,
            this: tx.downgrade(),
            replaces,
            route: route.label.clone(),
        });
        let pending = Pending {
            reference,
            reply_join_ref,
            joined: joined_rx,
            timeout: Box::pin(sleep(self.inner.config.join_timeout)),
            queued: Vec::new(),
            started: Instant::now(),
            route: route.label.clone(),
        };
        self.channels.insert(
            topic,
            Joined {
                join_ref,
                tx,
                task,
                pending: Some(Box::new(pending)),
            },
        );
    }

    /// Answers a join `error` with `{"reason": reason}`.
    fn refuse_join(
        &self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        reason: &str,
    ) {
        self.reply(
            join_ref,
            reference,
            topic,
            "error",
            json!({ "reason": reason }),
        );
    }

    /// Duplicate join: asks the old channel to stop (it pushes `phx_close` for its join_ref).
    /// The new channel's task waits for it (within the shutdown deadline), so the close
    /// reaches the client before the new join's reply. A join still pending is abandoned at
    /// once, with a `phx_close` for its join_ref.
    fn replace(&mut self, topic: &str, mut old: Joined) -> Option<Replaced> {
        if let Some(pending) = &mut old.pending {
            match pending.settle() {
                Some(true) => {}
                Some(false) => {
                    self.dying.push(old.task);
                    return None;
                }
                None => {
                    old.task.abort();
                    self.dying.push(old.task);
                    self.push_close(topic, &old.join_ref);
                    return None;
                }
            }
        }
        tracing::debug!(
            topic,
            "duplicate channel join; closing the existing channel"
        );
        // Fits in the slot kept for stops, unless a leave or stop is already queued.
        let _ = old
            .tx
            .try_send(Box::new(Cmd::Shutdown(StopReason::DuplicateJoin)));
        Some(Replaced::new(
            old.join_ref,
            old.task,
            self.inner.config.shutdown_timeout,
        ))
    }

    /// Stops every channel (`terminate` with [`StopReason::Closed`]) and waits for their tasks,
    /// aborting those still running at the deadline. Joins still pending are aborted at once.
    async fn shutdown(&mut self) {
        let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(self.channels.len());
        // Dropping `tx` tells the channel to stop.
        for (_, joined) in self.channels.drain() {
            if joined.pending.is_some() {
                joined.task.abort();
            }
            tasks.push(joined.task);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

    /// A client's reading of `bytes`: every message, in order.
    fn read_all(bytes: Vec<u8>) -> Vec<WsMessage> {
        let config = WebSocketConfig::default().max_frame_size(Some(FRAGMENT));
        let mut client = WebSocket::from_raw_socket(Cursor::new(bytes), Role::Client, Some(config));
        let mut read = Vec::new();
        loop {
            match client.read() {
                Ok(message) => read.push(message),
                // The end of the bytes, or of a close handshake.
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break,
                Err(e) => panic!("the client cannot read the frames: {e}"),
            }
        }
        read
    }

    /// Writes `outs` as one batch, as the write loop does, into bytes.
    async fn written(outs: Vec<Outgoing>) -> Vec<u8> {
        let sent = SocketCounters::register();
        let mut io = Vec::new();
        let mut batch = Batch::default();
        for next in outs {
            put(&mut io, &mut batch, next, &sent).await.unwrap();
        }
        batch.write_out(&mut io).await.unwrap();
        io
    }

    #[tokio::test]
    async fn a_client_reads_every_length_whole_and_in_order() {
        let mut outs = Vec::new();
        let mut expected = Vec::new();
        // Every length class of the header (7, 16 and 64 bits), around each boundary, and
        // past the fragment and the write chunk.
        for len in [
            0, 1, 125, 126, 127, 2047, 2048, 2049, 65535, 65536, 70_001, 200_000,
        ] {
            let text: String = "é✓abc".chars().cycle().take(len).collect();
            outs.push(Outgoing::Frame(Out::Text(text.as_str().into())));
            expected.push(WsMessage::text(text));
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            outs.push(Outgoing::Frame(Out::Binary(Bytes::from(bytes.clone()))));
            expected.push(WsMessage::binary(bytes));
        }
        let body: Arc<str> = "{\"k\":\"".to_owned().repeat(1000).into();
        let spliced = Vsn::V2.push_json(Some("1"), "room:1", "presence_state", &body);
        let Ok(text) = spliced.clone().into_text() else {
            panic!("a text frame")
        };
        outs.push(Outgoing::Frame(spliced));
        expected.push(WsMessage::text(text));
        outs.push(Outgoing::Pong(Bytes::from_static(b"ping")));
        expected.push(WsMessage::Pong(Bytes::from_static(b"ping")));
        let read = read_all(written(outs).await);
        assert_eq!(read.len(), expected.len());
        for (i, (read, expected)) in read.iter().zip(&expected).enumerate() {
            assert!(read == expected, "message {i} differs");
        }
    }

    #[tokio::test]
    async fn long_messages_go_out_in_writes_of_a_chunk() {
        /// Records the length of each write.
        struct Writes(Vec<usize>);
        impl AsyncWrite for Writes {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                self.0.push(buf.len());
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let sent = SocketCounters::register();
        let mut io = Writes(Vec::new());
        let mut batch = Batch::default();
        let out = Out::Binary(Bytes::from(vec![7u8; 300_000]));
        feed(&mut io, &mut batch, out, &sent).await.unwrap();
        // 300,000 bytes in fragments of 2 KiB with 4-byte headers, written by the chunk; what
        // is left waits for the end of the batch.
        let total = 300_000 + 4 * 300_000usize.div_ceil(FRAGMENT);
        assert_eq!(io.0.iter().sum::<usize>() + batch.buf.len(), total);
        assert!(
            io.0.iter()
                .all(|&n| (WRITE_CHUNK..WRITE_CHUNK + FRAGMENT + 4).contains(&n))
        );
        assert!(batch.buf.len() < WRITE_CHUNK);
    }

    #[test]
    fn close_frames_carry_the_code_and_a_reason_cut_to_fit() {
        let close_frame = |code, reason| {
            let mut frame = Vec::new();
            push_close(&mut frame, code, reason);
            frame
        };
        let read = read_all(close_frame(1012, "rebalancing"));
        let [WsMessage::Close(Some(frame))] = &read[..] else {
            panic!("one close frame: {read:?}")
        };
        assert_eq!(u16::from(frame.code), 1012);
        assert_eq!(frame.reason.as_str(), "rebalancing");
        // 200 bytes of two-byte characters: cut at 122 bytes, a character boundary.
        let long = "é".repeat(100);
        let frame = close_frame(1000, &long);
        assert_eq!(frame.len(), 2 + 2 + 122);
        let read = read_all(frame);
        let [WsMessage::Close(Some(frame))] = &read[..] else {
            panic!("one close frame: {read:?}")
        };
        assert_eq!(frame.reason.as_str(), "é".repeat(61));
    }
}
