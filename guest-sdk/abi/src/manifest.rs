//! The manifest a module carries: its functions with their parameter and result types.
//!
//! Types are described twice: as written in the source (`Vec<ObjectRef<u64>>`), for people,
//! and as `serde-reflection` formats, for machines (the CLI converts JSON to and from a
//! function's types with them). Tracing a type can fail (types whose `Deserialize` accepts
//! only some values, self-describing types); the format is then absent and the reason kept.
//!
//! `serde-reflection`'s types are not `Send`, so formats travel as their postcard encoding
//! and are decoded where they are used.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
pub use serde_reflection::{ContainerFormat, Format, Named, Registry, VariantFormat};

/// One remote function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSig {
    /// The exported name.
    pub name: String,
    /// The parameters, in order.
    pub params: Vec<Param>,
    /// The result type (for `-> Result<T, E>`, this is `T`).
    pub result: TypeDesc,
    /// For functions returning `Result<T, E>`, the error type `E`.
    pub error: Option<TypeDesc>,
    /// The named types (structs, enums) the formats refer to, postcard-encoded.
    pub registry: Vec<u8>,
}

/// One parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// The parameter's name in the source.
    pub name: String,
    /// Its type.
    pub ty: TypeDesc,
}

/// A type, as written and as traced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeDesc {
    /// The type as written in the source.
    pub rust: String,
    /// The traced serde format (postcard-encoded), or why tracing failed.
    pub format: Result<Vec<u8>, String>,
}

impl TypeDesc {
    /// Describes a traced type.
    pub fn new(rust: &str, format: Result<Format, String>) -> Self {
        let format = format.and_then(|f| postcard::to_allocvec(&f).map_err(|e| e.to_string()));
        Self {
            rust: rust.into(),
            format,
        }
    }

    /// The traced format, or why there is none.
    pub fn format(&self) -> Result<Format, String> {
        match &self.format {
            Ok(bytes) => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        }
    }
}

impl FunctionSig {
    /// Encodes a registry for [`FunctionSig::registry`].
    pub fn encode_registry(registry: &Registry) -> Vec<u8> {
        postcard::to_allocvec(registry).unwrap_or_default()
    }

    /// The named types the formats refer to.
    pub fn registry(&self) -> Registry {
        postcard::from_bytes(&self.registry).unwrap_or_default()
    }

    /// The signature in source form: `(a: i32, b: i32) -> i32`.
    pub fn display_signature(&self) -> String {
        use core::fmt::Write;
        let mut s = String::from("(");
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{}: {}", p.name, p.ty.rust);
        }
        let _ = write!(s, ") -> ");
        match &self.error {
            Some(e) => {
                let _ = write!(s, "Result<{}, {}>", self.result.rust, e.rust);
            }
            None => s.push_str(&self.result.rust),
        }
        s
    }
}
