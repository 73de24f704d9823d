//! The driver API: what a program using ferry calls.
//!
//! A [`Client`] talks to a cluster. [`Client::embedded`] starts a single-node cluster inside
//! the process, which is the default way to run; the same API will reach a remote cluster.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ferry::{Client, ObjectRef};
//! let client = Client::embedded()?;
//! let module = client.load_file("guest.wasm")?;
//! let x = client.put(&20i64)?;
//! // By name, with a tuple; a top-level ref is resolved to its value first.
//! let sum: ObjectRef<i64> = module.call("add", (&x, 22i64))?;
//! assert_eq!(client.get(&sum).await?, 42);
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_abi::abi::CallArg;
use ferry_abi::manifest::FunctionSig;
use ferry_abi::{IntoArgs, ModuleId, ObjectId, ObjectRef, ReadyPending, RemoteFn, UntypedArgs};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, HostArgSink};
use crate::config::NodeConfig;
use crate::error::{CallError, GetError, ModuleError, PutError};
use crate::ids::NodeId;
use crate::net::cluster::ClusterOptions;
use crate::net::proto::Member;
use crate::net::tls::Credentials;
use crate::node::{Node, NodeError, NodeInner, NodeStats};
pub use crate::objects::ObjectLocation;
use crate::objects::{ObjectState, WaitFlags};
use crate::wasm::LoadedModule;

/// A connection to a ferry cluster. Cheap to clone; the embedded node stops when the last
/// clone (and every module handle) is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    node: Arc<Node>,
}

impl Client {
    /// Starts an embedded single-node cluster with the default configuration.
    pub fn embedded() -> Result<Self, NodeError> {
        Self::embedded_with(NodeConfig::default())
    }

    /// Starts an embedded single-node cluster.
    pub fn embedded_with(config: NodeConfig) -> Result<Self, NodeError> {
        Ok(Self {
            node: Arc::new(Node::start(config)?),
        })
    }

    /// Connects to the cluster whose head is at `head`, as a driver: the same API as an
    /// embedded node, with calls placed on the cluster's nodes. The driver keeps a small object
    /// store of its own (`config`) for the objects it puts, which nodes pull from it when they
    /// need them (Ray's ownership: the driver owns what it puts and the results of its calls).
    /// `credentials` must be signed by the cluster's CA (`ferry cert`).
    pub fn connect(
        head: std::net::SocketAddr,
        credentials: Credentials,
        config: NodeConfig,
    ) -> Result<Self, NodeError> {
        let mut opts = ClusterOptions::new(credentials);
        opts.head = Some(head);
        opts.worker = false;
        Ok(Self {
            node: Arc::new(Node::start_in_cluster(config, opts)?),
        })
    }

    /// Starts a node of a cluster in this process (what `ferry start` runs): the head when
    /// `opts.head` is `None`, else a node joining that head. The returned client drives it
    /// like an embedded node; the node stops when the last clone is dropped.
    pub fn start_node(config: NodeConfig, opts: ClusterOptions) -> Result<Self, NodeError> {
        Ok(Self {
            node: Arc::new(Node::start_in_cluster(config, opts)?),
        })
    }

