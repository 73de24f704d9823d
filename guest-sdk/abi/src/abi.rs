//! The guest ABI: names, numbers and messages that cross the Wasm boundary.
//!
//! A ferry guest is a core Wasm module. It imports host functions from the module
//! [`IMPORT_MODULE`] and exports an allocator plus one shim and one signature function per
//! remote function. `docs/abi.md` describes every function; this module is the source of truth
//! for their names and codes.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::{ModuleId, ObjectId};

/// The ABI version this crate speaks. A module records the version it was built against in the
/// custom section [`ABI_SECTION`]; a host refuses modules with another version.
pub const ABI_VERSION: u32 = 3;

/// The custom section holding the module's ABI version as 4 little-endian bytes.
pub const ABI_SECTION: &str = "ferry_abi";

/// The import module of every host function.
pub const IMPORT_MODULE: &str = "ferry";

/// Export: `(size: i32, align: i32) -> i32`, allocates guest memory for the host to write into.
pub const EXPORT_ALLOC: &str = "__ferry_alloc";

/// Prefix of the shim export of a remote function: `(args_ptr: i32, args_len: i32) -> i32`.
pub const EXPORT_FN_PREFIX: &str = "__ferry_fn_";

/// Prefix of the signature export of a remote function: `() -> i32`; it hands the encoded
/// [`manifest::FunctionSig`](crate::manifest) to the host through `result`.
pub const EXPORT_SIG_PREFIX: &str = "__ferry_sig_";

/// The guest's linear memory export.
pub const EXPORT_MEMORY: &str = "memory";

/// Host import names.
pub mod import {
    /// `(data_ptr, data_len, refs_ptr, refs_count, bufs_ptr, bufs_count, out_id_ptr) -> status`:
    /// stores a value; `bufs` is an array of `(ptr: u32, len: u32)` naming its out-of-band
    /// buffers in placeholder order
    pub const PUT: &str = "put";
    /// `(id_ptr, timeout_ms: i64) -> i64`: the length of the object's metadata (staged for
    /// `take`; its buffers are read with `buffer`), or a negative status
    pub const GET: &str = "get";
    /// `(source, index, out_ptr) -> i32`: makes buffer `index` of an object readable. `source`
    /// is [`super::SOURCE_LAST_GET`] for the object of the last `get`, or `k` for argument `k`.
    /// Writes a [`super::BufferInfo`] (12 bytes) to `out`. Returns 1 if the host mapped the
    /// buffer into guest memory at `ptr` (release it with `release_buffer(handle)`), 0 if the
    /// guest must allocate `len` bytes and copy them with `read_buffer`, or a negative status
    pub const BUFFER: &str = "buffer";
    /// `(source, index, dst_ptr) -> status`: copies buffer `index` (its whole length) to `dst`
    pub const READ_BUFFER: &str = "read_buffer";
    /// `(handle) -> status`: unmaps a buffer mapped by `buffer` (the pages become fresh zeroed
    /// memory the host may reuse for a later mapping) and unpins its object
    pub const RELEASE_BUFFER: &str = "release_buffer";
    /// `(id_ptr) -> status`: the guest holds no more handles to the object: the host drops
    /// the task's count on it (the object is freed if nothing else holds it) and the task may
    /// no longer use the id. A no-op once the result is set
    pub const RELEASE: &str = "release";
    /// `(dst_ptr, dst_cap) -> i64`: the staged bytes' length; copies them into guest memory
    /// (and clears them) if they fit in `dst_cap`
    pub const TAKE: &str = "take";
    /// `(request_ptr, request_len, out_id_ptr) -> status`: submits a [`super::CallRequest`]
    pub const CALL: &str = "call";
    /// `(ids_ptr, count, num_ready, timeout_ms: i64, ready_out_ptr) -> i32`: number ready
    pub const WAIT: &str = "wait";
    /// `(data_ptr, data_len, refs_ptr, refs_count, bufs_ptr, bufs_count) -> status`: the
    /// function's result (buffers as for `put`)
    pub const RESULT: &str = "result";
    /// `(kind, message_ptr, message_len, cause_ptr, cause_len) -> status`: the function failed
    pub const FAIL: &str = "fail";
    /// `(level, message_ptr, message_len)`
    pub const LOG: &str = "log";
}

/// The `source` of `buffer`/`read_buffer` that names the object of the last `get`.
pub const SOURCE_LAST_GET: i32 = -1;

/// What `buffer` writes: three little-endian `u32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferInfo {
    /// Where the buffer was mapped (0 when the guest must copy it).
    pub ptr: u32,
    /// The buffer's length.
    pub len: u32,
    /// The mapping's handle for `release_buffer` (0 when not mapped).
    pub handle: u32,
}

impl BufferInfo {
    /// The 12 bytes the host writes.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.ptr.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..].copy_from_slice(&self.handle.to_le_bytes());
        b
    }

    /// Reads the 12 bytes back.
    pub fn from_bytes(b: [u8; 12]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            ptr: word(0),
            len: word(4),
            handle: word(8),
        }
    }
}

/// Status codes returned by host functions (negative) and shims (non-zero).
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// The wait timed out.
    pub const TIMEOUT: i32 = -1;
    /// The object is the result of a task that failed; the error message is staged.
    pub const TASK_FAILED: i32 = -2;
    /// The id is not an object this task may use (never given to it, or already freed).
    pub const INVALID_REF: i32 = -3;
    /// A pointer, length or message from the guest was malformed.
    pub const BAD_REQUEST: i32 = -4;
    /// The called function does not exist in the module.
    pub const UNKNOWN_FUNCTION: i32 = -5;
    /// The object store could not hold the object.
    pub const STORE_FULL: i32 = -6;
    /// Any other host failure; the message is staged.
    pub const HOST_ERROR: i32 = -7;
    /// Returned by a shim when the function failed and reported it through `fail`.
    pub const FAILED: i32 = 1;
}

/// The `kind` argument of the `fail` import.
pub mod fail_kind {
    /// The function panicked; the message is the panic message.
    pub const PANIC: i32 = 1;
    /// The function returned `Err(e)`; the message is `e`'s `Display`, the cause its postcard
    /// encoding.
    pub const ERROR: i32 = 2;
    /// The arguments did not decode as the function's parameter types.
    pub const BAD_ARGUMENTS: i32 = 3;
}

/// The `level` argument of the `log` import.
pub mod log_level {
    /// Errors.
    pub const ERROR: i32 = 1;
    /// Warnings.
    pub const WARN: i32 = 2;
    /// Information.
    pub const INFO: i32 = 3;
    /// Debugging detail.
    pub const DEBUG: i32 = 4;
}

/// A nested call submitted by a guest through the `call` import (postcard-encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// The module holding the function; `None` means the caller's own module.
    pub module: Option<ModuleId>,
    /// The function's name.
    pub function: String,
    /// The arguments, in order.
    pub args: Vec<CallArg>,
}

/// One argument of a [`CallRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallArg {
    /// The postcard encoding of the value, and the refs it contains.
    Value {
        /// The encoded value.
        bytes: Vec<u8>,
        /// Ids of the refs inside the value.
        refs: Vec<ObjectId>,
    },
    /// A top-level ref, resolved to the object's value before the function runs.
    Object(ObjectId),
}
