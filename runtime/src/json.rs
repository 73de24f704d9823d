//! JSON to and from a function's types, using the formats in the module's manifest.
//!
//! This is how `ferry run` takes arguments and prints results without knowing the guest's
//! Rust types: the manifest carries each type's serde format (traced by `serde-reflection`
//! when the guest was inspected), and the converter walks JSON and postcard side by side.
//!
//! JSON follows serde's usual shape: structs are objects, enums are `"Variant"` or
//! `{"Variant": ...}`, tuples and arrays are arrays, `Option` is `null` or the value, and an
//! `ObjectRef` is its 16 id bytes as an array.

use ferry_abi::abi::CallArg;
use ferry_abi::manifest::{FunctionSig, TypeDesc};
use serde::de::DeserializeSeed;
use serde_json::Value;
use serde_reflection::Registry;
use serde_reflection::json_converter::{
    DeserializationContext, EmptyEnvironment, SerializationContext,
};

/// A JSON value did not fit a function's types.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not valid JSON.
    #[error("argument {argument} is not valid JSON: {source}")]
    Syntax {
        /// The argument's position (1-based).
        argument: usize,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },
    /// Wrong number of arguments.
    #[error("`{function}` takes {expected} arguments, {got} were given (signature: {signature})")]
    Count {
        /// The function.
        function: String,
        /// Parameters.
        expected: usize,
        /// Arguments.
        got: usize,
        /// The signature.
        signature: String,
    },
    /// The type's format could not be traced when the module was inspected.
    #[error("`{function}`: the type `{ty}` cannot be converted from or to JSON ({reason})")]
    NoFormat {
        /// The function.
        function: String,
        /// The type.
        ty: String,
        /// Why tracing failed.
        reason: String,
    },
    /// The JSON does not match the type.
    #[error("argument {argument} `{name}: {ty}` of `{function}`: {message}")]
    Mismatch {
        /// The function.
        function: String,
        /// The argument's position (1-based).
        argument: usize,
        /// The parameter's name.
        name: String,
        /// The parameter's type.
        ty: String,
        /// What did not fit.
        message: String,
    },
    /// A result's bytes did not decode as its type.
    #[error("`{function}`: the result did not decode as `{ty}`: {message}")]
    Result {
        /// The function.
        function: String,
        /// The type.
        ty: String,
        /// What went wrong.
        message: String,
    },
}

fn format_of(sig: &FunctionSig, ty: &TypeDesc) -> Result<serde_reflection::Format, JsonError> {
    ty.format().map_err(|reason| JsonError::NoFormat {
        function: sig.name.clone(),
        ty: ty.rust.clone(),
        reason,
    })
}

/// Encodes JSON arguments (one JSON text per parameter) as call arguments.
pub fn args_from_json(sig: &FunctionSig, args: &[String]) -> Result<Vec<CallArg>, JsonError> {
    if args.len() != sig.params.len() {
        return Err(JsonError::Count {
            function: sig.name.clone(),
            expected: sig.params.len(),
            got: args.len(),
            signature: sig.display_signature(),
        });
    }
    let registry = sig.registry();
    let mut out = Vec::with_capacity(args.len());
    for (i, (text, param)) in args.iter().zip(&sig.params).enumerate() {
        let value: Value = serde_json::from_str(text).map_err(|source| JsonError::Syntax {
            argument: i + 1,
            source,
        })?;
        let format = format_of(sig, &param.ty)?;
        let bytes = encode(&value, &format, &registry).map_err(|message| JsonError::Mismatch {
            function: sig.name.clone(),
            argument: i + 1,
            name: param.name.clone(),
            ty: param.ty.rust.clone(),
            message,
        })?;
        out.push(CallArg::Value {
            bytes,
            refs: Vec::new(),
        });
    }
    Ok(out)
}

fn encode(
    value: &Value,
    format: &serde_reflection::Format,
    registry: &Registry,
) -> Result<Vec<u8>, String> {
    let ctx = SerializationContext {
        value,
        format,
        registry,
        environment: &EmptyEnvironment,
    };
    postcard::to_allocvec(&ctx).map_err(|e| e.to_string())
}

fn decode(
    bytes: &[u8],
    format: serde_reflection::Format,
    registry: &Registry,
) -> Result<Value, String> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let ctx = DeserializationContext {
        format,
        registry,
        environment: &EmptyEnvironment,
    };
    ctx.deserialize(&mut de).map_err(|e| e.to_string())
}

/// Decodes a function's result as JSON.
pub fn result_to_json(sig: &FunctionSig, bytes: &[u8]) -> Result<Value, JsonError> {
    let format = format_of(sig, &sig.result)?;
    decode(bytes, format, &sig.registry()).map_err(|message| JsonError::Result {
        function: sig.name.clone(),
        ty: sig.result.rust.clone(),
        message,
    })
}

/// Decodes the cause of a function's `Err` as JSON, if the function has a traced error type.
pub fn cause_to_json(sig: &FunctionSig, bytes: &[u8]) -> Option<Value> {
    let ty = sig.error.as_ref()?;
    decode(bytes, ty.format().ok()?, &sig.registry()).ok()
}
