//! The driver of this node's [`NodeCore`]: it feeds the core the packets peers send, its
//! timers and local figures, and carries out what the core asks (send a packet, a node is
//! dead). The core decides; this module only moves bytes and wakes up on time.
//!
//! The core runs membership and liveness (joining, heartbeats, the head's node table, deaths
//! decided by the head from how long it has not heard from a node), calls placed on other
//! nodes (`Run`, `Done`, the inline-or-held rule, calls lost with their node) and reference
//! counts across nodes (borrows counted per holder at the owner, copies kept for owners, the
//! borrow-before-release order), and where objects are: a reader's core asks the owner's core
//! (`Locate`), which answers once the object is complete, and says which holder to fetch the
//! bytes from; this module moves the bytes (`Fetch`) and hands them to the waiters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_abi::ObjectId;
use ferry_core::{
    Completion, Config, Failure, Finished, LocalEvent, LocalState, LocalView, NodeCore, NodeId,
    Output, Packet, Placed, Sender, SubmitError, directory::Place,
};

use crate::error::{TaskError, TaskErrorKind};
use crate::net::cluster::{Cluster, PullError, Pulled, object_header, read_off_net, store_bytes};
use crate::net::proto::{Member, NodeInfo, Request, Response, WireTaskError};
use crate::objects::{Completed, ForeignWait, ObjectLocation, ObjectState, ObjectTable, WaitFlags};
use ferry_core::TaskSpec;

/// No objects: for inputs that read none.
struct NoObjects;

impl LocalView for NoObjects {
    fn local(&self, _id: ObjectId) -> Option<LocalState> {
        None
    }
}

impl Cluster {
    /// Starts this node's core: `head` is `None` on the head itself.
    pub(super) fn start_core(
        self: &Arc<Self>,
        head: Option<NodeId>,
        heartbeat: Duration,
        dead_after: Duration,
    ) {
        let me = self.info();
        let info = ferry_core::NodeInfo {
            id: NodeId(me.id),
            addr: me.addr,
            worker: me.worker,
            cores: me.cores,
        };
        let mut config = Config::new(info, self.identity(), head);
        config.heartbeat = heartbeat;
        config.dead_after = dead_after;
        config.seed = crate::ids::random_u64();
        *self.lock_core() = Some(NodeCore::new(Instant::now(), config));
        let c = self.clone();
        self.runtime_handle()
            .spawn(async move { c.core_timers().await });
        self.sync_members();
    }

    /// Runs `f` on the core (if it has started), then carries out what it output.
    fn with_core(self: &Arc<Self>, f: impl FnOnce(&mut NodeCore)) {
        let (outputs, version) = {
            let mut guard = self.lock_core();
            let Some(core) = guard.as_mut() else {
                return;
            };
            // The table's events (borrows, frees) that happened before this input go first.
            self.drain_events(core);
            f(core);
            let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
            (outputs, core.membership().version())
        };
        self.carry_out(outputs);
        // The table is copied only when it changed (not on every call's packets).
        if self.members_version.swap(version, Ordering::Relaxed) != version {
            self.sync_members();
        }
    }

