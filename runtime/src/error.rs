//! Errors, one enum per boundary. Every variant says what a person can do about it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_abi::{ModuleId, ObjectId};
use serde::de::DeserializeOwned;

use crate::ids::NodeId;

/// The object store could not be created or could not hold an object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A setting is out of range.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store directory cannot hold the store (a full `/dev/shm`, for example).
    #[error(
        "cannot reserve {capacity} bytes for the object store in {}: {source} \
         (choose a smaller store or another directory)",
        dir.display()
    )]
    NoSpace {
        /// The store directory.
        dir: PathBuf,
        /// The requested capacity.
        capacity: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The object is larger than the whole store.
    #[error("an object of {len} bytes is larger than the object store ({capacity} bytes)")]
    TooLarge {
        /// The object's size.
        len: u64,
        /// The store's capacity.
        capacity: u64,
    },
    /// The store has no free extent large enough right now.
    #[error(
        "the object store is full: no room for {len} bytes ({used} of {capacity} bytes in use)"
    )]
    Full {
        /// The object's size.
        len: u64,
        /// Bytes in use.
        used: u64,
        /// The store's capacity.
        capacity: u64,
    },
}

/// A module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not a valid Wasm module, or it did not compile.
    #[error("invalid Wasm module: {0}")]
    Invalid(String),
    /// The module was not built with `ferry-guest`.
    #[error(
        "not a ferry module: it has no `ferry_abi` section (build it with ferry-guest and mark \
         functions with #[ferry_guest::remote])"
    )]
    NotFerry,
    /// The module was built for another ABI version.
    #[error("the module speaks ferry ABI version {found}, this node speaks {expected}")]
    AbiVersion {
        /// The module's version.
        found: u32,
        /// The host's version.
        expected: u32,
    },
    /// The module imports something the host does not provide.
    #[error("the module imports `{module}::{name}`, which ferry does not provide")]
    UnknownImport {
        /// The import module.
        module: String,
        /// The import name.
        name: String,
    },
    /// Reading a function's signature failed.
    #[error("could not read the signature of `{function}`: {reason}")]
    Manifest {
        /// The function.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// The node shut down during the load.
    #[error("the node shut down")]
    NodeStopped,
    /// Every guest instance is held by a guest waiting for another task, so nothing could
    /// read the module's signatures (raise `NodeConfig::max_instances`).
    #[error("{0}")]
    Busy(String),
    /// Reading the module file failed.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a task failed. Carries the function's name and the node it ran on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{function}` on node {node} {kind}")]
pub struct TaskError {
    /// The function that was called.
    pub function: String,
    /// The node the task was placed on.
    pub node: NodeId,
    /// What happened.
    pub kind: TaskErrorKind,
}

/// What made a task fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskErrorKind {
    /// The guest panicked.
    #[error("panicked: {message}")]
    Panicked {
        /// The panic message and location.
        message: String,
    },
    /// The guest returned `Err(e)`.
    #[error("returned an error: {message}")]
    Failed {
        /// `e`'s `Display`.
        message: String,
        /// `e`, postcard-encoded; decode it with [`TaskError::cause`].
        cause: Vec<u8>,
    },
    /// The guest trapped (an `unreachable`, an out-of-bounds access, a stack overflow, ...).
    #[error("trapped: {trap}")]
    Trapped {
        /// The trap and its Wasm backtrace.
        trap: String,
    },
    /// The guest ran longer than the time limit.
    #[error("ran longer than its time limit of {limit:?}")]
    TimedOut {
        /// The limit.
        limit: Duration,
    },
    /// The guest tried to grow its memory past the limit.
    #[error("tried to use more than its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The limit.
        limit: u64,
    },
    /// The module has no such function.
    #[error("does not exist in module {module}")]
    UnknownFunction {
        /// The module.
        module: ModuleId,
    },
    /// The arguments did not decode as the function's parameter types.
    #[error("got arguments that do not match its parameters: {detail}")]
    BadArguments {
        /// Which argument, its expected type, and the decoder's message.
        detail: String,
    },
    /// A top-level argument is the result of a task that failed. Only the first failure of a
    /// chain is kept (shared, not copied), so long chains cost nothing per step.
    #[error(
        "could not run: argument {argument} comes from failed task `{upstream_function}`; the \
         first failure: {root}"
    )]
    UpstreamFailed {
        /// The argument's position (1-based).
        argument: usize,
        /// The function whose result the argument was.
        upstream_function: String,
        /// The failure that started the chain.
        root: Arc<TaskError>,
    },
    /// An argument object no longer exists.
    #[error("could not run: argument {argument} (object {id}) no longer exists")]
    ArgumentLost {
        /// The argument's position (1-based).
        argument: usize,
        /// The object.
        id: ObjectId,
    },
    /// The guest broke the ABI contract (a bad pointer, a result that is not a valid ref, ...).
    #[error("broke the guest ABI: {detail}")]
    Abi {
        /// What was wrong.
        detail: String,
    },
    /// The host could not store the result or run the task.
    #[error("could not complete: {detail}")]
    Host {
        /// What went wrong.
        detail: String,
    },
    /// The node running the call (or holding an argument it needed) died or was cut off.
    #[error("was lost: node {node} died ({detail})")]
    NodeDied {
        /// The node that died.
        node: NodeId,
        /// What was noticed (the connection's error).
        detail: String,
    },
}