    /// Where this node accepts cluster connections (`None` outside a cluster, or for a
    /// driver).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner().cluster.get()?.local_addr()
    }

    /// The cluster's nodes, as the head knows them (`None` for an embedded node that is not
    /// part of a cluster).
    pub fn members(&self) -> Option<Vec<Member>> {
        Some(self.inner().cluster.get()?.members_blocking())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner().id
    }

    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        self.node.inner()
    }

    /// Loads a module from its bytes. The module is known by the hash of its bytes: loading
    /// the same bytes again returns the loaded module without compiling, and compiled code is
    /// cached on disk for the next start.
    pub fn load(&self, wasm: &[u8]) -> Result<ModuleHandle, ModuleError> {
        let inner = self.inner();
        let loaded = match inner.modules.get(&crate::ids::module_id(wasm)) {
            Some(m) => m,
            None => {
                let node = inner.clone();
                let wasm = wasm.to_vec();
                inner
                    .block_on(async move { node.load_wasm(&wasm).await })
                    .ok_or(ModuleError::NodeStopped)??
            }
        };
        Ok(ModuleHandle {
            client: self.clone(),
            module: loaded,
        })
    }

    /// Loads a module from a `.wasm` file.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<ModuleHandle, ModuleError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Stores a value and returns a ref to it. The value is encoded straight into the store.
    pub fn put<T: Serialize + ?Sized>(&self, value: &T) -> Result<ObjectRef<T>, PutError> {
        let inner = self.inner();
        let (sealed, refs) = codec::encode_into_store(|l| inner.objects.allocate(l), value)?;
        let id = inner.ids.next();
        inner.objects.insert_ready(id, sealed, refs, 1);
        Ok(ObjectRef::adopt(id))
    }

    /// Stores an object already encoded (postcard metadata plus buffers), as the CLI does with
    /// values converted from JSON. Such an object holds no refs.
    pub fn put_encoded(&self, object: &EncodedObject) -> Result<ObjectRef<()>, PutError> {
        let inner = self.inner();
        let lens: Vec<usize> = object.buffers.iter().map(Vec::len).collect();
        let layout = crate::store::Layout::plan(object.meta.len(), &lens)
            .ok_or_else(|| PutError::Serialize("the buffers overflow the address space".into()))?;
        let mut block = inner.objects.allocate(layout)?;
        let (meta, buffers) = block.parts_mut();
        meta.copy_from_slice(&object.meta);
        for (dst, src) in buffers.into_iter().zip(&object.buffers) {
            dst.copy_from_slice(src);
        }
        let id = inner.ids.next();
        inner.objects.insert_ready(id, block.seal(), Vec::new(), 1);
        Ok(ObjectRef::adopt(id))
    }

    /// Waits for the object and returns its value.
    pub async fn get<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T, GetError> {
        self.get_opt(r, None).await
    }

    /// Like [`get`](Self::get), failing with [`GetError::Timeout`] after `timeout`.
    pub async fn get_timeout<T: DeserializeOwned>(
        &self,
        r: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<T, GetError> {
        self.get_opt(r, Some(timeout)).await
    }

    async fn get_opt<T: DeserializeOwned>(
        &self,
        r: &ObjectRef<T>,
        timeout: Option<Duration>,
    ) -> Result<T, GetError> {
        let id = r.id();
        if let Some(v) = self.try_get_now(id) {
            return v;
        }
        let (sealed, contained) = match timeout {
            // Waiting needs no runtime of ours: the caller's task waits on the object itself.
            None if !self.inner().objects.is_foreign(id) => {
                self.inner().objects.wait_object(id, None).await?
            }
            // A timeout needs a timer and a pull needs the network; the node's runtime has
            // both whatever the caller runs on.
            t => {
                let node = self.inner().clone();
                self.inner()
                    .handle
                    .spawn(async move { node.objects.wait_object(id, t).await })
                    .await
                    .map_err(|_| GetError::NodeStopped)??
            }
        };
        codec::decode_object(&self.inner().objects, id, &sealed, Some(contained))
    }

    /// The value if the object is already complete (no waiting, no task switch).
    fn try_get_now<T: DeserializeOwned>(&self, id: ObjectId) -> Option<Result<T, GetError>> {
        match self.inner().objects.state(id) {
            None if self.inner().objects.is_foreign(id) => None,
            None => Some(Err(GetError::ObjectLost { id })),
            Some(ObjectState::Ready(sealed)) => Some(codec::decode_object(
                &self.inner().objects,
                id,
                &sealed,
                None,
            )),
            Some(ObjectState::Failed(e)) => Some(Err(GetError::Task((*e).clone()))),
            // Pending: wait; spilled: `wait_ready` reads it back; elsewhere: pulled.
            Some(ObjectState::Pending | ObjectState::Spilled(_) | ObjectState::Elsewhere) => None,
        }
    }

    /// Blocking form of [`get`](Self::get), for code that is not async.
    pub fn get_blocking<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T, GetError> {
        self.get_blocking_opt(r, None)
    }

    /// Blocking form of [`get_timeout`](Self::get_timeout).
    pub fn get_blocking_timeout<T: DeserializeOwned>(
        &self,
        r: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<T, GetError> {
        self.get_blocking_opt(r, Some(timeout))
    }

    fn get_blocking_opt<T: DeserializeOwned>(
        &self,
        r: &ObjectRef<T>,
        timeout: Option<Duration>,
    ) -> Result<T, GetError> {
        let id = r.id();
        if let Some(v) = self.try_get_now(id) {
            return v;
        }
        let node = self.inner().clone();
        let (sealed, contained) = self
            .inner()
            .block_on(async move { node.objects.wait_object(id, timeout).await })
            .ok_or(GetError::NodeStopped)??;
        codec::decode_object(&self.inner().objects, id, &sealed, Some(contained))
    }

    /// The object's encoding (postcard metadata and out-of-band buffers), copied out of the
    /// store. For tools that decode with a manifest instead of a Rust type, like `ferry run`.
    pub async fn get_encoded<T>(&self, r: &ObjectRef<T>) -> Result<EncodedObject, GetError> {
        let id = r.id();
        let node = self.inner().clone();
        let sealed = self
            .inner()
            .handle
            .spawn(async move { node.objects.wait_object(id, None).await })
            .await
            .map_err(|_| GetError::NodeStopped)??
            .0;
        Ok(EncodedObject {
            meta: sealed.meta().to_vec(),
            buffers: (0..sealed.layout().buffers.len())
                .map(|i| sealed.buffer(i).unwrap_or_default().to_vec())
                .collect(),
        })
    }

    /// Gets every object, in order; fails with the first error.
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        refs: &[ObjectRef<T>],
    ) -> Result<Vec<T>, GetError> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            out.push(self.get(r).await?);
        }
        Ok(out)
    }

    /// Waits until `num_ready` of `refs` are complete (ready or failed) or `timeout` passes,
    /// and splits them into `(ready, pending)` in their original order, like `ray.wait`: `ready`
    /// holds at most `num_ready` refs (the first complete ones), `pending` all the others.
    pub async fn wait<T>(
        &self,
        refs: Vec<ObjectRef<T>>,
        num_ready: usize,
        timeout: Option<Duration>,
    ) -> ReadyPending<T> {
        let ids: Vec<ObjectId> = refs.iter().map(ObjectRef::id).collect();
        let flags = match timeout {
            // Waiting needs no runtime of ours: the caller's task waits on the table itself.
            None => {
                self.inner()
                    .objects
                    .wait_many(&ids, num_ready, None, WaitFlags::First)
                    .await
            }
            // A timeout needs a timer; the node's runtime has one whatever the caller runs on.
            Some(_) => {
                let node = self.inner().clone();
                self.inner()
                    .handle
                    .spawn(async move {
                        node.objects
                            .wait_many(&ids, num_ready, timeout, WaitFlags::First)
                            .await
                    })
                    .await
                    .unwrap_or_default()
            }
        };
        split(refs, &flags, num_ready)
    }

    /// The node's figures: store, objects, modules, tasks.
    pub fn stats(&self) -> NodeStats {
        self.inner().stats()
    }

    /// The current reference count of an object, or `None` if it has been freed.
    pub fn ref_count<T>(&self, r: &ObjectRef<T>) -> Option<u64> {
        self.inner().objects.ref_count(r.id())
    }

    /// Whether the object with this id still exists (it is freed when no reference is left).
    pub fn exists(&self, id: ObjectId) -> bool {
        self.inner().objects.state(id).is_some()
    }

    /// Where the object is now, or `None` if it has been freed.
    pub fn location<T>(&self, r: &ObjectRef<T>) -> Option<ObjectLocation> {
        self.inner().objects.location(r.id())
    }

    /// The size of the store's backing file, read from its open descriptor (for tests that
    /// check it is never truncated while mapped).
    #[doc(hidden)]
    pub fn store_file_len(&self) -> std::io::Result<u64> {
        self.inner().objects.store().file_len()
    }
}

