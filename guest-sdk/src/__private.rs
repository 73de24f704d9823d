//! Support for the code `#[remote]` generates. Not a public API.

use std::fmt::Display;
use std::sync::Once;

use ferry_abi::abi::{self, fail_kind};
use ferry_abi::manifest::{FunctionSig, Param, TypeDesc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_reflection::{Format, FormatHolder, Registry, Samples, Tracer, TracerConfig};

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
        // Argument k's buffers are read from the host by its position.
        let source = (self.index - 1) as i32;
        match codec::take_from::<T>(source, self.rest) {
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
    let e = codec::encode(&value);
    // `value` stays alive until the host has copied its buffers.
    let status = host::result(&e.bytes, &e.refs, &e.buffers);
    drop(value);
    match status {
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
            // An error value is kept inline; one holding buffers is reported without it.
            let cause = codec::try_encode(&e)
                .ok()
                .filter(|c| c.buffers.is_empty())
                .map(|c| c.bytes)
                .unwrap_or_default();
            host::fail(fail_kind::ERROR, &e.to_string(), &cause);
            abi::status::FAILED
        }
    }
}

/// Traces one type's format into a shared tracer.
type TraceFn = fn(&mut Tracer, &Samples) -> Result<Format, String>;

fn trace_one<T: DeserializeOwned>(
    tracer: &mut Tracer,
    samples: &Samples,
) -> Result<Format, String> {
    let (mut format, _) = tracer
        .trace_type_once::<T>(samples)
        .map_err(|e| e.to_string())?;
    format.normalize().map_err(|e| e.to_string())?;
    Ok(format)
}

/// Traces every type of a signature into one registry. Enums are traced one variant per pass,
/// and enums nested inside other types are only discovered by name when a pass reports them
/// missing, so tracing repeats until the registry is complete (or a bound is reached, in which
/// case the unexplored variants are left out).
fn trace_all(types: &[TraceFn]) -> (Vec<Result<Format, String>>, Registry) {
    let mut known_enums: Vec<String> = Vec::new();
    for attempt in 0..16 {
        let mut tracer = Tracer::new(TracerConfig::default());
        let samples = Samples::new();
        let mut formats: Vec<_> = types.iter().map(|t| t(&mut tracer, &samples)).collect();
        for _pass in 0..1024 {
            let mut incomplete = false;
            for name in &known_enums {
                incomplete |= tracer.check_incomplete_enum(name).is_some();
            }
            if !incomplete {
                break;
            }
            formats = types.iter().map(|t| t(&mut tracer, &samples)).collect();
        }
        if attempt == 15 {
            return (formats, tracer.registry_unchecked());
        }
        match tracer.registry() {
            Ok(registry) => return (formats, registry),
            Err(serde_reflection::Error::MissingVariants(names)) => {
                let before = known_enums.len();
                for n in names {
                    if !known_enums.contains(&n) {
                        known_enums.push(n);
                    }
                }
                if known_enums.len() == before {
                    // No progress possible; settle for what the next attempt traces.
                    let mut tracer = Tracer::new(TracerConfig::default());
                    let formats = types.iter().map(|t| t(&mut tracer, &samples)).collect();
                    return (formats, tracer.registry_unchecked());
                }
            }
            Err(e) => {
                let reason = e.to_string();
                return (
                    types.iter().map(|_| Err(reason.clone())).collect(),
                    Registry::new(),
                );
            }
        }
    }
    (
        types.iter().map(|_| Err("not traced".into())).collect(),
        Registry::new(),
    )
}

/// Builds a function's signature for the manifest, tracing each type with serde-reflection.
pub struct SigBuilder {
    name: String,
    params: Vec<(String, String)>,
    result: String,
    error: Option<String>,
    tracers: Vec<TraceFn>,
}

impl SigBuilder {
    /// Starts the signature of `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            params: Vec::new(),
            result: "()".into(),
            error: None,
            tracers: Vec::new(),
        }
    }

    /// Adds a parameter.
    pub fn param<T: DeserializeOwned>(mut self, name: &str, rust: &str) -> Self {
        self.params.push((name.to_owned(), rust.to_owned()));
        self.tracers.push(trace_one::<T>);
        self
    }

    /// Sets the result type (call once, after the parameters).
    pub fn result<T: DeserializeOwned>(mut self, rust: &str) -> Self {
        self.result = rust.to_owned();
        self.tracers.push(trace_one::<T>);
        self
    }

    /// Sets the error type of a `Result`-returning function (call after `result`).
    pub fn error<E: DeserializeOwned>(mut self, rust: &str) -> Self {
        self.error = Some(rust.to_owned());
        self.tracers.push(trace_one::<E>);
        self
    }

    /// Traces the types and hands the signature to the host.
    pub fn finish(self) -> i32 {
        codec::install_hooks();
        let (formats, registry) = codec::tracing(|| trace_all(&self.tracers));
        let mut formats = formats.into_iter();
        let mut next = |rust: &str| {
            TypeDesc::new(
                rust,
                formats.next().unwrap_or_else(|| Err("not traced".into())),
            )
        };
        let params = self
            .params
            .iter()
            .map(|(name, rust)| Param {
                name: name.clone(),
                ty: next(rust),
            })
            .collect();
        let result = next(&self.result);
        let error = self.error.as_deref().map(&mut next);
        let sig = FunctionSig {
            name: self.name,
            params,
            result,
            error,
            registry: FunctionSig::encode_registry(&registry),
        };
        let bytes = postcard::to_allocvec(&sig).expect("encoding to a Vec cannot fail");
        host::result(&bytes, &[], &[])
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