impl TaskError {
    /// The typed error value of a guest that returned `Err(e)` (like Ray's
    /// `RayTaskError.cause`). `None` if the task failed otherwise or `E` does not match.
    /// Looks through upstream failures to the root.
    pub fn cause<E: DeserializeOwned>(&self) -> Option<E> {
        match &self.root().kind {
            TaskErrorKind::Failed { cause, .. } => postcard::from_bytes(cause).ok(),
            _ => None,
        }
    }

    /// The first failure in a chain of upstream failures.
    pub fn root(&self) -> &TaskError {
        match &self.kind {
            TaskErrorKind::UpstreamFailed { root, .. } => root,
            _ => self,
        }
    }
}

/// A `get` or `wait` did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The object was not ready within the timeout (Ray's `GetTimeoutError`).
    #[error("object {id} was not ready within {timeout:?}")]
    Timeout {
        /// The object.
        id: ObjectId,
        /// The timeout.
        timeout: Duration,
    },
    /// The task producing the object failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The ref does not name a live object on this node.
    #[error("object {id} does not exist (it was freed, or the ref was not made by this cluster)")]
    ObjectLost {
        /// The object.
        id: ObjectId,
    },
    /// The object's bytes are not a `T`.
    #[error("object {id} did not decode as `{type_name}`: {source}")]
    Decode {
        /// The object.
        id: ObjectId,
        /// The expected type.
        type_name: &'static str,
        /// The decoder's message.
        #[source]
        source: postcard::Error,
    },
    /// The object holds a ref it did not declare when it was stored (only a guest breaking
    /// the ABI can make one); it is not decoded, so that no one is handed an object id they
    /// were never given.
    #[error(
        "object {id} contains a ref to {undeclared} that it did not declare when it was stored; \
         refusing to decode it"
    )]
    UndeclaredRef {
        /// The object.
        id: ObjectId,
        /// The ref it did not declare.
        undeclared: ObjectId,
    },
    /// The node shut down while waiting.
    #[error("the node shut down")]
    NodeStopped,
    /// The object was held only by a node that died or was cut off.
    #[error("object {id} is lost: node {node} held it and died ({detail})")]
    NodeDied {
        /// The object.
        id: ObjectId,
        /// The node that died.
        node: NodeId,
        /// What was noticed.
        detail: String,
    },
    /// The object exists but could not be read back (it was spilled and restoring failed).
    #[error("object {id} is unavailable: {reason}")]
    Unavailable {
        /// The object.
        id: ObjectId,
        /// Why.
        reason: String,
    },
}

impl GetError {
    /// The task error, if the object's task failed.
    pub fn task_error(&self) -> Option<&TaskError> {
        match self {
            Self::Task(e) => Some(e),
            _ => None,
        }
    }
}

/// A `put` failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The value did not serialize.
    #[error("the value did not serialize: {0}")]
    Serialize(String),
    /// The store could not hold it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A call could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The module has no function of that name.
    #[error("module {module} has no function `{function}` (its functions: {available})")]
    UnknownFunction {
        /// The function asked for.
        function: String,
        /// The module.
        module: ModuleId,
        /// The functions it has.
        available: String,
    },
    /// The module is not loaded on this node.
    #[error("module {module} is not loaded")]
    ModuleNotLoaded {
        /// The module.
        module: ModuleId,
    },
    /// The number of arguments does not match the function.
    #[error("`{function}` takes {expected} arguments, {got} were given (signature: {signature})")]
    ArgumentCount {
        /// The function.
        function: String,
        /// Its parameter count.
        expected: usize,
        /// The arguments given.
        got: usize,
        /// Its signature.
        signature: String,
    },
    /// A typed handle does not match the module's function (the module changed).
    #[error(
        "the typed handle for `{function}` expects `{expected}` but the module's function is \
         `{found}` (rebuild the driver against this module)"
    )]
    SignatureMismatch {
        /// The function.
        function: String,
        /// The handle's signature.
        expected: String,
        /// The module's signature.
        found: String,
    },
    /// An argument did not serialize, or (holding buffers) could not be stored.
    #[error("argument {argument} of `{function}` could not be encoded: {source}")]
    Serialize {
        /// The function.
        function: String,
        /// The argument's position (1-based).
        argument: usize,
        /// What went wrong.
        #[source]
        source: PutError,
    },
    /// The node holds as many unfinished calls as it accepts from this caller
    /// ([`NodeConfig::max_pending_calls`](crate::NodeConfig::max_pending_calls)), or the
    /// calling task has as many unfinished calls as one task may
    /// ([`NodeConfig::max_calls_per_task`](crate::NodeConfig::max_calls_per_task)). Try again
    /// once some have finished.
    #[error("too many unfinished calls: {pending} of {limit} {scope}; try again once some finish")]
    Overloaded {
        /// The unfinished calls counted.
        pending: u64,
        /// The limit they reached.
        limit: u64,
        /// Whose calls were counted ("on this node for drivers", "on this node for calls made
        /// by guests", "made by this task").
        scope: &'static str,
    },
    /// The node is shutting down.
    #[error("the node shut down")]
    NodeStopped,
    /// No node of the cluster can run the call.
    #[error("no node can run the call: {reason}")]
    NoNode {
        /// Why.
        reason: String,
    },
}
