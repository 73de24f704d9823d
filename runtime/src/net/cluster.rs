//! A node's part in a cluster: its QUIC endpoint, its connections to the other nodes, the
//! head's node table, placement of calls, calls run for other nodes, and objects pulled from
//! them.
//!
//! Ownership follows Ray: the node that makes an object id (by `put`, or by submitting the
//! call that produces it) owns it. It counts its references and knows where its bytes are. A
//! call placed on another node produces its result there, and the result stays there (the
//! owner's core records where, `ferry_core::Place::Held`) until someone reads it; small results come back with
//! the reply. Readers on other nodes ask the owner where an object is and pull it from a
//! holder, straight into their own store.
//!
//! All network I/O runs on a small runtime of its own, so busy guests never delay keep-alives
//! or replies.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use ferry_abi::{ModuleId, ObjectId};
use quinn::{Connection, RecvStream, SendStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::OnceCell;

use crate::error::{GetError, TaskError};
use crate::ids::NodeId;
use crate::net::local::LocalNode;
use crate::net::proto::{
    self, Load, MAX_FRAME, Member, NodeInfo, ProtoError, Request, Response, WireObject,
};
use crate::net::tls::{self, Credentials, Identity, NODE_NAME, Role, TlsError};
use crate::objects::{
    BoxFuture, ForeignWait, ObjectLocation, ObjectState, ObjectTable, ObjectWithRefs,
    RemoteObjects, WaitFlags,
};
use crate::store::Sealed;
use ferry_core::LocalEvent;
use ferry_core::TaskSpec;

/// Largest module accepted from a peer.
pub const MAX_MODULE: u64 = 256 << 20;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster CA and this node's certificate.
    pub credentials: Credentials,
    /// Where to accept connections (`None`: a driver, which only connects out).
    pub listen: Option<SocketAddr>,
    /// The address other nodes should use to reach this one, when it differs from `listen`
    /// (required when `listen` is a wildcard such as `0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// The head to join (`None`: this node is the head).
    pub head: Option<SocketAddr>,
    /// Whether this node runs calls (drivers do not).
    pub worker: bool,
    /// A peer silent for this long is dead. Default: 5 s.
    pub idle_timeout: Duration,
    /// How often a node reports its load to the head. Default: 500 ms.
    pub heartbeat: Duration,
}

impl ClusterOptions {
    /// Options with the defaults.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            listen: None,
            advertise: None,
            head: None,
            worker: true,
            idle_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(500),
        }
    }
}

/// A node could not join or serve a cluster, or a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Certificates.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A connection could not be made or broke.
    #[error("connection to {peer} failed: {detail}")]
    Connection {
        /// The peer (address or node id).
        peer: String,
        /// What happened.
        detail: String,
    },
    /// The peer sent something that is not the protocol.
    #[error("protocol error from {peer}: {source}")]
    Protocol {
        /// The peer.
        peer: String,
        /// The decoder's error.
        #[source]
        source: ProtoError,
    },
    /// The peer answered with an error.
    #[error("{peer} refused: {message}")]
    Refused {
        /// The peer.
        peer: String,
        /// Its message.
        message: String,
    },
    /// The node is known to be dead.
    #[error("node {node} is dead ({reason})")]
    Dead {
        /// The node.
        node: NodeId,
        /// Why it is considered dead.
        reason: String,
    },
    /// The node is not known to the cluster.
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    /// The runtime could not start.
    #[error("could not start the network runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The certificate does not allow what was asked: a client certificate cannot run a
    /// node (run calls or accept connections).
    #[error(
        "this is a client certificate (number {cert}); a node needs a node certificate \
         (`ferry cert issue` without `--client`)"
    )]
    ClientCertificate {
        /// The certificate's number.
        cert: u32,
    },
}

fn conn_err(peer: impl std::fmt::Display, e: impl std::fmt::Display) -> NetError {
    NetError::Connection {
        peer: peer.to_string(),
        detail: e.to_string(),
    }
}

/// Why a pull failed; cloneable so that deduplicated waiters all get it.
#[derive(Debug, Clone)]
pub(super) enum PullError {
    Task(TaskError),
    Lost,
    Died { node: NodeId, detail: String },
    Unavailable(String),
}

impl PullError {
    fn into_get(self, id: ObjectId) -> GetError {
        match self {
            Self::Task(e) => GetError::Task(e),
            Self::Lost => GetError::ObjectLost { id },
            Self::Died { node, detail } => GetError::NodeDied { id, node, detail },
            Self::Unavailable(reason) => GetError::Unavailable { id, reason },
        }
    }
}

pub(super) type Pulled = Result<(Arc<Sealed>, Vec<ObjectId>), PullError>;

/// A module being fetched and loaded, shared by the calls that need it.
type ModuleLoad = Arc<OnceCell<Result<(), String>>>;

