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

/// Fills `buf` from the kernel's random number generator (`getrandom(2)`, else
/// `/dev/urandom`); if neither answers, from [`random_u64`] (randomly keyed by the standard
/// library, which asks the OS too).
pub fn secure_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the duration
        // of the call, and getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    if filled == buf.len() {
        return;
    }
    let urandom = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf[filled..]));
    if urandom.is_err() {
        for chunk in buf[filled..].chunks_mut(8) {
            let r = random_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Hands out object ids owned by one node. An id's sequence number is a counter put through
/// a keyed permutation of 64-bit numbers (a four-round Feistel network over SipHash with a
/// random secret key): distinct for every id the node makes, and unguessable for anyone
/// else, so knowing an id is a capability (issue 12): a peer cannot name an object it was
/// never given.
#[derive(Debug)]
pub struct IdGenerator {
    owner: NodeId,
    next: AtomicU64,
    key: [u64; 4],
}

impl IdGenerator {
    /// Ids owned by `owner`, under a fresh random key.
    pub fn new(owner: NodeId) -> Self {
        let mut bytes = [0u8; 32];
        secure_random(&mut bytes);
        let mut key = [0u64; 4];
        for (k, b) in key.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(b);
            *k = u64::from_le_bytes(word);
        }
        Self {
            owner,
            next: AtomicU64::new(1),
            key,
        }
    }

    /// A fresh id (never sequence 0).
    pub fn next(&self) -> ObjectId {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let seq = permute(&self.key, n);
            if seq != 0 {
                return ObjectId::new(self.owner.0, seq);
            }
        }
    }
}

/// A keyed permutation of the 64-bit numbers: four Feistel rounds whose round function is
/// SipHash-2-4 keyed by `key` (a pseudorandom function, so the whole is a pseudorandom
/// permutation: Luby-Rackoff).
fn permute(key: &[u64; 4], n: u64) -> u64 {
    use std::hash::Hasher;
    let (mut left, mut right) = ((n >> 32) as u32, n as u32);
    for (round, k) in key.iter().enumerate() {
        // `SipHasher` (SipHash-2-4) is deprecated only in favour of `DefaultHasher`, which
        // cannot be keyed; its output is fixed by the algorithm.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(*k, round as u64);
        h.write_u32(right);
        let f = h.finish() as u32;
        (left, right) = (right, left ^ f);
    }
    (u64::from(left) << 32) | u64::from(right)
}

/// The module id of `wasm`.
pub fn module_id(wasm: &[u8]) -> ferry_abi::ModuleId {
    ferry_abi::ModuleId(*blake3::hash(wasm).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids were 1, 2, 3, … per owner, so anyone who saw one could name the others.
    #[test]
    fn object_ids_are_distinct_and_unguessable() {
        let owner = NodeId::new(1, 1);
        let a = IdGenerator::new(owner);
        let seqs: Vec<u64> = (0..10_000).map(|_| a.next().seq()).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seqs.len(), "distinct");
        assert!(!seqs.contains(&0));
        let steps: std::collections::BTreeSet<u64> =
            seqs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(steps.len() > 9_000, "no pattern between consecutive ids");
        // Another node (or the same node started again) draws its own key.
        let b = IdGenerator::new(owner);
        let other: Vec<u64> = (0..100).map(|_| b.next().seq()).collect();
        assert_ne!(&seqs[..100], &other[..]);
        assert!(
            seqs[..100]
                .iter()
                .all(|s| s.count_ones() > 8 && s.count_ones() < 56)
        );
    }

    #[test]
    fn the_permutation_is_one_to_one() {
        let key = [1, 2, 3, 4];
        let mut seen: Vec<u64> = (0..1u64 << 16).map(|n| permute(&key, n)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1 << 16);
    }
}
