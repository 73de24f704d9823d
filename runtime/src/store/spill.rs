//! Spilling: objects pushed out of a full store into files, and read back on demand.
//!
//! Each node spills into a directory of its own (created private under the configured
//! directory, removed when the node stops). A spilled object is one file holding the object's
//! bytes exactly as they were in the store; its layout stays in memory. The file is deleted
//! when the object is freed or read back into memory ([`Spilled`]'s `Drop`).

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
#[derive(Debug)]
pub struct SpillDir {
    dir: PathBuf,
    /// Most bytes that may be spilled at once (`None`: as much as the disk holds).
    capacity: Option<u64>,
    used: AtomicU64,
    objects: AtomicU64,
    spilled_total: AtomicU64,
    restored_total: AtomicU64,
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
        let dir = parent.join(format!(
            "node-{}-{:016x}",
            std::process::id(),
            crate::ids::random_u64()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("create the spill directory", &dir))?;
        Ok(Arc::new(Self {
            dir,
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
        let spilled = Spilled {
            path: self.dir.join(id.to_string()),
            layout: object.layout().clone(),
            len,
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