/// A node's membership in a cluster.
pub struct Cluster {
    me: NodeInfo,
    node: Weak<dyn LocalNode>,
    this: Weak<Cluster>,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    head: Option<SocketAddr>,
    head_id: AtomicU64,
    net: Handle,
    runtime: Mutex<Option<Runtime>>,
    /// The node table: authoritative on the head, the head's last answer elsewhere.
    members: Mutex<BTreeMap<u64, Member>>,
    peers: Mutex<HashMap<u64, Connection>>,
    dead: Mutex<HashMap<u64, String>>,
    /// Local waits on objects other nodes own, until the core resolves them (`driver.rs`).
    pub(super) waits: Mutex<HashMap<ObjectId, Vec<crate::net::driver::Wait>>>,
    /// Objects fetched for the core, until it resolves them.
    pub(super) fetched: Mutex<HashMap<ObjectId, ObjectWithRefs>>,
    /// Why fetches failed, for the waiters' errors.
    pub(super) fetch_errors: Mutex<HashMap<ObjectId, PullError>>,
    module_loads: Mutex<HashMap<ModuleId, ModuleLoad>>,
    modules_fetched: AtomicU64,
    bytes_pulled: AtomicU64,
    /// Loads reported so far (`Load::reports`).
    reports: AtomicU64,
    stopping: AtomicBool,
    /// Local events for the core (first and last references to other nodes' objects, frees,
    /// calls run for peers finishing), fed to it in order by `core_events`.
    pub(super) events: crate::net::driver::EventQueue,
    /// Calls placed on other nodes: their specs (for the argument counts they hold) and where
    /// they run, until the core completes them.
    pub(super) remote_calls: Mutex<HashMap<ObjectId, (TaskSpec, NodeId)>>,
    /// Inline results that arrived with their `Done`, until the core completes them.
    pub(super) attachments: Mutex<HashMap<ObjectId, Arc<Sealed>>>,
    /// This node's certificate identity.
    identity: Identity,
    /// The distributed core (membership and liveness so far; see `driver.rs`). `None` until
    /// a joining node knows its head.
    core: Mutex<Option<ferry_core::NodeCore>>,
    /// Woken when the core may want its timers called earlier.
    pub(super) core_changed: tokio::sync::Notify,
    /// Woken when the head's table may list this node.
    pub(super) joined: tokio::sync::Notify,
    /// Whether "cannot reach the head" was logged since the head last answered.
    pub(super) head_warned: AtomicBool,
    /// The core's table version last copied into `members` (`driver.rs`).
    pub(super) members_version: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

impl Cluster {
    /// Joins (or, without `head`, starts) a cluster as `node`, and connects the node's object
    /// table to it.
    pub fn start(node: Arc<dyn LocalNode>, opts: ClusterOptions) -> Result<Arc<Self>, NetError> {
        let identity = opts.credentials.identity();
        if (opts.worker || opts.listen.is_some()) && identity.role != Role::Node {
            return Err(NetError::ClientCertificate {
                cert: identity.cert,
            });
        }
        if let Some(l) = opts.listen
            && l.ip().is_unspecified()
            && opts.advertise.is_none()
        {
            return Err(NetError::Bind {
                addr: l,
                source: std::io::Error::other(
                    "a wildcard address cannot be given to other nodes; listen on a specific \
                     address or also give the address to advertise",
                ),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-net")
            // The worker (not the blocking pool, which never unparks as a worker) must never
            // do disk I/O: debug builds check.
            .on_thread_unpark(crate::objects::forbid_disk_io_on_this_thread)
            .enable_all()
            .build()
            .map_err(NetError::Runtime)?;
        let net = runtime.handle().clone();
        let client_config = opts.credentials.client_config(opts.idle_timeout)?;
        let endpoint = {
            let _guard = runtime.enter();
            let (addr, server) = match opts.listen {
                Some(addr) => (
                    addr,
                    Some(opts.credentials.server_config(opts.idle_timeout)?),
                ),
                None => {
                    let addr: SocketAddr = match opts.head {
                        Some(h) if h.ip().is_loopback() => "127.0.0.1:0",
                        Some(h) if h.is_ipv6() => "[::]:0",
                        _ => "0.0.0.0:0",
                    }
                    .parse()
                    .expect("a valid literal address");
                    (addr, None)
                }
            };
            let bind = |source| NetError::Bind { addr, source };
            let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
            tls::enlarge_socket_buffers(&socket);
            let runtime = quinn::default_runtime()
                .ok_or_else(|| bind(std::io::Error::other("no async runtime for quinn")))?;
            let mut endpoint =
                quinn::Endpoint::new(tls::endpoint_config(), server, socket, runtime)
                    .map_err(bind)?;
            endpoint.set_default_client_config(client_config.clone());
            endpoint
        };
        let me = NodeInfo {
            id: node.id().0,
            addr: match (opts.listen, opts.advertise) {
                (Some(_), Some(a)) => Some(a),
                (Some(_), None) => endpoint.local_addr().ok(),
                (None, _) => None,
            },
            worker: opts.worker,
            cores: node.cores(),
        };
        let cluster = Arc::new_cyclic(|this| Self {
            me: me.clone(),
            node: Arc::downgrade(&node),
            this: this.clone(),
            endpoint: endpoint.clone(),
            client_config,
            head: opts.head,
            head_id: AtomicU64::new(if opts.head.is_none() { me.id } else { 0 }),
            net: net.clone(),
            runtime: Mutex::new(Some(runtime)),
            members: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashMap::new()),
            waits: Mutex::new(HashMap::new()),
            fetched: Mutex::new(HashMap::new()),
            fetch_errors: Mutex::new(HashMap::new()),
            module_loads: Mutex::new(HashMap::new()),
            modules_fetched: AtomicU64::new(0),
            bytes_pulled: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            events: crate::net::driver::EventQueue::default(),
            remote_calls: Mutex::new(HashMap::new()),
            attachments: Mutex::new(HashMap::new()),
            identity,
            core: Mutex::new(None),
            core_changed: tokio::sync::Notify::new(),
            joined: tokio::sync::Notify::new(),
            head_warned: AtomicBool::new(false),
            members_version: AtomicU64::new(u64::MAX),
        });
        {
            let c = cluster.clone();
            net.spawn(async move { c.core_events().await });
        }
        node.objects().set_remote(cluster.clone());
        if opts.listen.is_some() {
            let c = cluster.clone();
            net.spawn(async move { c.accept_loop().await });
        }
        let (heartbeat, dead_after) = (opts.heartbeat, opts.idle_timeout);
        match opts.head {
            None => {
                let _guard = net.enter();
                cluster.start_core(None, heartbeat, dead_after);
            }
            Some(head) => {
                let c = cluster.clone();
                // Not `Handle::block_on`: that panics when called from inside a runtime.
                let (tx, rx) = std::sync::mpsc::channel();
                net.spawn(async move {
                    let _ = tx.send(c.join(head, heartbeat, dead_after).await);
                });
                let joined = rx.recv().unwrap_or_else(|_| {
                    Err(NetError::Connection {
                        peer: head.to_string(),
                        detail: "the network runtime stopped".into(),
                    })
                });
                if let Err(e) = joined {
                    cluster.shutdown();
                    return Err(e);
                }
            }
        }
        tracing::info!(node = %node.id(), addr = ?me.addr, "joined the cluster");
        Ok(cluster)
    }

    /// Where this node accepts connections.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.me.addr
    }

    /// Stops serving: closes every connection and the endpoint.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.endpoint.close(0u32.into(), b"node stopping");
        // Give the close frames a moment to leave, so peers see a clean stop rather than a
        // timeout. (A std channel: this may run on any thread, async or not.)
        let (tx, rx) = std::sync::mpsc::channel();
        let endpoint = self.endpoint.clone();
        self.net.spawn(async move {
            endpoint.wait_idle().await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_millis(500));
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }

    /// This node as it presents itself.
    pub(super) fn info(&self) -> NodeInfo {
        self.me.clone()
    }

    /// This node's certificate identity.
    pub(super) fn identity(&self) -> Identity {
        self.identity
    }

    /// The head's id (this node's own on the head).
    pub(super) fn head_id(&self) -> u64 {
        self.head_id.load(Ordering::Relaxed)
    }

    pub(super) fn lock_core(&self) -> std::sync::MutexGuard<'_, Option<ferry_core::NodeCore>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The network's runtime.
    pub(super) fn runtime_handle(&self) -> &Handle {
        &self.net
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn arc(&self) -> Arc<Self> {
        self.this.upgrade().expect("a live cluster has a live Arc")
    }

    pub(super) fn node(&self) -> Option<Arc<dyn LocalNode>> {
        self.node.upgrade()
    }

    pub(super) fn lock_members(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_head(&self) -> bool {
        self.head.is_none()
    }

    fn dead_reason(&self, id: u64) -> Option<String> {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// This node's load now.
    pub fn load(&self) -> Load {
        let Some(node) = self.node() else {
            return Load::default();
        };
        self.reports.fetch_add(1, Ordering::Relaxed);
        Load {
            modules_fetched: self.modules_fetched.load(Ordering::Relaxed),
            bytes_pulled: self.bytes_pulled.load(Ordering::Relaxed),
            reports: self.reports.load(Ordering::Relaxed),
            ..node.load()
        }
    }

    /// The node table, from the head (this node's own copy if the head cannot be reached).
    pub async fn members(&self) -> Vec<Member> {
        if self.is_head() {
            return self.head_members();
        }
        let head = self.head_id.load(Ordering::Relaxed);
        match self.request(head, &Request::Members).await {
            Ok((Response::Members(m), _)) => m,
            _ => self.lock_members().values().cloned().collect(),
        }
    }

    /// [`members`](Self::members) for code that is not async (any thread).
    pub fn members_blocking(&self) -> Vec<Member> {
        let (tx, rx) = std::sync::mpsc::channel();
        let c = self.arc();
        self.net.spawn(async move {
            let _ = tx.send(c.members().await);
        });
        rx.recv().unwrap_or_default()
    }

    fn head_members(&self) -> Vec<Member> {
        let mut m = self.lock_members();
        if let Some(me) = m.get_mut(&self.me.id) {
            me.load = self.load();
        }
        m.values().cloned().collect()
    }

    // ---- connections ----

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let c = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => c.serve(conn, None),
                    Err(e) => tracing::warn!("refused a connection from {remote}: {e}"),
                }
            });
        }
    }