    /// Packets a peer sent (`from` is the id its connection said `Hello` as, checked then
    /// against its certificate; the core checks it again).
    pub(super) fn on_packets(
        self: &Arc<Self>,
        from: u64,
        identity: ferry_core::Identity,
        packets: Vec<Packet>,
    ) -> Response {
        let sender = Sender {
            node: NodeId(from),
            identity,
        };
        let node = self.node();
        self.with_core(|core| {
            for packet in packets {
                let now = Instant::now();
                match &node {
                    Some(n) => core.handle_packet(now, sender, packet, &TableView(n.objects())),
                    None => core.handle_packet(now, sender, packet, &NoObjects),
                }
            }
        });
        // Bytes that came with a message the link holds back for ordering wait for it; bytes
        // nobody expects any more go.
        let calls = self.remote_calls.lock().unwrap_or_else(|e| e.into_inner());
        self.attachments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| calls.contains_key(id));
        Response::Ack
    }

    /// Whether an inline result for `result` from `from` is expected (a call this node placed
    /// there and that has not completed).
    pub(super) fn expects_inline(&self, result: ObjectId, from: u64) -> bool {
        self.remote_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&result)
            .is_some_and(|(_, at)| at.0 == from)
    }

    /// Keeps the bytes of an inline result until the core completes it.
    pub(super) fn attach(&self, id: ObjectId, sealed: Arc<crate::store::Sealed>) {
        self.attachments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, sealed);
    }

    /// Places a call this node submits. `Ok(Some(spec))`: it runs here (the caller runs
    /// it); `Ok(None)`: the core sent it to another node, or it failed at once (its result is
    /// completed with the error); `Err`: no node runs calls.
    pub fn submit(self: &Arc<Self>, spec: TaskSpec) -> Result<Option<TaskSpec>, String> {
        let Some(node) = self.node() else {
            return Err("this node is stopping".into());
        };
        let (running, queued) = node.busy();
        let core_spec = spec.clone();
        let mut placed = None;
        self.with_core(|core| {
            let p = core.submit(
                Instant::now(),
                core_spec,
                running,
                queued,
                &TableView(node.objects()),
            );
            if let Ok(Placed::There(at)) = p {
                // Before the `Run` leaves (outputs are carried out after this closure).
                self.remote_calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(spec.result, (spec.clone(), at));
            }
            placed = Some(p);
        });
        match placed {
            None => Err("this node has left the cluster".into()),
            Some(Ok(Placed::Here)) => Ok(Some(spec)),
            Some(Ok(Placed::There(_))) => Ok(None),
            Some(Err(SubmitError::NoNode)) => Err("no live node in the cluster runs calls".into()),
            Some(Err(SubmitError::TooLarge { len, max })) => {
                let e = TaskError {
                    function: spec.function.clone(),
                    node: node.id(),
                    kind: TaskErrorKind::Host {
                        detail: format!(
                            "the call's in-band arguments take {len} bytes, larger than the \
                             limit of {max} bytes a call to another node carries; pass large \
                             values as Blob or Buffer (they travel as objects)"
                        ),
                    },
                };
                node.objects()
                    .complete(spec.result, Err(Arc::new(e)), &spec.held_refs());
                Ok(None)
            }
        }
    }

    /// Feeds the core the events queued while nobody else had it (`with_core` feeds them
    /// first whenever it runs).
    pub(super) async fn core_events(self: Arc<Self>) {
        loop {
            self.events.ready.notified().await;
            if self.is_stopping() {
                return;
            }
            self.with_core(|_| {});
        }
    }

    /// Feeds the core the queued events, in the order they happened (under the core's lock,
    /// before anything else reaches it).
    fn drain_events(&self, core: &mut NodeCore) {
        let batch = std::mem::take(&mut *self.events.lock());
        if batch.is_empty() {
            return;
        }
        let node = self.node();
        let now = Instant::now();
        for e in batch {
            match &node {
                Some(n) => core.handle_local(now, e, &TableView(n.objects())),
                None => core.handle_local(now, e, &NoObjects),
            }
        }
    }

    /// Feeds the core one local event now, after every event queued before it.
    pub(super) fn local_event(self: &Arc<Self>, e: LocalEvent) {
        let node = self.node();
        self.with_core(|core| {
            let now = Instant::now();
            match &node {
                Some(n) => core.handle_local(now, e, &TableView(n.objects())),
                None => core.handle_local(now, e, &NoObjects),
            }
        });
    }

    /// Runs a call the core accepted from `owner`, keeping its result here for the owner
    /// (one count, given back by the core's `Unhold`), and reports how it ended.
    fn run_for_peer(self: &Arc<Self>, spec: TaskSpec, owner: NodeId) {
        let c = self.clone();
        self.runtime_handle().spawn(async move {
            let Some(node) = c.node() else {
                return;
            };
            let result = spec.result;
            let function = spec.function.clone();
            let objects = node.objects().clone();
            let failed = |detail: String| {
                let e = TaskError {
                    function: function.clone(),
                    node: node.id(),
                    kind: TaskErrorKind::Host { detail },
                };
                Finished::Failed(encode_error(&e))
            };
            let early = if objects.contains(result) {
                Some(failed(format!(
                    "the result id {result} is already in use here"
                )))
            } else if let Err(detail) = c.ensure_module(&node, owner.0, spec.module).await {
                Some(failed(detail))
            } else {
                None
            };
            if let Some(finished) = early {
                c.local_event(LocalEvent::TaskFinished { result, finished });
                return;
            }
            // One count held for the owner (until the core's `Unhold`), one for the task; never
            // over an entry in use (checked again: the module load above may have taken a while).
            if !objects.insert_pending_new(result, 2) {
                let finished = failed(format!("the result id {result} is already in use here"));
                c.local_event(LocalEvent::TaskFinished { result, finished });
                return;
            }
            objects.mark_hosted(result);
            // The arguments are counted by their owners; objects this node owns are counted
            // here too, balancing the release when the call finishes.
            for id in spec.held_refs() {
                objects.retain(id);
            }
            node.clone().run(spec).await;
            let finished = match objects.state(result) {
                Some(ObjectState::Ready(s)) => Finished::Value {
                    len: s.len() as u64,
                    contained: objects.contained(result),
                },
                Some(ObjectState::Spilled(s)) => Finished::Value {
                    len: s.layout().total_len(),
                    contained: objects.contained(result),
                },
                Some(ObjectState::Failed(e)) => Finished::Failed(encode_error(&e)),
                other => failed(format!("the result vanished ({other:?})")),
            };
            // After the borrows of what the result holds (`local_event` feeds the queued
            // ones first).
            c.local_event(LocalEvent::TaskFinished { result, finished });
        });
    }

    /// A call this node placed elsewhere ended: complete its result.
    fn complete_remote(&self, id: ObjectId, completion: Completion) {
        let Some(node) = self.node() else {
            return;
        };
        let Some((spec, at)) = self
            .remote_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        else {
            return;
        };
        let outcome = match completion {
            Completion::Inline => match self
                .attachments
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
            {
                Some(sealed) => Ok((Completed::Local(sealed), Vec::new())),
                None => Err(Arc::new(task_error(
                    Failure::Refused("its result's bytes did not arrive".into()),
                    &spec.function,
                    at,
                ))),
            },
            // (The core keeps its length, for placement.)
            Completion::Held { contained, .. } => Ok((Completed::Elsewhere, contained)),
            Completion::Failed(f) => Err(Arc::new(task_error(f, &spec.function, at))),
        };
        node.objects().complete(id, outcome, &spec.held_refs());
    }

    /// Sends a packet, with the bytes of `attach` after it, on a stream of its own.
    fn send_packet(self: &Arc<Self>, to: NodeId, packet: Packet, attach: Option<ObjectId>) {
        let c = self.clone();
        self.runtime_handle().spawn(async move {
            let object = match (attach, c.node()) {
                (Some(id), Some(node)) => {
                    let objects = node.objects().clone();
                    drop(node);
                    read_off_net(&objects, id, Duration::from_secs(30))
                        .await
                        .ok()
                        .map(|(sealed, _)| sealed)
                }
                _ => None,
            };
            let sent = match object {
                Some(sealed) => {
                    let header = object_header(&sealed, Vec::new());
                    let req = Request::PacketWithObject(packet, header);
                    c.send_oneway(to.0, &req, Some(store_bytes(sealed))).await
                }
                None => {
                    c.send_oneway(to.0, &Request::Packets(vec![packet]), None)
                        .await
                }
            };
            c.report_sent(to, sent);
        });
    }

    /// Logs a send that failed: quietly for a peer (the core repeats what matters), loudly
    /// once for the head, and quiet again once the head answers.
    fn report_sent(&self, to: NodeId, sent: Result<(), crate::net::cluster::NetError>) {
        if to.0 != self.head_id() {
            if let Err(e) = sent {
                tracing::debug!("a message to node {to} was not delivered: {e}");
            }
            return;
        }
        match sent {
            Ok(()) => self.head_warned.store(false, Ordering::Relaxed),
            Err(e) if !self.head_warned.swap(true, Ordering::Relaxed) => {
                tracing::warn!("cannot report to the head: {e}");
            }
            Err(_) => {}
        }
    }

    fn carry_out(self: &Arc<Self>, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send { to, packet, attach } => self.send_packet(to, packet, attach),
                Output::Run { spec, owner } => self.run_for_peer(spec, owner),
                Output::Complete { id, completion } => self.complete_remote(id, completion),
                Output::Hold(id) => {
                    if let Some(node) = self.node() {
                        node.objects().retain(id);
                    }
                }
                Output::Unhold(id) => {
                    if let Some(node) = self.node() {
                        if id.owner() == node.id().0 {
                            node.objects().release(id);
                        } else {
                            node.objects().release_hosted(id);
                        }
                    }
                }
                Output::WatchLocal(id) => {
                    let c = self.clone();
                    self.runtime_handle().spawn(async move {
                        if let Some(node) = c.node() {
                            let objects = node.objects().clone();
                            drop(node);
                            objects.wait_many(&[id], 1, None, WaitFlags::All).await;
                            c.local_event(LocalEvent::Completed(id));
                        }
                    });
                }
                Output::NodeDead { node, reason } if node.0 == self.info().id => {
                    tracing::error!(
                        "the head declared this node dead ({reason}); the cluster no longer \
                         uses it: stop it and start it again"
                    );
                }
                Output::NodeDead { node, reason } => self.node_lost(node.0, &reason),
                // A node that has just joined is not in every table yet: its messages are
                // repeated, so this is no news.
                Output::Refused {
                    from,
                    what,
                    reason: reason @ ferry_core::membership::Refusal::NotAMember,
                } => tracing::debug!(
                    "refused {what} from node {} (certificate {}): {reason:?}",
                    from.node,
                    from.identity.cert
                ),
                Output::Refused { from, what, reason } => tracing::warn!(
                    "refused {what} from node {} (certificate {}): {reason:?}",
                    from.node,
                    from.identity.cert
                ),
                // Reads of a dead owner's objects ask the core, which knows.
                Output::Lost { .. } => {}
                Output::Fetch { id, from } => self.fetch_for_core(id, from),
                Output::Resolved { id, resolution } => self.resolved(id, resolution),
            }
        }
        self.core_changed.notify_one();
    }

    /// Copies the core's node table into the one the rest of `Cluster` reads (addresses,
    /// loads, who is alive), and lets `join` know once the head lists this node.
    fn sync_members(&self) {
        let (list, joined) = {
            let guard = self.lock_core();
            let Some(core) = guard.as_ref() else {
                return;
            };
            (core.members(), core.membership().joined())
        };
        if list.is_empty() {
            // The head has not answered yet: keep what `join` knows (the head's address).
            return;
        }
        {
            let mut members = self.lock_members();
            members.clear();
            for m in list {
                members.insert(
                    m.info.id.0,
                    Member {
                        info: NodeInfo {
                            id: m.info.id.0,
                            addr: m.info.addr,
                            worker: m.info.worker,
                            cores: m.info.cores,
                        },
                        load: m.load,
                        alive: m.alive,
                        reason: m.reason,
                    },
                );
            }
        }
        if joined {
            self.joined.notify_waiters();
            // A driver accepts no connections: it connects to every node, so that any node
            // can pull the objects it owns.
            if self.info().addr.is_none() {
                self.connect_to_all();
            }
        }
    }

    /// Waits until the head lists this node, at most `limit`.
    pub(super) async fn until_joined(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.joined.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let joined = self
                    .lock_core()
                    .as_ref()
                    .is_some_and(|c| c.membership().joined());
                if joined {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Calls the core's timers when they are due, with this node's load fresh for its
    /// reports.
    async fn core_timers(self: Arc<Self>) {
        let mut load_at: Option<Instant> = None;
        loop {
            if self.is_stopping() {
                return;
            }
            let next = self.lock_core().as_ref().and_then(|c| c.poll_timeout());
            let changed = self.core_changed.notified();
            match next {
                Some(t) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t.into()) => {}
                        () = changed => continue,
                    }
                }
                None => {
                    changed.await;
                    continue;
                }
            }
            let now = Instant::now();
            // The load reads the whole table: at most every 100 ms.
            let load = match load_at {
                Some(t) if now.duration_since(t) < Duration::from_millis(100) => None,
                _ => {
                    load_at = Some(now);
                    Some(self.load())
                }
            };
            self.with_core(|core| {
                if let Some(load) = load {
                    core.handle_local(now, LocalEvent::Load(load), &NoObjects);
                }
                core.handle_timeout(now);
            });
        }
    }
}

