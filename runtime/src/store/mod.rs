//! The node's object store: one memory-mapped file of fixed capacity.
//!
//! The file lives in a directory of the operator's choice (`/dev/shm` by default, so the
//! bytes are in memory and can be mapped by other processes), is allocated in full with
//! `posix_fallocate` at start-up (a full tmpfs fails here, with a clear error, instead of with
//! SIGBUS later), is never truncated while mapped, and is unlinked right after it is mapped so
//! that a crashed node leaves nothing behind.
//!
//! Space is handed out by [`alloc::Allocator`]. The safe API encodes the invariants:
//! - a [`Block`] is space being written: unique, not `Clone`, so its bytes have one writer;
//! - [`Block::seal`] turns it into a shared, immutable [`Sealed`] object; every reader holds
//!   an `Arc<Sealed>` and the space returns to the allocator only when the last one drops, so
//!   a view can never see its bytes reused.

pub mod alloc;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapRaw;

use crate::error::StoreError;
use alloc::Allocator;

/// Figures describing the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Bytes the store can hold.
    pub capacity: u64,
    /// Bytes held by live objects and objects being written (rounded to allocation sizes).
    pub used: u64,
    /// The largest object that would fit right now.
    pub largest_free: u64,
}

struct StoreInner {
    map: MmapRaw,
    alloc: Mutex<Allocator>,
    path: PathBuf,
    _file: File,
}

impl StoreInner {
    fn alloc(&self) -> MutexGuard<'_, Allocator> {
        // A panic while holding the allocator lock cannot leave it half-updated in a way that
        // matters more than losing the node; recover the guard rather than poisoning every call.
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The object store of one node. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ObjectStore {
    /// Creates a store of `capacity` bytes backed by a new file in `dir`.
    pub fn create(dir: &Path, capacity: u64) -> Result<Self, StoreError> {
        if capacity < alloc::PAGE {
            return Err(StoreError::Config(format!(
                "store capacity {capacity} is below the minimum of {} bytes",
                alloc::PAGE
            )));
        }
        let capacity = capacity / alloc::PAGE * alloc::PAGE;
        let path = dir.join(format!(
            "ferry-store-{}-{:016x}",
            std::process::id(),
            crate::ids::random_u64()
        ));
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| StoreError::Io { what, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("create the store file"))?;
        let len = libc::off_t::try_from(capacity)
            .map_err(|_| StoreError::Config(format!("store capacity {capacity} is too large")))?;
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        if rc != 0 {
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::NoSpace {
                dir: dir.to_path_buf(),
                capacity,
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        let map = MmapRaw::map_raw(&file);
        // The mapping and the open descriptor keep the memory; the name is not needed.
        let _ = std::fs::remove_file(&path);
        let map = map.map_err(io("map the store file"))?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                map,
                alloc: Mutex::new(Allocator::new(capacity)),
                path,
                _file: file,
            }),
        })
    }

    /// The store's figures.
    pub fn stats(&self) -> StoreStats {
        let a = self.inner.alloc();
        StoreStats {
            capacity: a.capacity(),
            used: a.used(),
            largest_free: a.largest_free(),
        }
    }

    /// Reserves room for an object of `len` bytes.
    pub fn allocate(&self, len: usize) -> Result<Block, StoreError> {
        let len64 = len as u64;
        let mut a = self.inner.alloc();
        let capacity = a.capacity();
        if Allocator::footprint(len64).is_none_or(|(size, _)| size > capacity) {
            return Err(StoreError::TooLarge {
                len: len64,
                capacity,
            });
        }
        match a.allocate(len64) {
            Some((offset, size)) => Ok(Block {
                space: Space {
                    store: self.inner.clone(),
                    offset,
                    size,
                },
                len,
            }),
            None => Err(StoreError::Full {
                len: len64,
                used: a.used(),
                capacity,
            }),
        }
    }

    /// Stores `bytes` as a sealed object (one copy, into the mapped file).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Arc<Sealed>, StoreError> {
        let mut block = self.allocate(bytes.len())?;
        block.as_mut_slice().copy_from_slice(bytes);
        Ok(block.seal())
    }
}

/// A range of the store file. Returns itself to the allocator when dropped.
struct Space {
    store: Arc<StoreInner>,
    offset: u64,
    size: u64,
}

impl Drop for Space {
    fn drop(&mut self) {
        self.store.alloc().free(self.offset, self.size);
    }
}

/// Space in the store being written. Dropping it unsealed frees the space.
pub struct Block {
    space: Space,
    len: usize,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({}+{})", self.space.offset, self.len)
    }
}

impl Block {
    /// The block's bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `offset + len <= offset + size <= capacity`, the mapping's length, by the
        // allocator's contract. The allocator hands `[offset, offset + size)` to this `Space`
        // alone until the `Space` drops; `Block` is not `Clone` and this borrow is `&mut self`,
        // so no other reference to these bytes exists.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.space
                    .store
                    .map
                    .as_mut_ptr()
                    .add(self.space.offset as usize),
                self.len,
            )
        }
    }

    /// Makes the object immutable and shareable.
    pub fn seal(self) -> Arc<Sealed> {
        Arc::new(Sealed {
            space: self.space,
            len: self.len,
        })
    }
}

/// An immutable object in the store. Its space is freed when the last `Arc<Sealed>` drops.
pub struct Sealed {
    space: Space,
    len: usize,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({}+{})", self.space.offset, self.len)
    }
}

impl Sealed {
    /// The object's bytes, read in place (no copy).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the range is within the mapping (allocator contract). It was written through
        // the unique `Block` before `seal` and is never written again: `Sealed` exposes no
        // mutable access, and the range cannot be handed out again until this `Sealed` (which
        // owns the `Space`) drops, which `&self` outlives the returned slice to prevent.
        unsafe {
            std::slice::from_raw_parts(
                self.space
                    .store
                    .map
                    .as_ptr()
                    .add(self.space.offset as usize),
                self.len,
            )
        }
    }

    /// The object's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cap: u64) -> ObjectStore {
        let dir = tempfile::tempdir().unwrap();
        ObjectStore::create(dir.path(), cap).unwrap()
    }

    #[test]
    fn bytes_round_trip_and_space_returns_when_last_view_drops() {
        let s = store(1 << 20);
        let obj = s.put_bytes(b"hello").unwrap();
        let view = obj.clone();
        assert_eq!(view.bytes(), b"hello");
        drop(obj);
        assert!(s.stats().used > 0, "a live view pins the object");
        drop(view);
        assert_eq!(s.stats().used, 0);
    }

    #[test]
    fn too_large_and_full_are_distinct_errors() {
        let s = store(64 * 1024);
        assert!(matches!(
            s.allocate(1 << 20),
            Err(StoreError::TooLarge { .. })
        ));
        let _a = s.put_bytes(&vec![1u8; 40 * 1024]).unwrap();
        assert!(matches!(
            s.allocate(40 * 1024),
            Err(StoreError::Full { .. })
        ));
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = ObjectStore::create(Path::new("/nonexistent/ferry"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ferry"), "{err}");
    }
}
