//! A host node: the object store, the object table, the modules, and the task runner.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use ferry_abi::abi::CallArg;
use ferry_abi::{ModuleId, ObjectId};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{Notify, Semaphore};

use crate::codec;
use crate::config::NodeConfig;
use crate::error::{CallError, ModuleError, StoreError};
use crate::ids::{IdGenerator, NodeId};
use crate::net::cluster::{Cluster, ClusterOptions, NetError};
use crate::net::local::LocalNode;
use crate::net::proto::Load;
use crate::objects::{BoxFuture, ObjectTable, TableStats};
use crate::store::spill::SpillDir;
use crate::store::{ObjectStore, StoreStats};
use crate::wasm::{LoadedModule, ModuleRegistry, ModuleStats, TaskSpec, WasmEngine, run_task};

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The object store could not be created.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Wasm engine could not be created.
    #[error("could not set up the Wasm engine: {0}")]
    Engine(String),
    /// The worker threads could not be started.
    #[error("could not start worker threads: {0}")]
    Runtime(#[source] std::io::Error),
    /// The node could not join or serve the cluster.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What a node reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    /// The node.
    pub node: NodeId,
    /// The object store.
    pub store: StoreStats,
    /// The object table.
    pub objects: TableStats,
    /// The modules.
    pub modules: ModuleStats,
    /// Calls submitted since start.
    pub tasks_submitted: u64,
    /// Calls finished (successfully or not) since start.
    pub tasks_finished: u64,
}

/// The shared state of a node; tasks and host functions hold an `Arc` to it.
#[derive(Debug)]
pub struct NodeInner {
    /// The node's id; it owns the objects whose ids carry it.
    pub id: NodeId,
    /// Its configuration.
    pub config: NodeConfig,
    /// The object table, which owns the object store.
    pub objects: Arc<ObjectTable>,
    /// Object ids owned by this node.
    pub ids: IdGenerator,
    /// Loaded modules.
    pub modules: ModuleRegistry,
    /// Bounds the guest instances alive at once to the pool's size.
    pub instance_slots: Semaphore,
    /// Guests blocked in a host `get` or `wait`.
    pub(crate) guests_waiting: AtomicUsize,
    /// Woken when every instance slot is held by a blocked guest.
    pub(crate) slots_stalled: Notify,
    /// The runtime running tasks.
    pub handle: Handle,
    pub(crate) tasks_submitted: AtomicU64,
    pub(crate) tasks_finished: AtomicU64,
    /// The cluster this node belongs to (none: a single-node cluster of its own).
    pub cluster: OnceLock<Arc<Cluster>>,
    _engine: Arc<WasmEngine>,
}

/// Who makes a call, for the node's limit on unfinished calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOrigin {
    /// A driver (a `Client`), on this node.
    Driver,
    /// A running guest (a nested call): it may take three quarters of the limit.
    Guest,
}

impl NodeInner {
    /// Submits a call of `function` in `module`. Returns the id of its result object, holding
    /// one reference for the caller. Checks the function and the argument count now; the rest
    /// is reported through the result.
    ///
    /// The caller has already taken one count on every ref in `args`; the task owns those
    /// counts from here on (and they are released here if the call is refused).
    pub fn submit(
        self: &Arc<Self>,
        module: ModuleId,
        function: &str,
        args: Vec<CallArg>,
        caller: CallOrigin,
    ) -> Result<ObjectId, CallError> {
        let held = TaskSpec::refs_of(&args);
        self.check_call(module, function, args.len())
            .and_then(|()| self.check_room(caller))
            .inspect_err(|_| {
                self.objects.release_all(&held);
            })?;
        let spec = TaskSpec {
            module,
            function: function.to_owned(),
            args,
            result: self.ids.next(),
        };
        // One count for the caller's handle, one for the task until it finishes.
        self.objects.insert_pending(spec.result, 2);
        let id = spec.result;
        let here = match self.cluster.get() {
            None => Some(spec),
            Some(cluster) => match cluster.submit(spec) {
                Ok(here) => here,
                Err(reason) => {
                    // Neither the handle nor the task will hold the result.
                    self.objects.release_all(&[id, id]);
                    self.objects.release_all(&held);
                    return Err(CallError::NoNode { reason });
                }
            },
        };
        if let Some(spec) = here {
            let node = self.clone();
            self.handle.spawn(node.run_counted(spec));
        }
        Ok(id)
    }

    /// Loads a module (see [`ModuleRegistry::load`]). Reading its manifest runs the guest, so
    /// it takes an instance slot like a call, with the same stall detection: when every slot
    /// is held by a guest waiting for another task, the load fails instead of waiting for
    /// ever (those guests may be waiting for a call of this very module).
    pub async fn load_wasm(&self, wasm: &[u8]) -> Result<Arc<LoadedModule>, ModuleError> {
        if let Some(m) = self.modules.get(&crate::ids::module_id(wasm)) {
            return Ok(m);
        }
        let _slot = crate::wasm::acquire_slot(self).await.map_err(|kind| {
            ModuleError::Busy(format!("the module cannot be loaded now: {kind}"))
        })?;
        let (time, mem) = (self.config.time_limit, self.config.memory_limit);
        self.modules.load(wasm, time, mem).await
    }