/// Splits `refs` by `flags` into at most `num_ready` ready refs and the rest, keeping order.
fn split<T>(refs: Vec<ObjectRef<T>>, flags: &[bool], num_ready: usize) -> ReadyPending<T> {
    let mut ready = Vec::new();
    let mut pending = Vec::new();
    for (i, r) in refs.into_iter().enumerate() {
        if ready.len() < num_ready && flags.get(i).copied().unwrap_or(false) {
            ready.push(r);
        } else {
            pending.push(r);
        }
    }
    (ready, pending)
}

/// A module loaded on the cluster.
#[derive(Clone)]
pub struct ModuleHandle {
    client: Client,
    module: Arc<LoadedModule>,
}

impl std::fmt::Debug for ModuleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.module.fmt(f)
    }
}

impl ModuleHandle {
    /// The module's id (the hash of its bytes).
    pub fn id(&self) -> ModuleId {
        self.module.id
    }

    /// The module's functions with their signatures, by name.
    pub fn functions(&self) -> impl Iterator<Item = &FunctionSig> {
        self.module.functions.values()
    }

    /// One function's signature.
    pub fn signature(&self, name: &str) -> Option<&FunctionSig> {
        self.module.functions.get(name)
    }

    /// A typed handle for `f` (from `#[remote]`: `my_guest::add::REMOTE`). Checks that the
    /// module has the function with the same signature.
    pub fn function<P, R>(&self, f: RemoteFn<P, R>) -> Result<TypedFunction<P, R>, CallError> {
        let sig = self
            .signature(f.name())
            .ok_or_else(|| self.unknown(f.name()))?;
        let found = sig.display_signature();
        if normalize(&found) != normalize(f.signature()) {
            return Err(CallError::SignatureMismatch {
                function: f.name().to_owned(),
                expected: f.signature().to_owned(),
                found,
            });
        }
        Ok(TypedFunction {
            module: self.clone(),
            name: f.name(),
            _types: PhantomData,
        })
    }