// ---- calls and reference counts through the core ----

/// Events of the local table for the core (first and last references to other nodes'
/// objects, frees, wants), in the order they happened. The table pushes them without
/// waiting for the core; whoever takes the core next feeds them to it first
/// (`Cluster::with_core`), and `core_events` does when nobody else comes.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    queue: std::sync::Mutex<Vec<LocalEvent>>,
    ready: tokio::sync::Notify,
}

impl EventQueue {
    /// Queues `e`.
    pub(crate) fn push(&self, e: LocalEvent) {
        self.lock().push(e);
        self.ready.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LocalEvent>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A local wait on another node's object, until the core resolves it.
pub(crate) enum Wait {
    /// A pull: the object's bytes (and the refs it contains), or why not.
    Fetch(tokio::sync::oneshot::Sender<Pulled>),
    /// A `wait`: called once the object is complete (or failed, or gone), unless the waiter
    /// left.
    Watch(std::sync::Weak<ForeignWait>, Box<dyn FnOnce() + Send>),
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fetch(_) => "Wait::Fetch",
            Self::Watch(..) => "Wait::Watch",
        })
    }
}

impl Cluster {
    /// Pulls another node's object: the core locates it at its owner and says where to
    /// fetch it from.
    pub(super) async fn pull_via_core(self: &Arc<Self>, id: ObjectId) -> Pulled {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .push(Wait::Fetch(tx));
        self.local_event(LocalEvent::Want { id, fetch: true });
        rx.await
            .unwrap_or_else(|_| Err(PullError::Unavailable("the node is stopping".into())))
    }