    /// Runs a call here, counted as submitted until it finishes (for placement's figures).
    fn run_counted(self: Arc<Self>, spec: TaskSpec) -> impl std::future::Future<Output = ()> {
        self.tasks_submitted.fetch_add(1, Ordering::Relaxed);
        async move {
            run_task(self.clone(), spec).await;
            self.tasks_finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls held unfinished here: queued or running (its own and its peers').
    fn pending_calls(&self) -> u64 {
        let submitted = self.tasks_submitted.load(Ordering::Relaxed);
        submitted.saturating_sub(self.tasks_finished.load(Ordering::Relaxed))
    }

    /// Whether the node takes one more call from `caller` ([`NodeConfig::max_pending_calls`]).
    fn check_room(&self, caller: CallOrigin) -> Result<(), CallError> {
        let max = self.config.max_pending_calls;
        let (limit, scope) = match caller {
            CallOrigin::Driver => (max, "on this node"),
            CallOrigin::Guest => (max / 4 * 3, "on this node for calls made by guests"),
        };
        let pending = self.pending_calls();
        if pending >= limit {
            return Err(CallError::Overloaded {
                pending,
                limit,
                scope,
            });
        }
        Ok(())
    }

    /// Calls running now, and calls waiting (for arguments or an instance).
    fn busy(&self) -> (u64, u64) {
        let running = (self.config.max_instances.max(1) as usize)
            .saturating_sub(self.instance_slots.available_permits()) as u64;
        let submitted = self.tasks_submitted.load(Ordering::Relaxed);
        let open = submitted.saturating_sub(self.tasks_finished.load(Ordering::Relaxed));
        (running, open.saturating_sub(running))
    }

    /// Checks that the module has the function and that it takes `argc` arguments.
    fn check_call(&self, module: ModuleId, function: &str, argc: usize) -> Result<(), CallError> {
        let loaded = self
            .modules
            .get(&module)
            .ok_or(CallError::ModuleNotLoaded { module })?;
        let Some(sig) = loaded.functions.get(function) else {
            return Err(CallError::UnknownFunction {
                function: function.to_owned(),
                module,
                available: loaded
                    .functions
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if sig.params.len() != argc {
            return Err(CallError::ArgumentCount {
                function: function.to_owned(),
                expected: sig.params.len(),
                got: argc,
                signature: sig.display_signature(),
            });
        }
        Ok(())
    }

    /// Whether every instance slot is held by a guest blocked on another task, so that no
    /// queued task can ever start (only a guest's own timeout could change that).
    pub fn slots_stalled(&self) -> bool {
        self.instance_slots.available_permits() == 0
            && self.guests_waiting.load(Ordering::SeqCst)
                >= self.config.max_instances.max(1) as usize
    }

    /// Marks a guest as blocked until the returned guard drops.
    pub fn guest_waiting(&self) -> WaitingGuest<'_> {
        self.guests_waiting.fetch_add(1, Ordering::SeqCst);
        if self.slots_stalled() {
            self.slots_stalled.notify_waiters();
        }
        WaitingGuest { node: self }
    }

    /// The node's figures.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            node: self.id,
            store: self.objects.store_stats(),
            objects: self.objects.stats(),
            modules: self.modules.stats(),
            tasks_submitted: self.tasks_submitted.load(Ordering::Relaxed),
            tasks_finished: self.tasks_finished.load(Ordering::Relaxed),
        }
    }

    /// Runs `fut` on the node's runtime and blocks the calling thread until it finishes. Works
    /// from any thread, including threads of another tokio runtime. `None` if the node shut
    /// down first.
    pub fn block_on<F>(&self, fut: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

/// A guest blocked in a host call; see [`NodeInner::guest_waiting`].
#[derive(Debug)]
pub struct WaitingGuest<'a> {
    node: &'a NodeInner,
}

impl Drop for WaitingGuest<'_> {
    fn drop(&mut self) {
        self.node.guests_waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running node. Dropping it stops the node: tasks still running are abandoned.
#[derive(Debug)]
pub struct Node {
    inner: Arc<NodeInner>,
    runtime: Option<Runtime>,
}

impl Node {
    /// Starts a node.
    pub fn start(config: NodeConfig) -> Result<Self, NodeError> {
        Self::start_as(config, crate::ids::random_node_id())
    }

    /// Starts a node with the id `id`.
    fn start_as(config: NodeConfig, id: NodeId) -> Result<Self, NodeError> {
        let store = ObjectStore::create(&config.store_dir, config.store_capacity)?;
        if config.prefault {
            store.prefault_in_background();
        }
        let spill = match &config.spill_dir {
            Some(dir) => Some(SpillDir::create(dir, config.spill_capacity)?),
            None => None,
        };
        let engine =
            Arc::new(WasmEngine::new(&config).map_err(|e| NodeError::Engine(format!("{e:#}")))?);
        let modules = ModuleRegistry::new(engine.clone(), config.cache_dir.clone())
            .map_err(|e| NodeError::Engine(format!("{e:#}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers.clamp(1, 1024))
            .thread_name("ferry-worker")
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let objects = Arc::new(ObjectTable::new(store, spill));
        objects.set_local(id);
        codec::register_owner(id, &objects);
        let inner = Arc::new(NodeInner {
            id,
            objects,
            ids: IdGenerator::new(id),
            modules,
            instance_slots: Semaphore::new(config.max_instances.max(1) as usize),
            guests_waiting: AtomicUsize::new(0),
            slots_stalled: Notify::new(),
            handle: runtime.handle().clone(),
            tasks_submitted: AtomicU64::new(0),
            tasks_finished: AtomicU64::new(0),
            cluster: OnceLock::new(),
            config,
            _engine: engine,
        });
        tracing::debug!(node = %id, "node started");
        Ok(Self {
            inner,
            runtime: Some(runtime),
        })
    }

    /// Starts a node that joins (or, without `opts.head`, starts) a cluster.
    ///
    /// Its id carries its certificate's number, with a random incarnation: a node started
    /// again with the same certificate is a new node to the cluster.
    pub fn start_in_cluster(config: NodeConfig, opts: ClusterOptions) -> Result<Self, NodeError> {
        let cert = opts.credentials.identity().cert;
        let incarnation = loop {
            let v = crate::ids::random_u64() as u32;
            if v != 0 {
                break v;
            }
        };
        let node = Self::start_as(config, NodeId::new(cert, incarnation))?;
        let cluster = Cluster::start(node.inner.clone(), opts).map_err(NodeError::Net)?;
        let _ = node.inner.cluster.set(cluster);
        Ok(node)
    }

    /// The shared state.
    pub fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.inner.cluster.get() {
            c.shutdown();
        }
        codec::unregister_owner(self.inner.id);
        self.inner.instance_slots.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The node as its network layer sees it.
impl LocalNode for NodeInner {
    fn id(&self) -> NodeId {
        self.id
    }

    fn cores(&self) -> u32 {
        self.config.workers as u32
    }

    fn objects(&self) -> &Arc<ObjectTable> {
        &self.objects
    }

    fn busy(&self) -> (u64, u64) {
        NodeInner::busy(self)
    }

    fn load(&self) -> Load {
        let s = self.stats();
        let (running, queued) = NodeInner::busy(self);
        Load {
            store_used: s.store.used,
            store_capacity: s.store.capacity,
            running,
            queued,
            calls_finished: s.tasks_finished,
            modules_compiled: s.modules.compiled,
            objects: s.objects.objects,
            ..Load::default()
        }
    }

    fn module_bytes(&self, module: ModuleId) -> Option<Arc<[u8]>> {
        self.modules.get(&module).map(|m| m.wasm.clone())
    }

    fn load_module(self: Arc<Self>, wasm: Vec<u8>) -> BoxFuture<Result<(), String>> {
        let node = self.clone();
        let loaded = self.handle.spawn(async move {
            node.load_wasm(&wasm)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        Box::pin(async move {
            loaded
                .await
                .map_err(|e| format!("loading it failed: {e}"))?
        })
    }

    fn run(self: Arc<Self>, spec: TaskSpec) -> BoxFuture<()> {
        if let Err(e) = self.check_room(CallOrigin::Driver) {
            // Refused like a call that failed here: the peer's result says why.
            let err = crate::error::TaskError {
                function: spec.function.clone(),
                node: self.id,
                kind: crate::error::TaskErrorKind::Host {
                    detail: format!("node {} refused the call: {e}", self.id),
                },
            };
            self.objects
                .complete(spec.result, Err(Arc::new(err)), &spec.held_refs());
            return Box::pin(async {});
        }
        let ran = self.handle.spawn(self.clone().run_counted(spec));
        Box::pin(async move {
            let _ = ran.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load needs an instance slot to read the module's signatures. With every slot held by
    /// a guest waiting for another task (say, for a call of the module being loaded), it fails
    /// at once instead of waiting for ever.
    #[test]
    fn a_load_with_every_slot_held_by_a_waiting_guest_fails_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            max_instances: 1,
            ..NodeConfig::for_tests(dir.path())
        };
        let node = Node::start(config).unwrap();
        let inner = node.inner().clone();
        let wasm = ferry_tests::testguest_wasm();
        let loaded = inner.clone().block_on(async move {
            // The only slot, held by a guest blocked in `get`.
            let _slot = inner.instance_slots.acquire().await.unwrap();
            let _waiting = inner.guest_waiting();
            let load = inner.load_wasm(&wasm);
            tokio::time::timeout(std::time::Duration::from_secs(60), load)
                .await
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        });
        let err = loaded
            .unwrap()
            .expect("the load finished (not timed out)")
            .unwrap_err();
        assert!(err.contains("cannot be loaded now"), "{err}");
    }
}
