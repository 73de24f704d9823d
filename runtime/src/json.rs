//! JSON to and from a function's types, using the formats in the module's manifest.
//!
//! This is how `ferry run` takes arguments and prints results without knowing the guest's
//! Rust types: the manifest carries each type's serde format (traced by `serde-reflection`
//! when the guest was inspected), and the converter walks JSON and postcard side by side.
//!
//! JSON follows serde's usual shape: structs are objects, enums are `"Variant"` or
//! `{"Variant": ...}`, tuples and arrays are arrays, `Option` is `null` or the value, and an
//! `ObjectRef` is its 16 id bytes as an array.

use crate::client::EncodedObject;
use ferry_abi::manifest::{FunctionSig, TypeDesc};
use serde::de::DeserializeSeed;
use serde_json::Value;
use serde_reflection::json_converter::{
    DeserializationContext, EmptyEnvironment, SerializationContext,
};
use serde_reflection::{ContainerFormat, Format, Named, Registry, VariantFormat};

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

fn format_of(sig: &FunctionSig, ty: &TypeDesc) -> Result<Format, JsonError> {
    ty.format().map_err(|reason| JsonError::NoFormat {
        function: sig.name.clone(),
        ty: ty.rust.clone(),
        reason,
    })
}

/// Encodes JSON arguments (one JSON text per parameter), each as postcard metadata plus the
/// out-of-band buffers its `Blob`s and `Buffer`s became (JSON arrays of numbers).
pub fn args_from_json(sig: &FunctionSig, args: &[String]) -> Result<Vec<EncodedObject>, JsonError> {
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
        let mismatch = |message| JsonError::Mismatch {
            function: sig.name.clone(),
            argument: i + 1,
            name: param.name.clone(),
            ty: param.ty.rust.clone(),
            message,
        };
        let mut b = Buffers::default();
        let value = unit_variants(value, &format, &registry, Direction::In, &mut b);
        if let Some(message) = b.error {
            return Err(mismatch(message));
        }
        let meta = encode(&value, &format, &registry).map_err(mismatch)?;
        out.push(EncodedObject {
            meta,
            buffers: b.collected,
        });
    }
    Ok(out)
}

fn encode(value: &Value, format: &Format, registry: &Registry) -> Result<Vec<u8>, String> {
    let ctx = SerializationContext {
        value,
        format,
        registry,
        environment: &EmptyEnvironment,
    };
    postcard::to_allocvec(&ctx).map_err(|e| {
        // postcard drops the message of a custom error; the same walk through serde_json's
        // serializer keeps it (the shape checks are the converter's, not the format's).
        match serde_json::to_string(&ctx) {
            Err(detailed) => detailed.to_string(),
            Ok(_) => e.to_string(),
        }
    })
}

fn decode(bytes: &[u8], format: Format, registry: &Registry) -> Result<Value, String> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let ctx = DeserializationContext {
        format,
        registry,
        environment: &EmptyEnvironment,
    };
    ctx.deserialize(&mut de).map_err(|e| e.to_string())
}

/// Decodes a function's result as JSON (its buffers as arrays of numbers).
pub fn result_to_json(sig: &FunctionSig, object: &EncodedObject) -> Result<Value, JsonError> {
    let format = format_of(sig, &sig.result)?;
    let registry = sig.registry();
    let error = |message| JsonError::Result {
        function: sig.name.clone(),
        ty: sig.result.rust.clone(),
        message,
    };
    let value = decode(&object.meta, format.clone(), &registry).map_err(error)?;
    let mut b = Buffers {
        stored: &object.buffers,
        ..Buffers::default()
    };
    let value = unit_variants(value, &format, &registry, Direction::Out, &mut b);
    match b.error {
        Some(message) => Err(error(message)),
        None => Ok(value),
    }
}