    /// Serves the requests a peer opens on `conn`.
    fn serve(self: &Arc<Self>, conn: Connection, known: Option<u64>) {
        let c = self.clone();
        self.net.spawn(async move {
            let peer: Arc<OnceLock<u64>> = Arc::new(OnceLock::new());
            if let Some(id) = known {
                let _ = peer.set(id);
            }
            loop {
                // Requests open two-way streams; the core's packets come one-way.
                let accepted = tokio::select! {
                    bi = conn.accept_bi() => bi.map(|(send, recv)| (Some(send), recv)),
                    uni = conn.accept_uni() => uni.map(|recv| (None, recv)),
                };
                match accepted {
                    Ok((send, recv)) => {
                        let (c, conn, peer) = (c.clone(), conn.clone(), peer.clone());
                        tokio::spawn(async move {
                            if let Err(e) = c.handle(&conn, &peer, send, recv).await {
                                tracing::debug!("request from {}: {e}", conn.remote_address());
                            }
                        });
                    }
                    Err(e) => {
                        if let Some(&id) = peer.get() {
                            c.connection_lost(id, &conn, &e.to_string());
                        }
                        return;
                    }
                }
            }
        });
    }

    /// A connection to `id` closed: the node is dead unless another connection to it lives.
    fn connection_lost(&self, id: u64, conn: &Connection, reason: &str) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(current) = peers.get(&id)
                && current.stable_id() != conn.stable_id()
                && current.close_reason().is_none()
            {
                // Another connection to the same node is still up.
                return;
            }
            peers.remove(&id);
        }
        // Not a death: the head decides deaths from how long it has not heard from a node.
        tracing::debug!("connection to node {} closed: {reason}", NodeId(id));
    }

    /// Marks `id` dead: calls running there fail, objects only it held are lost.
    pub(super) fn node_lost(&self, id: u64, reason: &str) {
        if id == self.me.id || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            if dead.contains_key(&id) {
                return;
            }
            dead.insert(id, reason.to_owned());
        }
        {
            let mut members = self.lock_members();
            match members.get_mut(&id) {
                // A driver that goes away just leaves (what it owned is lost with it).
                Some(m) if !m.info.worker => {
                    tracing::info!("driver {} left: {reason}", NodeId(id));
                    members.remove(&id);
                }
                Some(m) => {
                    tracing::warn!("node {} is dead: {reason}", NodeId(id));
                    m.alive = false;
                    m.reason = Some(reason.to_owned());
                }
                None => tracing::info!("peer {} is gone: {reason}", NodeId(id)),
            }
        }
        if let Some(conn) = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            conn.close(1u32.into(), b"declared dead");
        }
    }

    /// A connection to node `id`, made if needed.
    async fn peer(&self, id: u64) -> Result<Connection, NetError> {
        if let Some(reason) = self.dead_reason(id) {
            return Err(NetError::Dead {
                node: NodeId(id),
                reason,
            });
        }
        if let Some(c) = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let addr = self
            .lock_members()
            .get(&id)
            .and_then(|m| m.info.addr)
            .ok_or(NetError::UnknownNode(NodeId(id)))?;
        let (conn, info) = self.connect(addr).await?;
        if info.id != id {
            return Err(conn_err(
                addr,
                format!("expected node {} but found {}", NodeId(id), NodeId(info.id)),
            ));
        }
        Ok(conn)
    }

    /// Connects to `addr`, says hello, and serves the peer's requests on the connection.
    async fn connect(&self, addr: SocketAddr) -> Result<(Connection, NodeInfo), NetError> {
        let conn = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, NODE_NAME)
            .map_err(|e| conn_err(addr, e))?
            .await
            .map_err(|e| conn_err(addr, e))?;
        let info = match request_on(&conn, &Request::Hello(self.me.clone())).await? {
            (Response::Welcome(info), _) => info,
            (other, _) => {
                return Err(NetError::Protocol {
                    peer: addr.to_string(),
                    source: ProtoError::Unexpected(format!("{other:?} in answer to Hello")),
                });
            }
        };
        // The node we reached must be who its certificate says.
        match peer_identity(&conn) {
            Ok(identity) if identity.role == Role::Node && identity.may_use(NodeId(info.id)) => {}
            Ok(identity) => {
                conn.close(2u32.into(), b"identity mismatch");
                return Err(conn_err(
                    addr,
                    format!(
                        "it calls itself node {} but its certificate is {:?} number {}",
                        NodeId(info.id),
                        identity.role,
                        identity.cert
                    ),
                ));
            }
            Err(e) => {
                conn.close(2u32.into(), b"no identity");
                return Err(conn_err(addr, e));
            }
        }
        self.register(info.id, &conn);
        self.arc().serve(conn.clone(), Some(info.id));
        Ok((conn, info))
    }

    fn register(&self, id: u64, conn: &Connection) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn.clone());
        // Watch it: a connection that closes means the node is gone.
        let (c, conn) = (self.arc(), conn.clone());
        self.net.spawn(async move {
            let reason = conn.closed().await;
            c.connection_lost(id, &conn, &reason.to_string());
        });
    }

    pub(super) async fn request(
        &self,
        id: u64,
        req: &Request,
    ) -> Result<(Response, RecvStream), NetError> {
        let conn = self.peer(id).await?;
        request_on(&conn, req).await.map_err(|e| match e {
            NetError::Connection { detail, .. } => match self.dead_reason(id) {
                Some(reason) => NetError::Dead {
                    node: NodeId(id),
                    reason,
                },
                None => conn_err(NodeId(id), detail),
            },
            other => other,
        })
    }

    /// Sends `req` to node `id` on a one-way stream, with `raw` bytes after it: for the
    /// core's packets, which its link acknowledges and repeats (so no answer is awaited).
    pub(super) async fn send_oneway(
        &self,
        id: u64,
        req: &Request,
        raw: Option<Bytes>,
    ) -> Result<(), NetError> {
        let conn = self.peer(id).await?;
        let peer = conn.remote_address();
        let mut send = conn.open_uni().await.map_err(|e| conn_err(peer, e))?;
        write_frame(&mut send, req).await?;
        if let Some(raw) = raw {
            send.write_chunk(raw).await.map_err(|e| conn_err(peer, e))?;
        }
        send.finish().map_err(|e| conn_err(peer, e))
    }

    // ---- membership ----

    async fn join(
        self: &Arc<Self>,
        head: SocketAddr,
        heartbeat: Duration,
        dead_after: Duration,
    ) -> Result<(), NetError> {
        let (_conn, info) = self.connect(head).await?;
        self.head_id.store(info.id, Ordering::Relaxed);
        self.lock_members().insert(
            info.id,
            Member {
                info: info.clone(),
                load: Load::default(),
                alive: true,
                reason: None,
            },
        );
        self.start_core(Some(NodeId(info.id)), heartbeat, dead_after);
        let limit = (dead_after * 2).max(Duration::from_secs(10));
        if !self.until_joined(limit).await {
            return Err(conn_err(
                head,
                format!(
                    "the head did not list this node within {} s",
                    limit.as_secs()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn connect_to_all(&self) {
        let missing: Vec<u64> = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            self.lock_members()
                .values()
                .filter(|m| m.alive && m.info.addr.is_some() && m.info.id != self.me.id)
                .map(|m| m.info.id)
                .filter(|id| peers.get(id).is_none_or(|c| c.close_reason().is_some()))
                .collect()
        };
        for id in missing {
            let c = self.arc();
            self.net.spawn(async move {
                if let Err(e) = c.peer(id).await {
                    tracing::debug!("cannot connect to node {}: {e}", NodeId(id));
                }
            });
        }
    }

    // ---- serving ----

    /// Serves one request: on a two-way stream (`send`) it is answered; a one-way stream
    /// carries only the core's packets (`Packets`, `PacketWithObject`), whose refusals are
    /// logged (the sender's link repeats what was not acknowledged).
    async fn handle(
        &self,
        conn: &Connection,
        peer: &OnceLock<u64>,
        send: Option<SendStream>,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        let who = conn.remote_address().to_string();
        let req: Request = read_frame(&mut recv)
            .await
            .map_err(|source| NetError::Protocol {
                peer: who.clone(),
                source,
            })?;
        let Some(node) = self.node() else {
            return Ok(());
        };
        let mut send = match send {
            Some(send) => send,
            None => {
                let response = match req {
                    Request::Packets(_) | Request::PacketWithObject(..) => {
                        self.handle_packets(conn, peer, &*node, req, &mut recv)
                            .await
                    }
                    _ => Response::Error("refused: only packets travel one-way".into()),
                };
                if let Response::Error(e) = response {
                    tracing::debug!("one-way request from {who}: {e}");
                }
                return Ok(());
            }
        };
        if peer.get().is_none() && !matches!(req, Request::Hello(_) | Request::Members) {
            let r = Response::Error("refused: a connection says Hello first".into());
            return reply(&mut send, &r, None).await;
        }
        let response = match req {
            Request::Hello(info) if self.hello_refusal(conn, &info).is_some() => {
                let why = self.hello_refusal(conn, &info).unwrap_or_default();
                tracing::warn!("refused a Hello from {who}: {why}");
                Response::Error(format!("refused: {why}"))
            }
            Request::Hello(info) => {
                let _ = peer.set(info.id);
                self.register(info.id, conn);
                if self.is_head() {
                    tracing::info!(node = %NodeId(info.id), addr = ?info.addr, worker = info.worker, "a node joined");
                    self.lock_members().insert(
                        info.id,
                        Member {
                            info,
                            load: Load::default(),
                            alive: true,
                            reason: None,
                        },
                    );
                }
                Response::Welcome(self.me.clone())
            }
            req @ (Request::Packets(_) | Request::PacketWithObject(..)) => {
                self.handle_packets(conn, peer, &*node, req, &mut recv)
                    .await
            }
            Request::Members => Response::Members(self.members().await),
            Request::Module(id) => match node.module_bytes(id) {
                Some(bytes) => {
                    let len = bytes.len() as u64;
                    let wasm = Bytes::from_owner(bytes);
                    return reply(&mut send, &Response::Module { len }, Some(wasm)).await;
                }
                None => Response::Error(format!("module {id} is not loaded here")),
            },
            Request::Fetch(id) => {
                return self.serve_fetch(&node, id, send).await;
            }
        };
        reply(&mut send, &response, None).await
    }

    /// Feeds the core a peer's packets (and the bytes of an inline result that came with
    /// one).
    async fn handle_packets(
        &self,
        conn: &Connection,
        peer: &OnceLock<u64>,
        node: &dyn LocalNode,
        req: Request,
        recv: &mut RecvStream,
    ) -> Response {
        let (Some(&from), Ok(identity)) = (peer.get(), peer_identity(conn)) else {
            return Response::Error("refused: a connection says Hello first".into());
        };
        match req {
            Request::PacketWithObject(packet, header) => {
                // Only an inline result of a call this node placed on the sender carries an
                // object: nothing else may make this node allocate.
                let id = match &packet.msg {
                    Some(ferry_core::Message::Done {
                        result,
                        outcome: ferry_core::Outcome::Inline { .. },
                    }) if self.expects_inline(*result, from)
                        && header.total_len <= ferry_core::tasks::INLINE_MAX
                        && header.contained.is_empty() =>
                    {
                        *result
                    }
                    _ => {
                        return Response::Error(
                            "refused: only the inline result (at most 64 KiB, holding no refs) \
                             of a call placed on the sender carries an object"
                                .into(),
                        );
                    }
                };
                // If the bytes do not arrive, the `Done` still goes to the core (the result
                // then fails for want of them): a link never stalls behind one transfer.
                match self.receive_object(node, &header, recv).await {
                    Ok(sealed) => self.attach(id, sealed),
                    Err(e) => tracing::debug!("inline result {id} from node {from} lost: {e}"),
                }
                self.arc().on_packets(from, identity, vec![packet])
            }
            Request::Packets(packets) => self.arc().on_packets(from, identity, packets),
            _ => Response::Error("refused: not packets".into()),
        }
    }

    /// Why a peer may not join as `info` says, if it may not: see [`check_hello`]; and an id
    /// declared dead stays dead (a restarted node comes back with a new incarnation).
    fn hello_refusal(&self, conn: &Connection, info: &NodeInfo) -> Option<String> {
        if let Err(why) = check_hello(conn, info) {
            return Some(why);
        }
        self.dead_reason(info.id).map(|reason| {
            format!(
                "node {} was declared dead ({reason}); start it again",
                NodeId(info.id)
            )
        })
    }

    async fn serve_fetch(
        &self,
        node: &Arc<dyn LocalNode>,
        id: ObjectId,
        mut send: SendStream,
    ) -> Result<(), NetError> {
        let local = node.objects().contains(id);
        let found = if local {
            read_off_net(node.objects(), id, Duration::from_secs(30)).await
        } else {
            Err(GetError::ObjectLost { id })
        };
        let (sealed, contained) = match found {
            Ok(x) => x,
            Err(e) => return reply(&mut send, &Response::Error(e.to_string()), None).await,
        };
        let header = Response::Object(object_header(&sealed, contained));
        reply(&mut send, &header, Some(store_bytes(sealed))).await
    }

    /// Makes sure `module` is loaded here, fetching its bytes from node `from` if not. Loads
    /// of one module are shared; other requests keep flowing meanwhile.
    pub(super) async fn ensure_module(
        &self,
        node: &Arc<dyn LocalNode>,
        from: u64,
        module: ModuleId,
    ) -> Result<(), String> {
        if node.module_bytes(module).is_some() {
            return Ok(());
        }
        let cell = self
            .module_loads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(module)
            .or_default()
            .clone();
        let r = cell
            .get_or_init(|| async {
                let wasm = self.fetch_module(from, module).await?;
                self.modules_fetched.fetch_add(1, Ordering::Relaxed);
                // Compiling runs on the node's workers, never on the network's thread.
                node.clone()
                    .load_module(wasm)
                    .await
                    .map_err(|e| format!("module {module}: {e}"))
            })
            .await
            .clone();
        if r.is_err() {
            // Let a later call try again.
            self.module_loads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&module);
        }
        r
    }

    async fn fetch_module(&self, from: u64, module: ModuleId) -> Result<Vec<u8>, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!(
                "could not fetch module {module} from node {}: {e}",
                NodeId(from)
            )
        };
        let (resp, mut recv) = self
            .request(from, &Request::Module(module))
            .await
            .map_err(|e| fail(&e))?;
        let len = match resp {
            Response::Module { len } if len <= MAX_MODULE => len,
            Response::Module { len } => {
                return Err(fail(&format!(
                    "{len} bytes is over the limit of {MAX_MODULE}"
                )));
            }
            Response::Error(m) => return Err(fail(&m)),
            other => return Err(fail(&format!("unexpected answer {other:?}"))),
        };
        let mut wasm = Vec::with_capacity((len as usize).min(1 << 20));
        let got = tokio::io::AsyncReadExt::read_to_end(
            &mut tokio::io::AsyncReadExt::take(&mut recv, len),
            &mut wasm,
        )
        .await
        .map_err(|e| fail(&e))?;
        if got as u64 != len {
            return Err(fail(&format!(
                "the module ended after {got} of {len} bytes"
            )));
        }
        if crate::ids::module_id(&wasm) != module {
            return Err(fail(&"the bytes do not hash to the module's id"));
        }
        Ok(wasm)
    }

    /// Reads an object announced by `header` from `recv` straight into a new block of this
    /// node's store.
    pub(super) async fn receive_object(
        &self,
        node: &dyn LocalNode,
        header: &WireObject,
        recv: &mut RecvStream,
    ) -> Result<Arc<Sealed>, String> {
        let layout = proto::check_object(header, node.objects().store().stats().capacity)
            .map_err(|e| e.to_string())?;
        let mut block = allocate_off_net(node.objects(), layout).await?;
        recv.read_exact(block.as_mut_slice())
            .await
            .map_err(|e| e.to_string())?;
        self.bytes_pulled
            .fetch_add(header.total_len, Ordering::Relaxed);
        Ok(block.seal())
    }

    // ---- pulling objects ----

    pub(super) async fn fetch_from(
        &self,
        node: &dyn LocalNode,
        holder: u64,
        id: ObjectId,
    ) -> Pulled {
        let died = |detail: String| PullError::Died {
            node: NodeId(holder),
            detail,
        };
        let (resp, mut recv) = match self.request(holder, &Request::Fetch(id)).await {
            Ok(x) => x,
            Err(NetError::Dead { node, reason }) => {
                return Err(PullError::Died {
                    node,
                    detail: reason,
                });
            }
            Err(e @ (NetError::Refused { .. } | NetError::Protocol { .. })) => {
                return Err(PullError::Unavailable(e.to_string()));
            }
            Err(e) => return Err(died(e.to_string())),
        };
        match resp {
            Response::Object(header) => {
                let sealed = self
                    .receive_object(node, &header, &mut recv)
                    .await
                    .map_err(|e| PullError::Unavailable(format!("transfer failed: {e}")))?;
                Ok((sealed, header.contained))
            }
            Response::Error(m) => Err(PullError::Unavailable(format!(
                "node {} cannot serve it: {m}",
                NodeId(holder)
            ))),
            other => Err(PullError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

impl RemoteObjects for Cluster {
    fn fetch(&self, id: ObjectId) -> BoxFuture<Result<ObjectWithRefs, GetError>> {
        // The core locates it (at its owner, or in its own directory for this node's
        // objects), shares pulls of one object, and says where to fetch it from.
        let c = self.arc();
        let task = self.net.spawn(async move { c.pull_via_core(id).await });
        Box::pin(async move {
            match task.await {
                Ok(r) => r.map_err(|e| e.into_get(id)),
                Err(_) => Err(GetError::NodeStopped),
            }
        })
    }

    fn watch_done(
        &self,
        id: ObjectId,
        interest: Weak<ForeignWait>,
        done: Box<dyn FnOnce() + Send>,
    ) {
        // The owner's core answers once the object is complete: no polling.
        self.watch_via_core(id, interest, done);
    }

    fn freed(&self, id: ObjectId) {
        // The core knows where the copy is (`Place::Held`) and sends the `FreeCopy` behind
        // the borrows sent before it.
        self.events.push(LocalEvent::Freed(id));
    }

    fn location(&self, id: ObjectId) -> ObjectLocation {
        self.core_location(id)
    }

    fn borrow(&self, id: ObjectId) {
        self.events.push(LocalEvent::Hold(id));
    }

    fn unborrow(&self, id: ObjectId) {
        self.events.push(LocalEvent::Drop(id));
    }
}

/// The identity the peer's certificate (verified against the cluster CA during the
/// handshake) carries.
fn peer_identity(conn: &Connection) -> Result<Identity, String> {
    let any = conn
        .peer_identity()
        .ok_or("the peer presented no certificate")?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "the peer's certificate is of an unknown kind")?;
    let first = certs.first().ok_or("the peer presented no certificate")?;
    tls::identity_of(first)
}

/// Whether a peer may join as `info` says: the id must carry its certificate's number, and
/// only a node certificate runs calls. (So no certificate holder can take another node's id,
/// replace its entry, or have it declared dead by closing a connection registered under it.)
fn check_hello(conn: &Connection, info: &NodeInfo) -> Result<(), String> {
    let identity = peer_identity(conn)?;
    if !identity.may_use(NodeId(info.id)) {
        return Err(format!(
            "node id {} does not carry the number of its certificate ({})",
            NodeId(info.id),
            identity.cert
        ));
    }
    if info.worker && identity.role != Role::Node {
        return Err(format!(
            "client certificate {} cannot join as a node that runs calls",
            identity.cert
        ));
    }
    Ok(())
}

pub(super) fn object_header(sealed: &Sealed, contained: Vec<ObjectId>) -> WireObject {
    let layout = sealed.layout();
    WireObject {
        meta_len: layout.meta_len,
        buffer_lens: layout.buffers.iter().map(|b| b.len).collect(),
        contained,
        total_len: sealed.len() as u64,
    }
}

/// Room in the store for an object arriving from the network: at once if it fits, else on a
/// blocking thread, since making room spills other objects to disk (blocking file I/O must
/// never hold up the network thread, which answers keep-alives).
async fn allocate_off_net(
    objects: &Arc<ObjectTable>,
    layout: crate::store::Layout,
) -> Result<crate::store::Block, String> {
    match objects.store().allocate_object(layout.clone()) {
        Ok(block) => Ok(block),
        Err(crate::error::StoreError::Full { .. }) => {
            let objects = objects.clone();
            tokio::task::spawn_blocking(move || objects.allocate(layout))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// An object of this node's, once complete, for sending: the wait happens here, the read (which
/// may bring a spilled object back from disk) on a blocking thread, never on the network's.
pub(super) async fn read_off_net(
    objects: &Arc<ObjectTable>,
    id: ObjectId,
    timeout: Duration,
) -> Result<ObjectWithRefs, GetError> {
    // Already in memory (an inline result just made, most often): no wait, no file.
    if let Some(ObjectState::Ready(sealed)) = objects.state(id) {
        return Ok((sealed, objects.contained(id)));
    }
    let done = objects
        .wait_many(&[id], 1, Some(timeout), WaitFlags::All)
        .await;
    if done.first() != Some(&true) {
        return Err(GetError::Timeout { id, timeout });
    }
    let objects = objects.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(objects.wait_object(id, Some(timeout))))
        .await
        .map_err(|_| GetError::NodeStopped)?
}

/// A stored object's bytes as `Bytes` that keep it pinned: quinn sends them straight from the
/// store mapping, without copying them into its own buffers first.
pub(super) fn store_bytes(sealed: Arc<Sealed>) -> Bytes {
    struct Pinned(Arc<Sealed>);
    impl AsRef<[u8]> for Pinned {
        fn as_ref(&self) -> &[u8] {
            self.0.bytes()
        }
    }
    Bytes::from_owner(Pinned(sealed))
}

/// Answers a request: the response frame, then `raw` bytes if the response announces them,
/// then the end of the stream.
pub(super) async fn reply(
    send: &mut SendStream,
    response: &Response,
    raw: Option<Bytes>,
) -> Result<(), NetError> {
    write_frame(send, response).await?;
    if let Some(raw) = raw {
        send.write_chunk(raw)
            .await
            .map_err(|e| conn_err("peer", e))?;
    }
    let _ = send.finish();
    Ok(())
}

/// Sends `req` on a new stream of `conn` and reads the response frame; the stream's remaining
/// bytes (an object or a module) are left in the returned `RecvStream`.
pub(super) async fn request_on(
    conn: &Connection,
    req: &Request,
) -> Result<(Response, RecvStream), NetError> {
    let peer = conn.remote_address();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| conn_err(peer, e))?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    let resp: Response = read_frame(&mut recv).await.map_err(|source| match source {
        ProtoError::Truncated(d) => conn_err(peer, d),
        source => NetError::Protocol {
            peer: peer.to_string(),
            source,
        },
    })?;
    if let Response::Error(message) = resp {
        return Err(NetError::Refused {
            peer: peer.to_string(),
            message,
        });
    }
    Ok((resp, recv))
}

/// Writes one frame; a message the peer would refuse as too large is an error here, before
/// anything is sent (so it is not mistaken for a broken connection).
pub(super) async fn write_frame<T: serde::Serialize>(
    send: &mut SendStream,
    msg: &T,
) -> Result<(), NetError> {
    let frame = proto::encode_frame(msg);
    if frame.len() - 4 > MAX_FRAME {
        return Err(NetError::Protocol {
            peer: "this node".into(),
            source: ProtoError::TooLarge {
                len: (frame.len() - 4) as u64,
                max: MAX_FRAME,
            },
        });
    }
    send.write_all(&frame)
        .await
        .map_err(|e| conn_err("peer", e))
}

async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut RecvStream,
) -> Result<T, ProtoError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| ProtoError::Truncated(e.to_string()))?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len: n as u64,
            max: MAX_FRAME,
        });
    }
    // Grown as bytes arrive, so a peer cannot reserve memory it never sends.
    let mut body = Vec::with_capacity(n.min(64 << 10));
    let got = tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(&mut *recv, n as u64),
        &mut body,
    )
    .await
    .map_err(|e| ProtoError::Truncated(e.to_string()))?;
    if got != n {
        return Err(ProtoError::Truncated(format!(
            "the prefix announced {n} bytes, the stream ended after {got}"
        )));
    }
    proto::decode_body(&body)
}
