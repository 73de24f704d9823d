//! Support for the code `#[remote]` generates. Not a public API.

use std::fmt::Display;
use std::sync::Once;

use ferry_abi::abi::{self, fail_kind};
use ferry_abi::manifest::{FunctionSig, Param, TypeDesc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_reflection::{FormatHolder, Samples, Tracer, TracerConfig};

use crate::{codec, host};

pub use ferry_abi::abi::ABI_VERSION;

/// The ABI version as the bytes of the `ferry_abi` custom section.
pub const ABI_SECTION_BYTES: [u8; 4] = ABI_VERSION.to_le_bytes();

/// Allocates `size` bytes aligned to `align` for the host to write into. Returns 0 on failure.
#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn __ferry_alloc(size: usize, align: usize) -> *mut u8 {
    let Ok(layout) = std::alloc::Layout::from_size_align(size.max(1), align.max(1)) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size.
    unsafe { std::alloc::alloc(layout) }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "panic with a non-string payload".to_owned()
            };
            let full = match info.location() {
                Some(l) => format!("{message} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => message,
            };
            host::fail(fail_kind::PANIC, &full, &[]);
        }));
    });
}

/// The argument bytes the host wrote for a shim call. Takes ownership of the buffer.
///
/// # Safety
/// `ptr` and `len` must describe a buffer obtained from [`__ferry_alloc`] with alignment 1
/// (which the host does before calling a shim), or `len` must be 0.
pub unsafe fn take_args(ptr: *mut u8, len: usize) -> Vec<u8> {
    install_panic_hook();
    codec::install_hooks();
    if len == 0 || ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract, `ptr` was allocated by `__ferry_alloc(len, 1)`, i.e. by the
    // global allocator with a layout of size `len` and alignment 1 — the layout a `Vec<u8>`
    // with capacity `len` has — and the host initialised all `len` bytes.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Decodes a shim's parameters one by one, so that a failure names the parameter.
pub struct ArgDecoder<'a> {
    function: &'static str,
    rest: &'a [u8],
    index: usize,
}

impl<'a> ArgDecoder<'a> {
    /// Starts decoding the arguments of `function` from `bytes`.
    pub fn new(function: &'static str, bytes: &'a [u8]) -> Self {
        Self {
            function,
            rest: bytes,
            index: 0,
        }
    }

    /// Decodes the next parameter. On failure the task is failed and the shim's status is
    /// returned as the error.
    pub fn arg<T: DeserializeOwned>(&mut self, name: &str, ty: &str) -> Result<T, i32> {
        self.index += 1;
        match postcard::take_from_bytes::<T>(self.rest) {
            Ok((value, rest)) => {
                self.rest = rest;
                Ok(value)
            }
            Err(e) => Err(bad_arguments(&format!(
                "argument {} `{name}: {ty}` of `{}` did not decode: {e}",
                self.index, self.function
            ))),
        }
    }

    /// Checks that every argument byte was used.
    pub fn finish(self) -> Result<(), i32> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(bad_arguments(&format!(
                "`{}` got {} bytes more than its {} parameters take",
                self.function,
                self.rest.len(),
                self.index
            )))
        }
    }
}

fn bad_arguments(message: &str) -> i32 {
    host::fail(fail_kind::BAD_ARGUMENTS, message, &[]);
    abi::status::FAILED
}

/// Hands a function's value to the host as its result.
pub fn ret<T: Serialize>(value: T) -> i32 {
    let (bytes, refs) = codec::encode(&value);
    drop(value);
    match host::result(&bytes, &refs) {
        0 => abi::status::OK,
        _ => abi::status::FAILED,
    }
}

/// Hands a `Result`-returning function's outcome to the host: `Ok` as the result, `Err` as a
/// task error whose cause is the encoded error value.
pub fn ret_result<T: Serialize, E: Serialize + Display>(outcome: Result<T, E>) -> i32 {
    match outcome {
        Ok(value) => ret(value),
        Err(e) => {
            let (cause, _) = codec::encode(&e);
            host::fail(fail_kind::ERROR, &e.to_string(), &cause);
            abi::status::FAILED
        }
    }
}

/// Builds a function's signature for the manifest, tracing each type with serde-reflection.
pub struct SigBuilder {
    tracer: Tracer,
    samples: Samples,
    sig: FunctionSig,
}

impl SigBuilder {
    /// Starts the signature of `name`.
    pub fn new(name: &str) -> Self {
        Self {
            tracer: Tracer::new(TracerConfig::default()),
            samples: Samples::new(),
            sig: FunctionSig {
                name: name.to_owned(),
                params: Vec::new(),
                result: TypeDesc::new("()", Err("not traced".into())),
                error: None,
                registry: Default::default(),
            },
        }
    }

    fn trace<T: DeserializeOwned>(&mut self, rust: &str) -> TypeDesc {
        let format = self
            .tracer
            .trace_type::<T>(&self.samples)
            .map_err(|e| e.to_string())
            .and_then(|(mut format, _)| {
                format.normalize().map_err(|e| e.to_string())?;
                Ok(format)
            });
        TypeDesc::new(rust, format)
    }

    /// Adds a parameter.
    pub fn param<T: DeserializeOwned>(mut self, name: &str, rust: &str) -> Self {
        let ty = self.trace::<T>(rust);
        self.sig.params.push(Param {
            name: name.to_owned(),
            ty,
        });
        self
    }

    /// Sets the result type.
    pub fn result<T: DeserializeOwned>(mut self, rust: &str) -> Self {
        self.sig.result = self.trace::<T>(rust);
        self
    }

    /// Sets the error type of a `Result`-returning function.
    pub fn error<E: DeserializeOwned>(mut self, rust: &str) -> Self {
        self.sig.error = Some(self.trace::<E>(rust));
        self
    }

    /// Hands the signature to the host.
    pub fn finish(mut self) -> i32 {
        codec::install_hooks();
        let mut registry = self.tracer.registry_unchecked();
        for container in registry.values_mut() {
            // Unresolved parts (an enum variant never seen) are left out rather than sent.
            container.reduce();
        }
        self.sig.registry = FunctionSig::encode_registry(&registry);
        let bytes = postcard::to_allocvec(&self.sig).expect("encoding to a Vec cannot fail");
        host::result(&bytes, &[])
    }
}

/// Names the parts of a `Result`-like return type, so that `#[remote]` can handle aliases
/// such as `io::Result<T>` without seeing the error type.
pub trait ResultParts {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
}

impl<T, E> ResultParts for Result<T, E> {
    type Ok = T;
    type Err = E;
}
