//! A small start-up supervisor: the pub/sub, then the presences, then the web endpoint.
//!
//! Children start in order, each finding the ones before it in the shared [`Registry`]. When a
//! child's task ends unexpectedly (an error or a panic), that child and every child after it
//! are stopped (last first) and started again (rest-for-one), so that a restarted pub/sub is
//! followed by presences that use it. Too many restarts in a short time stop everything.
//! Shutdown stops the children in reverse order.
//!
//! # Examples
//!
//! ```
//! use presence_core::presence::PresenceOptions;
//! use presence_core::supervisor::{BoxError, PubSubSpec, Supervisor, TaskSpec};
//! use presence_core::Presence;
//!
//! presence_core::pubsub_server!(pub AppPubSub);
//!
//! #[derive(Presence)]
//! #[presence(pubsub = AppPubSub)]
//! pub struct RoomPresence;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Supervisor::new()
//!     .child(PubSubSpec::new(AppPubSub))
//!     .child(RoomPresence.child_spec(PresenceOptions::new()))
//!     .child(TaskSpec::new("endpoint", |registry| async move {
//!         // Serve the web endpoint here, e.g. poem's `Server::run`, with `registry` as data.
//!         let _ = registry;
//!         std::future::pending::<Result<(), BoxError>>().await
//!     }))
//!     .start()
//!     .await?;
//! assert!(RoomPresence::running(app.registry())?.list("room:1").await.is_empty());
//! app.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::PubSub;
use crate::presence::{Presence, PresenceHandle, PresenceOptions};
use crate::pubsub::{Adapter, PubSubBuilder};
use crate::registry::{PubSubServer, Registry};

/// The error type children report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed future, as child specs return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How to start (and restart) one child.
pub trait ChildSpec: Send + 'static {
    /// A name for logs.
    fn id(&self) -> Cow<'static, str>;

    /// Starts the child, registering what it offers in `registry`.
    ///
    /// # Errors
    ///
    /// Any error: the supervisor stops what it started and reports it.
    fn start<'a>(&'a mut self, registry: &'a Registry) -> BoxFuture<'a, Result<Child, BoxError>>;
}