    /// Calls `done` once another node's object is complete, as its owner's core says.
    pub(super) fn watch_via_core(
        &self,
        id: ObjectId,
        interest: std::sync::Weak<ForeignWait>,
        done: Box<dyn FnOnce() + Send>,
    ) {
        self.waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .push(Wait::Watch(interest, done));
        self.events.push(LocalEvent::Want { id, fetch: false });
    }

    /// Where an object whose bytes are not on this node is, as the core knows: this node's
    /// own objects from its directory, other nodes' objects at their owner (unless it died).
    pub(super) fn core_location(&self, id: ObjectId) -> ObjectLocation {
        let owner = NodeId(id.owner());
        let guard = self.lock_core();
        let Some(core) = guard.as_ref() else {
            return ObjectLocation::Lost(owner);
        };
        if owner != core.id() {
            return match core.membership().dead(owner) {
                Some(_) => ObjectLocation::Lost(owner),
                None => ObjectLocation::Node(owner),
            };
        }
        match core.directory().place(id) {
            Some(Place::Held { at, .. }) => ObjectLocation::Node(*at),
            Some(Place::Running { .. }) => ObjectLocation::Pending,
            Some(Place::Lost { node, .. }) => ObjectLocation::Lost(*node),
            // The core forgot it: the table's entry outlived the copy.
            None => ObjectLocation::Lost(owner),
        }
    }

