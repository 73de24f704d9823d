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
    for (i, param) in sig.params.iter().enumerate() {
        check_registry(&format_of(sig, &param.ty)?, &registry).map_err(|message| {
            JsonError::Mismatch {
                function: sig.name.clone(),
                argument: i + 1,
                name: param.name.clone(),
                ty: param.ty.rust.clone(),
                message,
            }
        })?;
    }
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
    check_registry(&format, &registry).map_err(error)?;
    walk(&object.meta, &format, &registry).map_err(error)?;
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
    check_registry(&format, &registry).ok()?;
    walk(bytes, &format, &registry).ok()?;
    let value = decode(bytes, format.clone(), &registry).ok()?;
    Some(unit_variants(
        value,
        &format,
        &registry,
        Direction::Out,
        &mut Buffers::default(),
    ))
}

/// The deepest nesting a value converted to JSON may have (a result from a guest is
/// untrusted: converting it recurses once per level).
pub const MAX_DEPTH: usize = 128;

/// The most values (numbers, strings, elements, fields) one result may hold to be converted
/// to JSON: a few bytes can claim a sequence of billions of empty values.
pub const MAX_VALUES: usize = 1 << 24;

/// Refuses a type that contains itself with nothing in between that nests the JSON (only
/// newtypes and options, as in `struct A(Option<Box<A>>)`): converting a value of it would
/// never end. (The module's manifest is untrusted: a hand-made one can say anything.)
fn check_registry(format: &Format, registry: &Registry) -> Result<(), String> {
    /// The type names `format` reaches without nesting the JSON.
    fn direct<'a>(format: &'a Format, out: &mut Vec<&'a str>) {
        match format {
            Format::TypeName(n) => out.push(n),
            Format::Option(inner) => direct(inner, out),
            _ => {}
        }
    }
    let edges = |name: &str| {
        let mut out = Vec::new();
        if let Some(ContainerFormat::NewTypeStruct(f)) = registry.get(name) {
            direct(f, &mut out);
        }
        out
    };
    let mut roots = Vec::new();
    direct(format, &mut roots);
    for name in registry.keys() {
        roots.push(name);
    }
    // Depth-first search for a cycle; `done` types lead to none.
    let mut done: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for root in roots {
        let mut path: Vec<(&str, Vec<&str>)> = vec![(root, edges(root))];
        while let Some((name, next)) = path.last_mut() {
            let name = *name;
            match next.pop() {
                Some(n) if done.contains(n) => {}
                Some(n) if path.iter().any(|(p, _)| *p == n) => {
                    return Err(format!(
                        "the type `{n}` contains itself with nothing in between (only newtypes \
                         and options), so its values cannot be converted to or from JSON"
                    ));
                }
                Some(n) => {
                    let e = edges(n);
                    path.push((n, e));
                }
                None => {
                    done.insert(name);
                    path.pop();
                }
            }
        }
    }
    Ok(())
}

/// Walks a postcard value of `format` without building it, refusing one nested deeper than
/// [`MAX_DEPTH`] or holding more than [`MAX_VALUES`] values, so that decoding it (which
/// recurses, and allocates per value) is safe.
fn walk(bytes: &[u8], format: &Format, registry: &Registry) -> Result<(), String> {
    let mut w = Walk {
        registry,
        input: bytes,
        values: 0,
    };
    w.value(format, 0)
}

