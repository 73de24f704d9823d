//! Node ids and object id generation.

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_abi::ObjectId;

pub use ferry_core::NodeId;

/// A fresh random node id (non-zero).
pub fn random_node_id() -> NodeId {
    loop {
        let v = random_u64();
        if v != 0 {
            return NodeId(v);
        }
    }
}

/// A random u64 from the standard library's randomly keyed hasher, mixed with the time and a
/// counter (enough for ids and file names; not for cryptography).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// Hands out object ids owned by one node.
#[derive(Debug)]
pub struct IdGenerator {
    owner: NodeId,
    next: AtomicU64,
}

impl IdGenerator {
    /// Ids owned by `owner`, starting at sequence 1.
    pub fn new(owner: NodeId) -> Self {
        Self {
            owner,
            next: AtomicU64::new(1),
        }
    }

    /// A fresh id.
    pub fn next(&self) -> ObjectId {
        ObjectId::new(self.owner.0, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// The module id of `wasm`.
pub fn module_id(wasm: &[u8]) -> ferry_abi::ModuleId {
    ferry_abi::ModuleId(*blake3::hash(wasm).as_bytes())
}