    /// Fetches the bytes the core asked for, and tells it how that went.
    fn fetch_for_core(self: &Arc<Self>, id: ObjectId, from: NodeId) {
        let c = self.clone();
        self.runtime_handle().spawn(async move {
            let Some(node) = c.node() else {
                return;
            };
            // The transfer runs as a task of its own: if it ends without an answer (a panic),
            // the core still hears that it failed, so no reader waits for ever.
            let inner = c.clone();
            let transfer =
                tokio::spawn(async move { inner.fetch_from(&*node, from.0, id).await }).await;
            let transfer = transfer.unwrap_or_else(|e| {
                Err(PullError::Unavailable(format!("the transfer failed: {e}")))
            });
            let result = match transfer {
                Ok(x) => {
                    c.fetched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, x);
                    Ok(())
                }
                Err(e) => {
                    let detail = format!("{e:?}");
                    c.fetch_errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, e);
                    Err(detail)
                }
            };
            c.local_event(LocalEvent::Fetched { id, from, result });
        });
    }

    /// The core resolved a want: hand the object (or the reason) to whoever waits for it.
    fn resolved(&self, id: ObjectId, resolution: ferry_core::Resolution) {
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let error = self
            .fetch_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let waiters = self
            .waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .unwrap_or_default();
        let mut still = Vec::new();
        for w in waiters {
            match (w, &resolution) {
                (Wait::Watch(interest, done), _) => {
                    if interest.strong_count() > 0 {
                        done();
                    }
                }
                (Wait::Fetch(tx), ferry_core::Resolution::Ready) => match &fetched {
                    Some(x) => {
                        let _ = tx.send(Ok(x.clone()));
                    }
                    // A watch's want ended before this pull's own was taken: that one
                    // follows and fetches.
                    None => still.push(Wait::Fetch(tx)),
                },
                (Wait::Fetch(tx), ferry_core::Resolution::Failed(f)) => {
                    let e = error.clone().unwrap_or_else(|| pull_error(f));
                    let _ = tx.send(Err(e));
                }
            }
        }
        if !still.is_empty() {
            self.waits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id)
                .or_default()
                .extend(still);
        }
    }
}