/// Decodes the cause of a function's `Err` as JSON, if the function has a traced error type.
pub fn cause_to_json(sig: &FunctionSig, bytes: &[u8]) -> Option<Value> {
    let ty = sig.error.as_ref()?;
    let format = ty.format().ok()?;
    let registry = sig.registry();
    let value = decode(bytes, format.clone(), &registry).ok()?;
    Some(unit_variants(
        value,
        &format,
        &registry,
        Direction::Out,
        &mut Buffers::default(),
    ))
}

/// Out-of-band buffers met while converting: a `Blob` or `Buffer<T>` is a JSON array of
/// numbers (bytes, or `T`s), and a placeholder index in the postcard stream.
#[derive(Default)]
struct Buffers<'a> {
    /// The buffers of the object being shown (`Direction::Out`).
    stored: &'a [Vec<u8>],
    /// The buffers of the value being encoded (`Direction::In`).
    collected: Vec<Vec<u8>>,
    /// The first conversion that failed.
    error: Option<String>,
}

/// The element type of a buffer type's serde name (`ferry::Blob` holds bytes).
fn element_of(name: &str) -> &str {
    name.strip_prefix("ferry::Buffer<")
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or("u8")
}

macro_rules! numbers {
    ($elem:expr, $bytes:expr, $($t:ty),*) => {
        match $elem {
            $(stringify!($t) => Some(
                $bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| serde_json::json!(<$t>::from_le_bytes(c.try_into().unwrap_or_default())))
                    .collect::<Vec<Value>>(),
            ),)*
            _ => None,
        }
    };
}

macro_rules! to_bytes {
    ($elem:expr, $items:expr, $($t:ty => $get:ident),*) => {
        match $elem {
            $(stringify!($t) => $items
                .iter()
                .map(|v| {
                    v.$get()
                        .and_then(|n| <$t>::try_from(n).ok())
                        .map(|n| n.to_le_bytes().to_vec())
                        .ok_or_else(|| format!("{v} is not a {}", stringify!($t)))
                })
                .collect::<Result<Vec<Vec<u8>>, String>>()
                .map(|v| v.concat()),)*
            "f32" => $items
                .iter()
                .map(|v| v.as_f64().map(|x| (x as f32).to_le_bytes().to_vec())
                    .ok_or_else(|| format!("{v} is not a number")))
                .collect::<Result<Vec<Vec<u8>>, String>>()
                .map(|v| v.concat()),
            "f64" => $items
                .iter()
                .map(|v| v.as_f64().map(|x| x.to_le_bytes().to_vec())
                    .ok_or_else(|| format!("{v} is not a number")))
                .collect::<Result<Vec<Vec<u8>>, String>>()
                .map(|v| v.concat()),
            other => Err(format!("unknown buffer element type {other}")),
        }
    };
}

impl Buffers<'_> {
    fn convert(&mut self, name: &str, value: Value, dir: Direction) -> Value {
        let elem = element_of(name);
        let converted = match dir {
            Direction::Out => {
                let index = value.as_u64().unwrap_or(u64::MAX) as usize;
                match self.stored.get(index) {
                    None => Err(format!(
                        "the value refers to a buffer {index} it does not have"
                    )),
                    Some(bytes) => {
                        numbers!(elem, bytes, u8, i8, u16, i16, u32, i32, u64, i64, f32, f64)
                            .map(Value::Array)
                            .ok_or_else(|| format!("unknown buffer element type {elem}"))
                    }
                }
            }
            Direction::In => match &value {
                Value::Array(items) => to_bytes!(elem, items,
                    u8 => as_u64, i8 => as_i64, u16 => as_u64, i16 => as_i64,
                    u32 => as_u64, i32 => as_i64, u64 => as_u64, i64 => as_i64)
                .map(|bytes| {
                    self.collected.push(bytes);
                    Value::from(self.collected.len() - 1)
                }),
                other => Err(format!(
                    "a {name} is given as an array of numbers, not {other}"
                )),
            },
        };
        converted.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            Value::Null
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// `"Variant"` becomes the converter's `{"Variant": null}`.
    In,
    /// `{"Variant": null}` becomes serde's usual `"Variant"`.
    Out,
}

