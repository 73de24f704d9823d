//! The node's object store: one memory-mapped file of fixed capacity.
//!
//! The file lives in a directory of the operator's choice (`/dev/shm` by default, so the
//! bytes are in memory and can be mapped by other processes), is allocated in full with
//! `posix_fallocate` at start-up (a full tmpfs fails here, with a clear error, instead of with
//! SIGBUS later), is never truncated while mapped, and is unlinked right after it is mapped so
//! that a crashed node leaves nothing behind.
//!
//! A background thread touches the store's pages once at start-up (`MADV_POPULATE_WRITE`),
//! lowest offsets first, and the allocator prefers low offsets, so a `put` lands in pages that
//! are already faulted in: on this machine class writing fresh pages is many times slower.
//!
//! Space is handed out by [`alloc::Allocator`]. The safe API encodes the invariants:
//! - a [`Block`] is space being written: unique, not `Clone`, so its bytes have one writer;
//! - [`Block::seal`] turns it into a shared, immutable [`Sealed`] object; every reader holds
//!   an `Arc<Sealed>` and the space returns to the allocator only when the last one drops, so
//!   a view can never see its bytes reused.

pub mod alloc;
mod layout;
pub mod spill;

pub use layout::Layout;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapRaw;

use crate::error::StoreError;
use alloc::Allocator;

/// Figures describing the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Bytes the store can hold.
    pub capacity: u64,
    /// Bytes held by live objects and objects being written (rounded to allocation sizes).
    pub used: u64,
    /// The largest object that would fit right now.
    pub largest_free: u64,
    /// Objects in memory.
    pub objects_in_memory: u64,
    /// Objects in memory that something besides the table holds (a reader, a host view, a
    /// guest mapping, a running task): they cannot be spilled or freed now.
    pub pinned_objects: u64,
    /// Bytes of those objects.
    pub pinned_bytes: u64,
    /// Spilling figures (`None` when spilling is off).
    pub spill: Option<spill::SpillStats>,
}