/// Why a want failed, as a pull error.
fn pull_error(f: &Failure) -> PullError {
    match f {
        Failure::Task(bytes) => match decode_error(bytes) {
            Ok(e) => PullError::Task(e),
            Err(e) => PullError::Unavailable(format!("its error does not decode: {e}")),
        },
        Failure::NodeDied { node, detail } => PullError::Died {
            node: *node,
            detail: detail.clone(),
        },
        Failure::Refused(why) => PullError::Unavailable(why.clone()),
        Failure::Gone => PullError::Lost,
    }
}

/// The core's view of the local object table.
pub(super) struct TableView<'a>(pub(super) &'a ObjectTable);

impl LocalView for TableView<'_> {
    fn local(&self, id: ObjectId) -> Option<LocalState> {
        Some(match self.0.state(id)? {
            ObjectState::Pending => LocalState::Pending,
            ObjectState::Ready(s) => LocalState::Ready {
                len: s.len() as u64,
            },
            ObjectState::Spilled(s) => LocalState::Ready {
                len: s.layout().total_len(),
            },
            ObjectState::Failed(e) => LocalState::Failed(Failure::Task(encode_error(&e))),
            ObjectState::Elsewhere => LocalState::Elsewhere,
        })
    }
}

/// A task error as the core carries it (opaque bytes: its flat wire form).
pub(super) fn encode_error(e: &TaskError) -> Vec<u8> {
    postcard::to_allocvec(&WireTaskError::from(e)).unwrap_or_default()
}

/// A task error from the bytes the core carries (`encode_error`'s output, from a peer: it
/// may not decode).
fn decode_error(bytes: &[u8]) -> Result<TaskError, postcard::Error> {
    postcard::from_bytes::<WireTaskError>(bytes).map(TaskError::from)
}

/// A failure the core reports for a call of `function` placed on `at`, as a task error.
pub(super) fn task_error(f: Failure, function: &str, at: NodeId) -> TaskError {
    let host = |detail: String| TaskError {
        function: function.to_owned(),
        node: at,
        kind: TaskErrorKind::Host { detail },
    };
    match f {
        Failure::Task(bytes) => decode_error(&bytes)
            .unwrap_or_else(|e| host(format!("node {at} sent an error that does not decode: {e}"))),
        Failure::NodeDied { node, detail } => TaskError {
            function: function.to_owned(),
            node,
            kind: TaskErrorKind::NodeDied { node, detail },
        },
        Failure::Refused(why) => host(format!("node {at} refused the call: {why}")),
        Failure::Gone => host(format!("node {at} no longer has the result")),
    }
}
