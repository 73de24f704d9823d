//! The contract between a ferry host and its guests.
//!
//! Both sides of ferry meet here and only here: the host runtime (`ferry`) and the guest SDK
//! (`ferry-guest`) each depend on this crate and never on each other. It holds
//!
//! - the ids ([`ObjectId`], [`ModuleId`]) and the wire form of an [`ObjectRef`];
//! - out-of-band buffers ([`Blob`], [`Buffer`]) whose bytes travel beside a value, not in it;
//! - typed call handles ([`RemoteFn`]) and the argument traits ([`Arg`], [`IntoArgs`]) that make
//!   a wrong argument type a compile error on either side;
//! - the guest ABI: import and export names, status codes, and the messages that cross the
//!   boundary ([`abi`]);
//! - with the `manifest` feature, the function manifest a module carries ([`manifest`]).
//!
//! The crate is `no_std` + `alloc` so that it builds for `wasm32-unknown-unknown` with nothing
//! else; the manifest needs `std` because its type formats come from `serde-reflection`.
#![no_std]

extern crate alloc;

pub mod abi;
mod args;
mod blob;
mod ids;
#[cfg(feature = "manifest")]
pub mod manifest;
mod object_ref;

pub use args::{Arg, ArgSink, IntoArgs, RemoteFn, UntypedArgs};
pub use blob::{
    BLOB_SERDE_NAME, Blob, BlobHooks, BlobStorage, Buffer, BufferLengthError, Element, StorageKind,
    blob_hooks, install_blob_hooks, is_buffer_name,
};
pub use ids::{ModuleId, ObjectId, ParseIdError};
pub use object_ref::{ObjectRef, RefHooks, install_ref_hooks, installed_ref_hooks};

/// What `wait` returns: the refs that are ready and the refs still pending, each in the order
/// they were given (Ray's `ray.wait`).
pub type ReadyPending<T> = (alloc::vec::Vec<ObjectRef<T>>, alloc::vec::Vec<ObjectRef<T>>);