    fn unknown(&self, function: &str) -> CallError {
        CallError::UnknownFunction {
            function: function.to_owned(),
            module: self.id(),
            available: self
                .module
                .functions
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Calls `function` with a tuple of serde values and returns at once with a ref to its
    /// result. A top-level argument that is exactly one `ObjectRef` is resolved to its value
    /// before the function runs; refs nested inside arguments stay refs.
    pub fn call<R>(
        &self,
        function: &str,
        args: impl UntypedArgs,
    ) -> Result<ObjectRef<R>, CallError> {
        let mut sink = HostArgSink::new(&self.client.inner().objects, &self.client.inner().ids);
        args.encode_args(&mut sink);
        self.submit(function, sink)
    }

    /// Calls `function` with arguments already encoded (postcard), as the CLI does with
    /// arguments converted from JSON. The call takes references of its own on any ids in
    /// `args`.
    pub fn call_encoded<R>(
        &self,
        function: &str,
        args: Vec<CallArg>,
    ) -> Result<ObjectRef<R>, CallError> {
        let objects = &self.client.inner().objects;
        for id in crate::wasm::TaskSpec::refs_of(&args) {
            objects.retain(id);
        }
        self.submit_owned(function, args)
    }

    /// Submits arguments whose refs already carry one count each, which the call takes over.
    fn submit_owned<R>(
        &self,
        function: &str,
        args: Vec<CallArg>,
    ) -> Result<ObjectRef<R>, CallError> {
        let id = self.client.inner().submit(
            self.id(),
            function,
            args,
            crate::node::CallOrigin::Driver,
        )?;
        Ok(ObjectRef::adopt(id))
    }

    fn submit<R>(
        &self,
        function: &str,
        mut sink: HostArgSink<'_>,
    ) -> Result<ObjectRef<R>, CallError> {
        if let Some((argument, source)) = sink.error.take() {
            sink.abandon();
            return Err(CallError::Serialize {
                function: function.to_owned(),
                argument,
                source,
            });
        }
        self.submit_owned(function, sink.args)
    }

    /// The client this module was loaded through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Whitespace-insensitive comparison of signatures.
fn normalize(sig: &str) -> String {
    sig.chars().filter(|c| !c.is_whitespace()).collect()
}

/// An object's encoding as stored: postcard metadata, in which each out-of-band buffer is a
/// placeholder (its index), and the buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedObject {
    /// The postcard stream.
    pub meta: Vec<u8>,
    /// The buffers, in placeholder order.
    pub buffers: Vec<Vec<u8>>,
}

/// A function of a loaded module with its parameter and result types known to the compiler.
pub struct TypedFunction<P, R> {
    module: ModuleHandle,
    name: &'static str,
    _types: PhantomData<fn(P) -> R>,
}

impl<P, R> Clone for TypedFunction<P, R> {
    fn clone(&self) -> Self {
        Self {
            module: self.module.clone(),
            name: self.name,
            _types: PhantomData,
        }
    }
}

impl<P, R> std::fmt::Debug for TypedFunction<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypedFunction({})", self.name)
    }
}

impl<P, R> TypedFunction<P, R> {
    /// Calls the function and returns at once with a ref to its result. Each argument is the
    /// parameter's type, or an `ObjectRef` to one (resolved to its value before the call).
    pub fn call<A: IntoArgs<P>>(&self, args: A) -> Result<ObjectRef<R>, CallError> {
        let mut sink = HostArgSink::new(
            &self.module.client.inner().objects,
            &self.module.client.inner().ids,
        );
        args.encode_args(&mut sink);
        self.module.submit(self.name, sink)
    }

    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}
