//! Write ferry remote functions in plain Rust.
//!
//! A guest crate depends on `ferry-guest`, marks functions with [`remote`], and builds with
//! `cargo build --release --target wasm32-unknown-unknown` (with `crate-type = ["cdylib",
//! "rlib"]`). The resulting `.wasm` is shipped by value to ferry nodes.
//!
//! ```ignore
//! use ferry_guest::prelude::*;
//!
//! #[remote]
//! pub fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! /// Refs nested in an argument stay refs; the function gets them itself.
//! #[remote]
//! pub fn sum_all(parts: Vec<ObjectRef<i64>>) -> Result<i64, Error> {
//!     let values = ferry_guest::get_many(&parts)?;
//!     Ok(values.into_iter().sum())
//! }
//! ```
//!
//! Arguments and results are any serde types (owned: `DeserializeOwned` parameters,
//! `Serialize + DeserializeOwned` results, since the manifest traces them). A function
//! returning `Result<T, E>` with `E: Serialize + DeserializeOwned + Display`
//! produces an `ObjectRef<T>`; an `Err(e)` becomes a task error whose cause is `e`. A panic
//! becomes a task error carrying the panic message.
//!
//! Inside a function the cluster is available: [`put`], [`get`], [`get_many`], [`wait`],
//! [`call`] (typed, with the `REMOTE` handle `#[remote]` generates) and [`call_by_name`].
//!
//! In a native build the crate compiles too, so a driver can depend on a guest crate for its
//! typed handles; the host functions then return [`ErrorKind::NoHost`].

use std::fmt;
use std::time::Duration;

use ferry_abi::abi;
pub use ferry_abi::{
    Blob, Buffer, Element, IntoArgs, ModuleId, ObjectId, ObjectRef, ReadyPending, RemoteFn,
    StorageKind, UntypedArgs,
};
/// Marks a function as callable by ferry. See the crate documentation.
pub use ferry_guest_macros::remote;
use serde::Serialize;
use serde::de::DeserializeOwned;

mod codec;
mod host;

#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub mod __private;

/// The usual imports for a guest crate.
pub mod prelude {
    pub use crate::{Error, ErrorKind, ObjectRef, ObjectRefExt, remote};
}

/// What went wrong in a host function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A `get` or `wait` with a timeout ran out of time.
    Timeout,
    /// The object is the result of a task that failed; the message says which and why.
    TaskFailed,
    /// The ref is not one this task was given (or the object is gone).
    InvalidRef,
    /// The called function does not exist.
    UnknownFunction,
    /// The object store could not hold the object.
    StoreFull,
    /// The object's bytes did not decode as the expected type.
    Decode,
    /// Not running inside a ferry node (a native build).
    NoHost,
    /// Any other host failure.
    Host,
}

