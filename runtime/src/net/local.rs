//! What the network layer needs from the node it belongs to.
//!
//! `net` sits below the node: the node implements [`LocalNode`] and hands it to
//! [`Cluster::start`](super::cluster::Cluster::start), so that nothing in `net` depends on
//! the node's module or on `wasm` (the node depends on `net`, not the other way round).

use std::sync::Arc;

use ferry_abi::ModuleId;

use crate::ids::NodeId;
use crate::net::proto::Load;
use crate::objects::{BoxFuture, ObjectTable};
use ferry_core::TaskSpec;

/// The node a [`Cluster`](super::cluster::Cluster) serves.
pub trait LocalNode: Send + Sync + 'static {
    /// The node's id.
    fn id(&self) -> NodeId;
    /// How many calls it runs at once (the cores it offers the cluster).
    fn cores(&self) -> u32;
    /// Its object table.
    fn objects(&self) -> &Arc<ObjectTable>;
    /// Calls running now, and calls waiting (for arguments or an instance).
    fn busy(&self) -> (u64, u64);
    /// Its own figures for a load report: the store, calls finished, modules compiled,
    /// objects (what the network counts itself is left at zero).
    fn load(&self) -> Load;
    /// The bytes of `module`, if it is loaded here.
    fn module_bytes(&self, module: ModuleId) -> Option<Arc<[u8]>>;
    /// Loads a module from its bytes (their hash is its id, checked by the caller), on the
    /// node's workers (compiling never runs on the network's thread).
    fn load_module(self: Arc<Self>, wasm: Vec<u8>) -> BoxFuture<Result<(), String>>;
    /// Runs a call to its end: its result (an entry the caller made) is complete after.
    fn run(self: Arc<Self>, spec: TaskSpec) -> BoxFuture<()>;
}
