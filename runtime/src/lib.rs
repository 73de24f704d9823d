//! ferry: ship functions by value as WebAssembly modules and run them against a shared-memory
//! object store.
//!
//! Start with [`Client`]: `Client::embedded()` runs a single-node cluster in the process.
//! Load a guest module (built with `ferry-guest`), [`put`](Client::put) objects, call
//! functions by name or through typed handles, and [`get`](Client::get) results. See
//! `ARCHITECTURE.md` for how it fits together and `docs/abi.md` for the guest ABI.

mod client;
mod codec;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ids;
pub mod json;
mod net;
mod node;
mod objects;
mod store;
mod wasm;

pub use client::{Client, EncodedObject, ModuleHandle, ObjectLocation, TypedFunction};
pub use config::{NodeConfig, default_cache_dir};
pub use error::{CallError, GetError, ModuleError, PutError, StoreError, TaskError, TaskErrorKind};
pub use ferry_abi::abi::{ABI_VERSION, CallArg};
pub use ferry_abi::manifest::{FunctionSig, Param, TypeDesc};
pub use ferry_abi::{
    Blob, Buffer, Element, IntoArgs, ModuleId, ObjectId, ObjectRef, ReadyPending, RemoteFn,
    StorageKind, UntypedArgs,
};
pub use ids::NodeId;
pub use net::cluster::{ClusterOptions, NetError};
pub use net::proto::{Load, Member, NodeInfo};
pub use net::tls::{
    Credentials, Identity, NODE_NAME, Role as CertRole, TlsError, create_ca, identity_of,
    issue_cert,
};
/// The wire protocol's decoder, for fuzzing and tests.
pub mod protocol {
    pub use crate::net::proto::{
        MAX_FRAME, ProtoError, Request, Response, decode_body, decode_frame, encode_frame,
    };
}
pub use node::{NodeError, NodeStats};
pub use objects::TableStats;
pub use store::StoreStats;
pub use store::spill::SpillStats;
pub use wasm::ModuleStats;

/// Prints the node's log to stderr, filtered by `FERRY_LOG` (tracing's `EnvFilter` syntax, for
/// example `ferry=debug`; default `warn`). What the `ferry` CLI and `ferry-bench` do at start-up;
/// a program with its own tracing subscriber does not need it. Does nothing if a subscriber is
/// already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in a node's log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
