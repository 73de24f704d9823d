//! Spilling: objects pushed out of a full store into files, and read back on demand.
//!
//! Each node spills into a directory of its own (created private under the configured
//! directory, removed when the node stops). The configured directory must be this user's (or
//! root's), and writable by no one else unless it is sticky (as `/tmp` is): another user
//! could otherwise swap the node's directory for one of theirs. A spilled object is one file
//! holding the object's bytes exactly as they were in the store, under a name of its own
//! (a second spill of the same object never shares a file with the first); its layout and a
//! keyed hash of its bytes stay in memory, and reading it back checks the hash, so a file
//! changed on disk is an error, never a different object. The file is deleted when the
//! object is freed or read back into memory ([`Spilled`]'s `Drop`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ferry_abi::ObjectId;

use super::{Layout, Sealed};
use crate::error::StoreError;

/// A node's spill directory and its figures.
pub struct SpillDir {
    dir: PathBuf,
    /// The key of the hashes that authenticate spill files (random, in memory only).
    key: [u8; 32],
    /// Numbers spill files, so that no two spills share a name.
    next_file: AtomicU64,
    /// Most bytes that may be spilled at once (`None`: as much as the disk holds).
    capacity: Option<u64>,
    used: AtomicU64,
    objects: AtomicU64,
    spilled_total: AtomicU64,
    restored_total: AtomicU64,
}

impl std::fmt::Debug for SpillDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillDir")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Figures about spilling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpillStats {
    /// Bytes of objects now on disk.
    pub bytes: u64,
    /// Objects now on disk.
    pub objects: u64,
    /// The most bytes that may be on disk (`None`: no limit but the disk's).
    pub capacity: Option<u64>,
    /// Objects spilled since start.
    pub spilled_total: u64,
    /// Objects read back since start.
    pub restored_total: u64,
}

impl SpillDir {
    /// Creates a private directory for one node under `parent`.
    pub fn create(parent: &Path, capacity: Option<u64>) -> Result<Arc<Self>, StoreError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { what, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io("create the spill directory", parent))?;
        check_parent(parent)?;
        let dir = parent.join(format!(
            "node-{}-{:016x}",
            std::process::id(),
            crate::ids::random_u64()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("create the spill directory", &dir))?;
        let mut key = [0u8; 32];
        crate::ids::secure_random(&mut key);
        Ok(Arc::new(Self {
            dir,
            key,
            next_file: AtomicU64::new(0),
            capacity,
            used: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            spilled_total: AtomicU64::new(0),
            restored_total: AtomicU64::new(0),
        }))
    }

    /// The figures.
    pub fn stats(&self) -> SpillStats {
        SpillStats {
            bytes: self.used.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
            capacity: self.capacity,
            spilled_total: self.spilled_total.load(Ordering::Relaxed),
            restored_total: self.restored_total.load(Ordering::Relaxed),
        }
    }

    /// Writes `object` (with id `id`) to a file. Fails if the spill capacity or the disk would
    /// be exceeded; nothing is left behind then.
    pub fn write(self: &Arc<Self>, id: ObjectId, object: &Sealed) -> std::io::Result<Spilled> {
        let len = object.len() as u64;
        // Reserve the bytes first, so concurrent spills cannot overshoot the capacity.
        let before = self.used.fetch_add(len, Ordering::Relaxed);
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let spilled = Spilled {
            path: self.dir.join(format!("{id}-{n}")),
            layout: object.layout().clone(),
            len,
            hash: blake3::keyed_hash(&self.key, object.bytes()),
            counted: AtomicBool::new(true),
            dir: self.clone(),
        };
        if let Some(cap) = self.capacity
            && before + len > cap
        {
            // Dropping `spilled` gives the reservation back (its file does not exist).
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("the spill capacity of {cap} bytes is used up"),
            ));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spilled.path)?;
        // Counted once the file exists: `Drop` uncounts it when it deletes the file.
        self.objects.fetch_add(1, Ordering::Relaxed);
        f.write_all(object.bytes())?;
        self.spilled_total.fetch_add(1, Ordering::Relaxed);
        Ok(spilled)
    }
}