/// An error from a host function, with the host's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The host's description.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn from_status(status: i32) -> Self {
        let kind = match status {
            abi::status::TIMEOUT => ErrorKind::Timeout,
            abi::status::TASK_FAILED => ErrorKind::TaskFailed,
            abi::status::INVALID_REF => ErrorKind::InvalidRef,
            abi::status::UNKNOWN_FUNCTION => ErrorKind::UnknownFunction,
            abi::status::STORE_FULL => ErrorKind::StoreFull,
            _ if !host::HAS_HOST => ErrorKind::NoHost,
            _ => ErrorKind::Host,
        };
        let message = if host::HAS_HOST {
            String::from_utf8_lossy(&host::take()).into_owned()
        } else {
            "ferry host functions exist only inside a ferry node (this is a native build)".into()
        };
        Self { kind, message }
    }

    fn decode(what: &str, err: postcard::Error) -> Self {
        Self {
            kind: ErrorKind::Decode,
            message: format!("{what} did not decode: {err}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

fn timeout_ms(timeout: Option<Duration>) -> i64 {
    match timeout {
        None => -1,
        Some(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

/// Stores `value` in the node's object store and returns a ref to it.
pub fn put<T: Serialize + ?Sized>(value: &T) -> Result<ObjectRef<T>, Error> {
    let e = codec::encode(value);
    let id = host::put(&e.bytes, &e.refs, &e.buffers).map_err(Error::from_status)?;
    Ok(codec::adopt(id))
}

/// Waits for the object and returns its value.
pub fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> Result<T, Error> {
    get_timeout_opt(r, None)
}

/// Like [`get`], failing with [`ErrorKind::Timeout`] if the object is not ready in time.
pub fn get_timeout<T: DeserializeOwned>(r: &ObjectRef<T>, timeout: Duration) -> Result<T, Error> {
    get_timeout_opt(r, Some(timeout))
}

fn get_timeout_opt<T: DeserializeOwned>(
    r: &ObjectRef<T>,
    timeout: Option<Duration>,
) -> Result<T, Error> {
    let len = host::get(r.id(), timeout_ms(timeout)).map_err(Error::from_status)?;
    let bytes = host::take_exact(len);
    codec::decode_from(abi::SOURCE_LAST_GET, &bytes)
        .map_err(|e| Error::decode(&format!("object {} as {}", r.id(), type_name::<T>()), e))
}

/// Gets every object, in order.
pub fn get_many<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>, Error> {
    refs.iter().map(get).collect()
}

/// Waits until `num_ready` of `refs` are ready (or `timeout` passes) and splits them into
/// `(ready, pending)`, like `ray.wait`: `ready` holds at most `num_ready` refs (the first
/// complete ones), `pending` all the others. Order within each list follows `refs`.
pub fn wait<T>(
    refs: Vec<ObjectRef<T>>,
    num_ready: usize,
    timeout: Option<Duration>,
) -> Result<ReadyPending<T>, Error> {
    let ids: Vec<ObjectId> = refs.iter().map(ObjectRef::id).collect();
    let flags = host::wait(&ids, num_ready, timeout_ms(timeout)).map_err(Error::from_status)?;
    let mut ready = Vec::new();
    let mut pending = Vec::new();
    for (r, f) in refs.into_iter().zip(flags) {
        if f && ready.len() < num_ready {
            ready.push(r)
        } else {
            pending.push(r)
        }
    }
    Ok((ready, pending))
}

/// Calls a function of this module with checked argument types, as a nested task. Returns at
/// once with a ref to the result.
pub fn call<P, R, A: IntoArgs<P>>(f: RemoteFn<P, R>, args: A) -> Result<ObjectRef<R>, Error> {
    // The arguments' refs go with `args`; the host must take the call's counts first.
    codec::with_deferred_releases(|| {
        let mut sink = codec::CallSink::default();
        args.encode_args(&mut sink);
        submit(None, f.name(), sink)
    })
}

/// Calls a function by name, in this module or (with `module`) another loaded one. A
/// top-level argument that is exactly one `ObjectRef` is resolved by value (Ray's rule).
pub fn call_by_name<R>(
    module: Option<ModuleId>,
    function: &str,
    args: impl UntypedArgs,
) -> Result<ObjectRef<R>, Error> {
    codec::with_deferred_releases(|| {
        let mut sink = codec::CallSink::default();
        args.encode_args(&mut sink);
        submit(module, function, sink)
    })
}

fn submit<R>(
    module: Option<ModuleId>,
    function: &str,
    sink: codec::CallSink,
) -> Result<ObjectRef<R>, Error> {
    if let Some(status) = sink.error {
        return Err(Error::from_status(status));
    }
    let request = abi::CallRequest {
        module,
        function: function.to_owned(),
        args: sink.args,
    };
    let bytes = postcard::to_allocvec(&request).expect("encoding to a Vec cannot fail");
    let id = host::call(&bytes).map_err(Error::from_status)?;
    Ok(codec::adopt(id))
}

/// Writes a message to the node's log at info level.
pub fn log(message: &str) {
    host::log(abi::log_level::INFO, message);
}

/// `r.get()` for refs.
pub trait ObjectRefExt<T> {
    /// See [`get`].
    fn get(&self) -> Result<T, Error>;
}

impl<T: DeserializeOwned> ObjectRefExt<T> for ObjectRef<T> {
    fn get(&self) -> Result<T, Error> {
        get(self)
    }
}

fn type_name<T>() -> &'static str {
    std::any::type_name::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_builds_report_no_host() {
        let err = put(&1u32).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoHost);
        assert!(err.message().contains("inside a ferry node"));
    }
}
