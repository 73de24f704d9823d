//! The fuzz targets' bodies: each takes arbitrary bytes, feeds them to a decoder that meets
//! untrusted input, and checks what must hold (no panic, no allocation beyond the input's
//! bounds, a round trip where there is one). `fuzz/` runs them under libFuzzer (nightly);
//! `runtime/tests/fuzz.rs` replays the corpus in `fuzz/corpus/` and random inputs on every
//! `cargo test` (stable).

use ferry_abi::manifest::FunctionSig;

use crate::client::EncodedObject;
use crate::net::proto::{self, Request, Response, WireObject};

/// The wire protocol's decoder: frames and bodies of requests and responses.
pub fn protocol(data: &[u8]) {
    let _ = proto::decode_frame::<Request>(data);
    let _ = proto::decode_frame::<Response>(data);
    if let Ok(req) = proto::decode_body::<Request>(data) {
        // Whatever decodes re-encodes and decodes to the same message.
        let again: Request = proto::decode_frame(&proto::encode_frame(&req)).expect("round trip");
        assert_eq!(again, req);
    }
    let _ = proto::decode_body::<Response>(data);
}

/// The check of an object header from a peer, before anything is allocated: a layout it
/// accepts never exceeds the store's capacity (the first 8 bytes; the rest is the header).
pub fn layout(data: &[u8]) {
    let Some((cap, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let capacity = u64::from_le_bytes(*cap);
    let Ok(header) = postcard::from_bytes::<WireObject>(rest) else {
        return;
    };
    if let Ok(layout) = proto::check_object(&header, capacity) {
        assert!(
            layout.total_len() <= capacity,
            "{header:?} passed as {layout:?}"
        );
        assert_eq!(layout.total_len(), header.total_len);
    }
}

/// A module's manifest (one function's signature, as a module's signature export returns it)
/// and the type formats in it: whatever decodes converts JSON both ways without panicking.
pub fn manifest(data: &[u8]) {
    let Ok(sig) = postcard::from_bytes::<FunctionSig>(data) else {
        return;
    };
    // Formats are small in practice; a hand-made one nested very deep is a known limit
    // (docs/security.md), so the fuzzer is kept to what a signature export can sensibly say.
    if data.len() > 4096 {
        return;
    }
    let _ = sig.display_signature();
    let args: Vec<String> = sig.params.iter().map(|_| "0".to_owned()).collect();
    let _ = crate::json::args_from_json(&sig, &args);
    let object = EncodedObject {
        meta: data.to_vec(),
        buffers: Vec::new(),
    };
    let _ = crate::json::result_to_json(&sig, &object);
    let _ = crate::json::cause_to_json(&sig, data);
}

/// Showing a guest's result as JSON (`ferry run`), for a few types chosen by the first byte:
/// a recursive enum, a sequence, a struct with options and maps, a buffer.
pub fn json_result(data: &[u8]) {
    let Some((&which, meta)) = data.split_first() else {
        return;
    };
    let sig = samples::signature(which);
    let object = EncodedObject {
        meta: meta.to_vec(),
        buffers: vec![meta.iter().take(64).copied().collect()],
    };
    if let Ok(value) = crate::json::result_to_json(&sig, &object) {
        // What shows as JSON is bounded by the input: no value from nothing.
        assert!(
            value.to_string().len() <= 64 + 16 * (meta.len() + 1) * 8,
            "{value}"
        );
    }
    let _ = crate::json::cause_to_json(&sig, meta);
}

/// Sample types and signatures, for the fuzz targets and the JSON tests.
pub(crate) mod samples {
    use std::collections::BTreeMap;

    use ferry_abi::manifest::{FunctionSig, Param, TypeDesc};
    use serde_reflection::{ContainerFormat, Format, Named, Registry, VariantFormat};

    fn named<T>(name: &str, value: T) -> Named<T> {
        Named {
            name: name.into(),
            value,
        }
    }

    /// The sample types: `List` (a recursive enum), `Record` (a struct with options, a map
    /// and itself), and `ferry::Blob`.
    pub(crate) fn registry() -> Registry {
        let mut registry = Registry::new();
        let list = Format::TypeName("List".into());
        let mut variants = BTreeMap::new();
        variants.insert(0, named("Nil", VariantFormat::Unit));
        variants.insert(
            1,
            named("Cons", VariantFormat::NewType(Box::new(list.clone()))),
        );
        variants.insert(
            2,
            named("Pair", VariantFormat::Tuple(vec![Format::I64, list])),
        );
        registry.insert("List".into(), ContainerFormat::Enum(variants));
        registry.insert(
            "Record".into(),
            ContainerFormat::Struct(vec![
                named("name", Format::Str),
                named("score", Format::Option(Box::new(Format::F64))),
                named(
                    "tags",
                    Format::Map {
                        key: Box::new(Format::Str),
                        value: Box::new(Format::Seq(Box::new(Format::U32))),
                    },
                ),
                named(
                    "next",
                    Format::Option(Box::new(Format::TypeName("Record".into()))),
                ),
            ]),
        );
        registry.insert(
            "ferry::Blob".into(),
            ContainerFormat::NewTypeStruct(Box::new(Format::U64)),
        );
        registry
    }

    /// `fn f(x: T) -> T`, with `T` of format `ty` over `registry`.
    pub(crate) fn signature_of(ty: Format, registry: &Registry) -> FunctionSig {
        FunctionSig {
            name: "f".into(),
            params: vec![Param {
                name: "x".into(),
                ty: TypeDesc::new("T", Ok(ty.clone())),
            }],
            result: TypeDesc::new("T", Ok(ty)),
            error: None,
            registry: FunctionSig::encode_registry(registry),
        }
    }

    /// A function returning one of the sample types.
    pub fn signature(which: u8) -> FunctionSig {
        let ty = match which % 4 {
            0 => Format::TypeName("List".into()),
            1 => Format::Seq(Box::new(Format::Tuple(vec![Format::Unit, Format::Bool]))),
            2 => Format::TypeName("Record".into()),
            _ => Format::TypeName("ferry::Blob".into()),
        };
        signature_of(ty, &registry())
    }
}