/// Refuses a spill directory's parent that another user could tamper with: it must belong to
/// this user or root, and be writable by no one else unless it is sticky (then others cannot
/// rename or delete what is ours in it, and our directory's name is random and made
/// atomically).
fn check_parent(parent: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(parent).map_err(|source| StoreError::Io {
        what: "inspect the spill directory",
        path: parent.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    let why = if meta.uid() != me && meta.uid() != 0 {
        Some(format!("it belongs to another user (uid {})", meta.uid()))
    } else if mode & 0o022 != 0 && !sticky {
        Some(format!(
            "other users can write to it (mode {:03o}) and it is not sticky",
            mode & 0o777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(StoreError::Io {
            what: "use the spill directory",
            path: parent.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{why}; choose a directory only this user can change"),
            ),
        }),
        None => Ok(()),
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An object on disk. Dropping it deletes the file.
#[derive(Debug)]
pub struct Spilled {
    path: PathBuf,
    layout: Layout,
    len: u64,
    /// Whether `len` counts towards the directory's bytes (see [`Spilled::uncount`]).
    counted: AtomicBool,
    /// The keyed hash of the bytes written.
    hash: blake3::Hash,
    dir: Arc<SpillDir>,
}

impl Spilled {
    /// The object's layout (for allocating room to read it back).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Stops counting this file against the spill capacity, because it is about to be read
    /// back and deleted: making room in memory for it may need to spill others, which must
    /// not fail for want of the disk space this file gives back. Returns whether it was
    /// counted (so the caller can [`recount`](Self::recount) if reading back fails).
    pub fn uncount(&self) -> bool {
        let was = self.counted.swap(false, Ordering::AcqRel);
        if was {
            self.dir.used.fetch_sub(self.len, Ordering::Relaxed);
        }
        was
    }

    /// Undoes [`uncount`](Self::uncount).
    pub fn recount(&self) {
        if !self.counted.swap(true, Ordering::AcqRel) {
            self.dir.used.fetch_add(self.len, Ordering::Relaxed);
        }
    }

    /// Reads the object back into `dst` (exactly its length).
    pub fn read_into(&self, dst: &mut [u8]) -> std::io::Result<()> {
        let mut f = File::open(&self.path)?;
        let on_disk = f.metadata()?.len();
        if on_disk != self.len || dst.len() as u64 != self.len {
            return Err(std::io::Error::other(format!(
                "spill file {} has {on_disk} bytes, expected {}",
                self.path.display(),
                self.len
            )));
        }
        f.read_exact(dst)?;
        if blake3::keyed_hash(&self.dir.key, dst) != self.hash {
            return Err(std::io::Error::other(format!(
                "spill file {} was changed on disk since it was written",
                self.path.display()
            )));
        }
        self.dir.restored_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Spilled {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                self.dir.objects.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                target: "ferry::store",
                "could not delete spill file {}: {e}",
                self.path.display()
            ),
        }
        if self.counted.load(Ordering::Acquire) {
            self.dir.used.fetch_sub(self.len, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::store::ObjectStore;

    fn object(store: &ObjectStore, fill: u8) -> Arc<Sealed> {
        let layout = Layout::plan(4096, &[]).unwrap();
        let mut block = store.allocate_object(layout).unwrap();
        block.as_mut_slice().fill(fill);
        block.seal()
    }

    #[test]
    fn a_parent_other_users_can_write_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SpillDir::create(&open, None).unwrap_err().to_string();
        assert!(e.contains("other users can write"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        SpillDir::create(&open, None).unwrap();
    }

    #[test]
    fn a_spill_file_changed_on_disk_is_refused_on_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path(), 1 << 20).unwrap();
        let spill = SpillDir::create(&dir.path().join("spill"), None).unwrap();
        let sealed = object(&store, 7);
        let id = ObjectId::new(1, 1);
        let spilled = spill.write(id, &sealed).unwrap();
        let mut bytes = std::fs::read(&spilled.path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&spilled.path, &bytes).unwrap();
        let mut back = vec![0u8; sealed.len()];
        let e = spilled.read_into(&mut back).unwrap_err().to_string();
        assert!(e.contains("changed on disk"), "{e}");
    }

    #[test]
    fn a_second_spill_of_one_object_keeps_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path(), 1 << 20).unwrap();
        let spill = SpillDir::create(&dir.path().join("spill"), None).unwrap();
        let sealed = object(&store, 3);
        let id = ObjectId::new(1, 1);
        // A reader still holds the first spill while the object is spilled again.
        let first = spill.write(id, &sealed).unwrap();
        let second = spill.write(id, &sealed).unwrap();
        drop(first);
        let mut back = vec![0u8; sealed.len()];
        second.read_into(&mut back).unwrap();
        assert_eq!(back, sealed.bytes());
    }
}
