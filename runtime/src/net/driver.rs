//! The driver of this node's [`NodeCore`]: it feeds the core the packets peers send, its
//! timers and local figures, and carries out what the core asks (send a packet, a node is
//! dead). The core decides; this module only moves bytes and wakes up on time.
//!
//! Today the core runs membership and liveness: joining, heartbeats, the head's node table,
//! and deaths, which the head decides from how long it has not heard from a node (not from
//! a transport closing). Calls, objects and reference counts still run in
//! [`Cluster`]'s older code (issue 11 moves them onto the core next).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_abi::ObjectId;
use ferry_core::{
    Config, LocalEvent, LocalState, LocalView, NodeCore, NodeId, Output, Packet, Sender,
};

use crate::net::cluster::Cluster;
use crate::net::proto::{Member, NodeInfo, Response};

/// The core's view of the local object table. (Membership reads none of it yet.)
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
        let outputs: Vec<Output> = {
            let mut guard = self.lock_core();
            let Some(core) = guard.as_mut() else {
                return;
            };
            f(core);
            std::iter::from_fn(|| core.poll_output()).collect()
        };
        self.carry_out(outputs);
    }

    /// A packet a peer sent (`from` is the id its connection said `Hello` as, checked then
    /// against its certificate; the core checks it again).
    pub(super) fn on_packet(
        self: &Arc<Self>,
        from: u64,
        identity: ferry_core::Identity,
        packet: Packet,
    ) -> Response {
        let sender = Sender {
            node: NodeId(from),
            identity,
        };
        self.with_core(|core| core.handle_packet(Instant::now(), sender, packet, &NoObjects));
        Response::Ack
    }

    fn carry_out(self: &Arc<Self>, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send { to, packet, .. } => {
                    let c = self.clone();
                    self.runtime_handle().spawn(async move {
                        let req = crate::net::proto::Request::Packet(packet);
                        let sent = c.request(to.0, &req).await;
                        if to.0 != c.head_id() {
                            if let Err(e) = sent {
                                tracing::debug!("a message to node {to} was not delivered: {e}");
                            }
                            return;
                        }
                        // Loud once when the head cannot be reached, quiet again once it can.
                        match sent {
                            Ok(_) => c.head_warned.store(false, Ordering::Relaxed),
                            Err(e) if !c.head_warned.swap(true, Ordering::Relaxed) => {
                                tracing::warn!("cannot report to the head: {e}");
                            }
                            Err(_) => {}
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
                Output::Refused { from, what, reason } => tracing::warn!(
                    "refused {what} from node {} (certificate {}): {reason:?}",
                    from.node,
                    from.identity.cert
                ),
                other => tracing::debug!("core output not carried out yet: {other:?}"),
            }
        }
        self.sync_members();
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