struct Walk<'a> {
    registry: &'a Registry,
    input: &'a [u8],
    values: usize,
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Result<(), String> {
        if self.input.len() < n {
            return Err("the value ends early".into());
        }
        self.input = &self.input[n..];
        Ok(())
    }

    fn varint(&mut self) -> Result<u128, String> {
        let mut v: u128 = 0;
        for i in 0..19 {
            let Some((&b, rest)) = self.input.split_first() else {
                return Err("the value ends early".into());
            };
            self.input = rest;
            v |= u128::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a number is too long".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.varint()?).map_err(|_| "a length is too large".into())
    }

    fn value(&mut self, format: &Format, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "the value is nested deeper than {MAX_DEPTH} levels"
            ));
        }
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(format!("the value holds more than {MAX_VALUES} values"));
        }
        let d = depth + 1;
        match format {
            Format::Variable(_) => Err("the type's format is incomplete".into()),
            Format::TypeName(name) => match self.registry.get(name) {
                Some(c) => self.container(c, d),
                None => Err(format!("the manifest does not describe the type `{name}`")),
            },
            Format::Unit => Ok(()),
            Format::Bool | Format::I8 | Format::U8 => self.take(1),
            Format::I16
            | Format::I32
            | Format::I64
            | Format::I128
            | Format::U16
            | Format::U32
            | Format::U64
            | Format::U128 => self.varint().map(|_| ()),
            Format::F32 => self.take(4),
            Format::F64 => self.take(8),
            Format::Char | Format::Str | Format::Bytes => {
                let n = self.len()?;
                self.take(n)
            }
            Format::Option(inner) => {
                let tag = self.input.first().copied();
                self.take(1)?;
                match tag {
                    Some(0) => Ok(()),
                    Some(1) => self.value(inner, d),
                    _ => Err("an option's tag is neither 0 nor 1".into()),
                }
            }
            Format::Seq(inner) => {
                for _ in 0..self.len()? {
                    self.value(inner, d)?;
                }
                Ok(())
            }
            Format::Map { key, value } => {
                for _ in 0..self.len()? {
                    self.value(key, d)?;
                    self.value(value, d)?;
                }
                Ok(())
            }
            Format::Tuple(formats) => formats.iter().try_for_each(|f| self.value(f, d)),
            Format::TupleArray { content, size } => {
                for _ in 0..*size {
                    self.value(content, d)?;
                }
                Ok(())
            }
        }
    }

    fn container(&mut self, container: &ContainerFormat, depth: usize) -> Result<(), String> {
        match container {
            ContainerFormat::UnitStruct => Ok(()),
            ContainerFormat::NewTypeStruct(f) => self.value(f, depth),
            ContainerFormat::TupleStruct(fs) => fs.iter().try_for_each(|f| self.value(f, depth)),
            ContainerFormat::Struct(fields) => {
                fields.iter().try_for_each(|f| self.value(&f.value, depth))
            }
            ContainerFormat::Enum(variants) => {
                let index = u32::try_from(self.varint()?)
                    .map_err(|_| "an enum's variant index is too large".to_owned())?;
                let Some(v) = variants.get(&index) else {
                    return Err(format!("an enum has no variant {index}"));
                };
                match &v.value {
                    VariantFormat::Variable(_) => Err("the type's format is incomplete".into()),
                    VariantFormat::Unit => Ok(()),
                    VariantFormat::NewType(f) => self.value(f, depth),
                    VariantFormat::Tuple(fs) => fs.iter().try_for_each(|f| self.value(f, depth)),
                    VariantFormat::Struct(fields) => {
                        fields.iter().try_for_each(|f| self.value(&f.value, depth))
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::samples::{self, signature_of as sig};

    fn result(sig: &FunctionSig, meta: Vec<u8>) -> Result<Value, JsonError> {
        result_to_json(
            sig,
            &EncodedObject {
                meta,
                buffers: Vec::new(),
            },
        )
    }

    /// A hand-made manifest whose type contains itself through nothing but a newtype and an
    /// option made the conversion recurse until the stack overflowed.
    #[test]
    fn a_type_containing_itself_directly_is_refused() {
        let mut registry = Registry::new();
        let a = Format::TypeName("A".into());
        registry.insert(
            "A".into(),
            ContainerFormat::NewTypeStruct(Box::new(Format::Option(Box::new(a.clone())))),
        );
        let s = sig(a, &registry);
        let e = args_from_json(&s, &["5".into()]).unwrap_err().to_string();
        assert!(e.contains("`A` contains itself"), "{e}");
        let e = result(&s, vec![1, 1, 0]).unwrap_err().to_string();
        assert!(e.contains("`A` contains itself"), "{e}");
    }

    /// A guest's result nested 100,000 levels deep made the conversion overflow the stack.
    #[test]
    fn a_result_nested_too_deep_is_refused() {
        let s = sig(Format::TypeName("List".into()), &samples::registry());
        let mut deep = vec![1u8; 100_000];
        deep.push(0);
        let e = result(&s, deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 128"), "{e}");
        let mut shallow = vec![1u8; 3];
        shallow.push(0);
        let v = result(&s, shallow).unwrap();
        assert_eq!(v, serde_json::json!({"Cons": {"Cons": {"Cons": "Nil"}}}));
    }

    /// Five bytes claiming 2^40 empty values made the conversion try to build them all.
    #[test]
    fn a_result_claiming_too_many_values_is_refused() {
        let s = sig(Format::Seq(Box::new(Format::Unit)), &Registry::new());
        let mut meta = Vec::new();
        let mut n: u64 = 1 << 40;
        while n >= 0x80 {
            meta.push((n as u8) | 0x80);
            n >>= 7;
        }
        meta.push(n as u8);
        let e = result(&s, meta).unwrap_err().to_string();
        assert!(e.contains("more than 16777216 values"), "{e}");
        assert_eq!(
            result(&s, vec![2]).unwrap(),
            serde_json::json!([null, null])
        );
    }
}