struct StoreInner {
    map: MmapRaw,
    alloc: Mutex<Allocator>,
    capacity: u64,
    path: PathBuf,
    file: File,
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
                capacity,
                path,
                file,
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
            ..StoreStats::default()
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
                layout: Layout::plain(len),
            }),
            None => Err(StoreError::Full {
                len: len64,
                used: a.used(),
                capacity,
            }),
        }
    }

    /// Reserves room for an object laid out as `layout`, with its padding zeroed (so that no
    /// byte of an earlier object can show through a buffer mapped into a guest).
    pub fn allocate_object(&self, layout: Layout) -> Result<Block, StoreError> {
        let total = usize::try_from(layout.total_len()).map_err(|_| StoreError::TooLarge {
            len: layout.total_len(),
            capacity: self.inner.capacity,
        })?;
        let mut block = self.allocate(total)?;
        let bytes = block.as_mut_slice();
        for pad in layout.padding() {
            bytes[pad.start as usize..pad.end as usize].fill(0);
        }
        block.layout = layout;
        Ok(block)
    }

    /// Stores `bytes` as a sealed object with no buffers (one copy, into the mapped file).
    #[cfg(test)]
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Arc<Sealed>, StoreError> {
        let mut block = self.allocate(bytes.len())?;
        block.as_mut_slice().copy_from_slice(bytes);
        Ok(block.seal())
    }

    /// The store file's current size, read from the open descriptor (it never changes while
    /// the store exists; a regression test checks that).
    pub fn file_len(&self) -> std::io::Result<u64> {
        Ok(self.inner.file.metadata()?.len())
    }

    /// Touches every page of the store once, lowest offsets first, in a background thread,
    /// so that later writes do not pay page faults. Stops early if the store is dropped.
    pub fn prefault_in_background(&self) {
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("ferry-prefault".into())
            .spawn(move || {
                const CHUNK: usize = 16 << 20;
                let mut offset = 0usize;
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let len = inner.map.len();
                    if offset >= len {
                        return;
                    }
                    let n = CHUNK.min(len - offset);
                    // SAFETY: `[offset, offset + n)` lies inside the mapping, which `inner`
                    // keeps alive for the call. MADV_POPULATE_WRITE only faults pages in (as
                    // writable, without changing their contents), so concurrent readers and
                    // writers of objects in that range see no difference.
                    let rc = unsafe {
                        libc::madvise(
                            inner.map.as_mut_ptr().add(offset).cast(),
                            n,
                            libc::MADV_POPULATE_WRITE,
                        )
                    };
                    if rc != 0 {
                        tracing::debug!(
                            target: "ferry::store",
                            "not prefaulting the store: {}",
                            std::io::Error::last_os_error()
                        );
                        return;
                    }
                    offset += n;
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(target: "ferry::store", "not prefaulting the store: {e}");
        }
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
    layout: Layout,
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

    /// The metadata region and each buffer's region, for writing.
    pub fn parts_mut(&mut self) -> (&mut [u8], Vec<&mut [u8]>) {
        let layout = self.layout.clone();
        let all = self.as_mut_slice();
        let (meta, mut rest) = all.split_at_mut(layout.meta_len as usize);
        let mut consumed = layout.meta_len as usize;
        let mut buffers = Vec::with_capacity(layout.buffers.len());
        for b in &layout.buffers {
            // Buffers follow each other in order (the layout was planned that way).
            let skip = b.offset as usize - consumed;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (buf, tail) = tail.split_at_mut(b.len as usize);
            buffers.push(buf);
            rest = tail;
            consumed = b.offset as usize + b.len as usize;
        }
        (meta, buffers)
    }

    /// Makes the object immutable and shareable.
    pub fn seal(self) -> Arc<Sealed> {
        Arc::new(Sealed {
            space: self.space,
            len: self.len,
            layout: self.layout,
        })
    }
}

/// An immutable object in the store. Its space is freed when the last `Arc<Sealed>` drops.
pub struct Sealed {
    space: Space,
    len: usize,
    layout: Layout,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed({}+{}, {} buffers)",
            self.space.offset,
            self.len,
            self.layout.buffers.len()
        )
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

    /// The object's length in bytes (metadata, buffers and padding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// The object's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The metadata: the postcard stream, with placeholders for the buffers.
    pub fn meta(&self) -> &[u8] {
        &self.bytes()[..self.layout.meta_len as usize]
    }

    /// Buffer `index`'s bytes, read in place.
    pub fn buffer(&self, index: usize) -> Option<&[u8]> {
        let b = self.layout.buffers.get(index)?;
        self.bytes()
            .get(b.offset as usize..b.offset as usize + b.len as usize)
    }

    /// Maps buffer `index`'s pages copy-on-write (`MAP_PRIVATE | MAP_FIXED`) at `dst`, which
    /// must be page-aligned; returns the number of bytes mapped (the buffer's length rounded up
    /// to whole pages; the bytes past its end are the object's zeroed padding). Writes through
    /// the mapping land in private pages: the object never changes.
    ///
    /// # Safety
    /// `[dst, dst + returned length)` must be memory the caller owns and that nothing else
    /// refers to (a guest's linear memory window), page-aligned, of at least the buffer's
    /// padded length, and the caller must map anonymous memory back over it (see
    /// [`map_anonymous`]) before that memory is used for anything else. The caller must keep
    /// this `Sealed` alive while the mapping exists, so that the pages are not reused.
    pub unsafe fn map_buffer(&self, index: usize, dst: *mut u8) -> std::io::Result<usize> {
        let b = self
            .layout
            .buffers
            .get(index)
            .ok_or_else(|| std::io::Error::other("no such buffer"))?;
        if b.len < alloc::PAGE || !(dst as usize).is_multiple_of(alloc::PAGE as usize) {
            return Err(std::io::Error::other(
                "buffer or destination not page-aligned",
            ));
        }
        let file_offset = self.space.offset + b.offset;
        debug_assert_eq!(file_offset % alloc::PAGE, 0);
        let len = b.padded_len() as usize;
        // SAFETY: the caller owns `[dst, dst + len)` (contract above); the file range
        // `[file_offset, file_offset + len)` lies inside this object's space, which is inside
        // the file (allocator contract); MAP_FIXED replaces the caller's pages atomically.
        let got = unsafe {
            libc::mmap(
                dst.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.space.store.file.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(len)
    }
}

/// Maps fresh anonymous, zero-filled, read-write memory over `[dst, dst + len)`, undoing
/// [`Sealed::map_buffer`].
///
/// # Safety
/// `[dst, dst + len)` must be page-aligned memory the caller owns and nothing else refers to.
pub unsafe fn map_anonymous(dst: *mut u8, len: usize) -> std::io::Result<()> {
    // SAFETY: per the contract the range is the caller's to replace.
    let got = unsafe {
        libc::mmap(
            dst.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
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