/// Converts unit enum variants between serde_json's spelling (`"Variant"`) and the
/// converter's (`{"Variant": null}`), everywhere in `value` that `format` says is an enum.
fn unit_variants(
    value: Value,
    format: &Format,
    registry: &Registry,
    dir: Direction,
    b: &mut Buffers<'_>,
) -> Value {
    match (format, value) {
        (Format::TypeName(name), value) if ferry_abi::is_buffer_name(name) => {
            b.convert(name, value, dir)
        }
        (Format::TypeName(name), value) => match registry.get(name) {
            Some(container) => container_units(value, container, registry, dir, b),
            None => value,
        },
        (Format::Option(inner), v) if !v.is_null() => unit_variants(v, inner, registry, dir, b),
        (Format::Seq(inner), Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|v| unit_variants(v, inner, registry, dir, b))
                .collect(),
        ),
        (Format::TupleArray { content, .. }, Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|v| unit_variants(v, content, registry, dir, b))
                .collect(),
        ),
        (Format::Tuple(formats), Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .zip(formats)
                .map(|(v, f)| unit_variants(v, f, registry, dir, b))
                .collect(),
        ),
        (Format::Map { value: vf, .. }, Value::Object(map)) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, unit_variants(v, vf, registry, dir, b)))
                .collect(),
        ),
        (_, v) => v,
    }
}

fn container_units(
    value: Value,
    container: &ContainerFormat,
    registry: &Registry,
    dir: Direction,
    b: &mut Buffers<'_>,
) -> Value {
    match (container, value) {
        (ContainerFormat::Enum(variants), value) => match (dir, value) {
            (Direction::In, Value::String(name)) => {
                let mut m = serde_json::Map::new();
                m.insert(name, Value::Null);
                Value::Object(m)
            }
            (_, Value::Object(map)) if map.len() == 1 => {
                let Some((name, payload)) = map.into_iter().next() else {
                    return Value::Null;
                };
                let Some(variant) = variants.values().find(|v| v.name == name) else {
                    return Value::Object([(name, payload)].into_iter().collect());
                };
                match &variant.value {
                    VariantFormat::Unit if dir == Direction::Out => Value::String(name),
                    VariantFormat::NewType(f) => {
                        let p = unit_variants(payload, f, registry, dir, b);
                        Value::Object([(name, p)].into_iter().collect())
                    }
                    VariantFormat::Tuple(fs) => {
                        let p =
                            unit_variants(payload, &Format::Tuple(fs.clone()), registry, dir, b);
                        Value::Object([(name, p)].into_iter().collect())
                    }
                    VariantFormat::Struct(fields) => {
                        let p = struct_units(payload, fields, registry, dir, b);
                        Value::Object([(name, p)].into_iter().collect())
                    }
                    _ => Value::Object([(name, payload)].into_iter().collect()),
                }
            }
            (_, v) => v,
        },
        (ContainerFormat::Struct(fields), v) => struct_units(v, fields, registry, dir, b),
        (ContainerFormat::NewTypeStruct(f), v) => unit_variants(v, f, registry, dir, b),
        (ContainerFormat::TupleStruct(fs), v) => {
            unit_variants(v, &Format::Tuple(fs.clone()), registry, dir, b)
        }
        (_, v) => v,
    }
}

fn struct_units(
    value: Value,
    fields: &[Named<Format>],
    registry: &Registry,
    dir: Direction,
    b: &mut Buffers<'_>,
) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match fields.iter().find(|f| f.name == k) {
                        Some(f) => unit_variants(v, &f.value, registry, dir, b),
                        None => v,
                    };
                    (k, v)
                })
                .collect(),
        ),
        v => v,
    }
}