/// A started child: an optional task whose end is a crash, and how to stop it.
#[must_use = "a Child is stopped when dropped"]
pub struct Child {
    task: Option<JoinHandle<Result<(), BoxError>>>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("has_task", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

impl Child {
    /// A child with no task of its own (a registered service); `stop` undoes its start.
    pub fn service(stop: impl FnOnce() + Send + 'static) -> Self {
        Child {
            task: None,
            stop: Some(Box::new(stop)),
        }
    }

    /// A child that runs `task`; its end, other than by the supervisor stopping it, is a crash.
    pub fn task(task: JoinHandle<Result<(), BoxError>>) -> Self {
        Child {
            task: Some(task),
            stop: None,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The error of starting a supervisor.
#[derive(Debug, thiserror::Error)]
#[error("child `{child}` failed to start: {source}")]
pub struct StartError {
    /// The child that failed.
    pub child: String,
    /// Why.
    #[source]
    pub source: BoxError,
}

/// Collects children, then starts them in order.
#[must_use = "a supervisor does nothing until `start` is awaited"]
pub struct Supervisor {
    children: Vec<Box<dyn ChildSpec>>,
    registry: Registry,
    max_restarts: usize,
    within: Duration,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field(
                "children",
                &self.children.iter().map(|c| c.id()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// No children, a fresh registry, at most 3 restarts in 5 seconds.
    pub fn new() -> Self {
        Supervisor {
            children: Vec::new(),
            registry: Registry::new(),
            max_restarts: 3,
            within: Duration::from_secs(5),
        }
    }

    /// Uses `registry` instead of a fresh one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Adds a child, started after the ones added before it.
    pub fn child(mut self, spec: impl ChildSpec) -> Self {
        self.children.push(Box::new(spec));
        self
    }

    /// Gives up (stopping everything) after more than `max` restarts within `within`.
    pub fn restart_intensity(mut self, max: usize, within: Duration) -> Self {
        self.max_restarts = max;
        self.within = within;
        self
    }

    /// Starts every child in order and supervises them in a task.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming the first child that failed; those started before it are stopped.
    pub async fn start(mut self) -> Result<Running, StartError> {
        let mut running = Vec::with_capacity(self.children.len());
        for spec in &mut self.children {
            match spec.start(&self.registry).await {
                Ok(child) => running.push(child),
                Err(source) => {
                    stop_all(&mut running).await;
                    return Err(StartError {
                        child: spec.id().into_owned(),
                        source,
                    });
                }
            }
            tracing::debug!(child = %spec.id(), "started");
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let registry = self.registry.clone();
        let task = tokio::spawn(supervise(self, running, stop_rx));
        Ok(Running {
            registry,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

async fn stop_all(running: &mut Vec<Child>) {
    while let Some(child) = running.pop() {
        child.stop().await;
    }
}

/// Waits for a child task to end; pending forever when no child has a task.
async fn first_exit(running: &mut [Child]) -> (usize, Result<(), String>) {
    let waits = running.iter_mut().enumerate().filter_map(|(i, c)| {
        c.task.as_mut().map(|t| {
            Box::pin(async move {
                let result = match t.await {
                    Ok(Ok(())) => Err("exited".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (i, result)
            })
        })
    });
    let waits: Vec<_> = waits.collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    select_all(waits).await
}

/// The first of several futures to finish (a tiny `select_all`).
async fn select_all<F: Future + Unpin>(mut futures: Vec<F>) -> F::Output {
    std::future::poll_fn(move |cx| {
        for f in &mut futures {
            if let std::task::Poll::Ready(v) = Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn supervise(
    mut sup: Supervisor,
    mut running: Vec<Child>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        let (crashed, why) = tokio::select! {
            _ = &mut stop => {
                stop_all(&mut running).await;
                return Ok(());
            }
            (i, result) = first_exit(&mut running) => (i, result.err().unwrap_or_default()),
        };
        // Its task has ended and was awaited: stopping it must not await it again.
        running[crashed].task = None;
        let id = sup.children[crashed].id();
        tracing::error!(child = %id, reason = %why, "child crashed; restarting it and the children after it");
        let now = Instant::now();
        restarts.retain(|t| now.duration_since(*t) <= sup.within);
        restarts.push(now);
        if restarts.len() > sup.max_restarts {
            tracing::error!(child = %id, "too many restarts; stopping every child");
            stop_all(&mut running).await;
            return Err(format!("child `{id}` crashed too often: {why}"));
        }
        while running.len() > crashed {
            if let Some(child) = running.pop() {
                child.stop().await;
            }
        }
        for spec in &mut sup.children[crashed..] {
            match spec.start(&sup.registry).await {
                Ok(child) => running.push(child),
                Err(e) => {
                    tracing::error!(child = %spec.id(), error = %e, "restart failed; stopping every child");
                    stop_all(&mut running).await;
                    return Err(format!("child `{}` failed to restart: {e}", spec.id()));
                }
            }
        }
    }
}

/// A started supervisor. Dropping it stops every child.
#[must_use = "dropping Running stops every child"]
pub struct Running {
    registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The registry the children filled.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stops every child, last first, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the supervisor gives up (too many restarts) or is shut down.
    ///
    /// # Errors
    ///
    /// Why it gave up.
    pub async fn wait(mut self) -> Result<(), String> {
        match self.task.take() {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts a [`PubSub`] and registers it under its server name.
pub struct PubSubSpec<S: PubSubServer> {
    server: S,
    node_name: Arc<str>,
    build: Box<dyn Fn(PubSubBuilder) -> PubSubBuilder + Send>,
}

impl<S: PubSubServer> fmt::Debug for PubSubSpec<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubSpec")
            .field("server", &self.server.name())
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl<S: PubSubServer> PubSubSpec<S> {
    /// An in-process pub/sub for `server`, under a generated node name
    /// (`node-<pid>-<random>`, unique among nodes in practice). A single node needs nothing
    /// more; a node of a cluster sets an adapter and, for readable logs, a
    /// [`node_name`](Self::node_name).
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::supervisor::PubSubSpec;
    /// presence_core::pubsub_server!(pub AppPubSub);
    ///
    /// let single = PubSubSpec::new(AppPubSub);
    /// let named = PubSubSpec::new(AppPubSub).node_name("web-1");
    /// # let _ = (single, named);
    /// ```
    pub fn new(server: S) -> Self {
        let name = format!(
            "node-{}-{:06x}",
            std::process::id(),
            crate::meta::random_u64() & 0xff_ffff
        );
        PubSubSpec {
            server,
            node_name: name.into(),
            build: Box::new(|b| b),
        }
    }

    /// Sets this node's name, which must be unique among the nodes of a cluster (a node
    /// refuses to start under a name in use).
    pub fn node_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.node_name = name.into();
        self
    }

    /// Configures the builder on every start, e.g. to set an adapter made by `adapter`.
    pub fn with_adapter<A: Adapter>(mut self, adapter: impl Fn() -> A + Send + 'static) -> Self {
        self.build = Box::new(move |b| b.adapter(adapter()));
        self
    }
}

impl<S: PubSubServer> ChildSpec for PubSubSpec<S> {
    fn id(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.server.name())
    }

    fn start<'a>(&'a mut self, registry: &'a Registry) -> BoxFuture<'a, Result<Child, BoxError>> {
        Box::pin(async move {
            let pubsub = (self.build)(PubSub::builder(self.node_name.clone())).build();
            registry.insert_pubsub(&self.server, pubsub);
            let registry = registry.clone();
            Ok(Child::service(move || registry.remove_pubsub::<S>()))
        })
    }
}

/// Starts a presence on the pub/sub its declaration names, and registers it.
pub struct PresenceSpec<P: Presence> {
    presence: Arc<P>,
    options: PresenceOptions,
}

impl<P: Presence> fmt::Debug for PresenceSpec<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceSpec")
            .field("name", &P::NAME)
            .field("options", &self.options)
            .finish()
    }
}

impl<P: Presence> PresenceSpec<P> {
    /// `presence` with `options` merged over its declaration's.
    pub fn new(presence: P, options: PresenceOptions) -> Self {
        PresenceSpec {
            presence: Arc::new(presence),
            options,
        }
    }
}

impl<P: Presence> ChildSpec for PresenceSpec<P> {
    fn id(&self) -> Cow<'static, str> {
        Cow::Borrowed(P::NAME)
    }

    fn start<'a>(&'a mut self, registry: &'a Registry) -> BoxFuture<'a, Result<Child, BoxError>> {
        Box::pin(async move {
            let handle = PresenceHandle::start_in(registry, self.presence.clone(), &self.options)?;
            registry.insert(handle);
            let registry = registry.clone();
            Ok(Child::service(move || {
                registry.remove::<PresenceHandle<P>>()
            }))
        })
    }
}

/// A task child, e.g. the web endpoint: `run` is called with the registry on every start, and
/// the future it returns runs until it ends (a crash) or the supervisor stops it.
pub struct TaskSpec<F> {
    id: Cow<'static, str>,
    run: F,
}

impl<F> fmt::Debug for TaskSpec<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<F> TaskSpec<F> {
    /// A task child named `id`.
    pub fn new(id: impl Into<Cow<'static, str>>, run: F) -> Self {
        TaskSpec { id: id.into(), run }
    }
}

impl<F, Fut, E> ChildSpec for TaskSpec<F>
where
    F: FnMut(Registry) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn id(&self) -> Cow<'static, str> {
        self.id.clone()
    }

    fn start<'a>(&'a mut self, registry: &'a Registry) -> BoxFuture<'a, Result<Child, BoxError>> {
        let fut = (self.run)(registry.clone());
        Box::pin(async move {
            Ok(Child::task(tokio::spawn(async move {
                fut.await.map_err(Into::into)
            })))
        })
    }
}
