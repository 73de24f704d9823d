//! Out-of-band byte buffers: [`Blob`] and the typed [`Buffer<T>`].
//!
//! A value is stored as a small postcard *metadata* stream plus a list of buffers (PEP 574's
//! pickle protocol 5 split). A `Blob` or `Buffer` inside a value serializes as a placeholder
//! (its index in the object's buffer list); its bytes go to their own page-aligned region of the
//! object, written once, straight from wherever they are. When a value is read back, each
//! placeholder becomes a `Blob` whose bytes are wherever the side running the code put them:
//! on the host a view into the mapped object store (no copy), in a guest either a copy-on-write
//! mapping of the store's pages or a copy, depending on its size.
//!
//! Encoding and decoding are done by whoever runs the code, through [`BlobHooks`]. Without
//! hooks (a plain `postcard::to_allocvec` of a value holding a blob) serializing a blob fails
//! with an error rather than losing its bytes.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicPtr, Ordering};

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};

/// The serde name of a [`Blob`]; manifests and the CLI recognise blobs by it.
pub const BLOB_SERDE_NAME: &str = "ferry::Blob";

/// Where a blob's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// Ordinary heap memory owned by the blob.
    Owned,
    /// A read-only view into a node's object store (host side; no copy was made).
    StoreView,
    /// A copy-on-write mapping of the store's pages into a guest's memory (no copy was made;
    /// writes land in private pages).
    GuestMapping,
}

/// The memory behind a blob.
///
/// # Safety
/// `bytes` must return the same memory, with the same contents, every time it is called
/// until the storage is dropped or `bytes_mut` is called: encoders keep the address of the
/// bytes while a value is borrowed and copy from it afterwards.
#[doc(hidden)]
pub unsafe trait BlobStorage: Send + Sync + 'static {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// The bytes for writing, or `None` if this storage is read-only.
    fn bytes_mut(&mut self) -> Option<&mut [u8]>;
    /// A second handle to the same bytes, if the storage can share them without a copy.
    fn share(&self) -> Option<Box<dyn BlobStorage>> {
        None
    }
    /// Where the bytes live.
    fn kind(&self) -> StorageKind;
}

// SAFETY: a `Vec`'s bytes stay in place and unchanged while it is not mutated, and only
// `bytes_mut` (which ends the contract) mutates it.
unsafe impl BlobStorage for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        Some(self)
    }
    fn kind(&self) -> StorageKind {
        StorageKind::Owned
    }
}

/// A `Vec<T>` seen as bytes (keeps `T`'s alignment, which a `Vec<u8>` would not).
struct ElementVec<T: Element>(Vec<T>);

// SAFETY: as for `Vec<u8>`: the elements stay in place until mutated through `bytes_mut`.
unsafe impl<T: Element> BlobStorage for ElementVec<T> {
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        Some(bytemuck::cast_slice_mut(&mut self.0))
    }
    fn kind(&self) -> StorageKind {
        StorageKind::Owned
    }
}

/// An immutable-by-default run of bytes kept out of the postcard stream.
///
/// Build one from a `Vec<u8>` or a slice; read it as a `&[u8]` (it derefs to one). A blob read
/// from the object store on the host is a view into the store: no copy, and the object stays
/// pinned in memory (never freed, reused or spilled) while the blob lives. A blob a guest reads
/// may be a copy-on-write mapping of the store's pages: [`Blob::as_mut_slice`] writes to private
/// pages and the stored object never changes. Writing to a read-only view first copies it.
///
/// `clone` shares a store view (no copy) and copies anything else.
pub struct Blob {
    storage: Box<dyn BlobStorage>,
}

impl Blob {
    /// A blob owning `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            storage: Box::new(bytes),
        }
    }

    /// A blob over memory managed elsewhere (a store view or a guest mapping).
    #[doc(hidden)]
    pub fn from_storage(storage: Box<dyn BlobStorage>) -> Self {
        Self { storage }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The bytes for writing. A read-only store view is copied first (the store never changes);
    /// owned bytes and guest mappings are written in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.make_mut(|bytes| Box::new(bytes.to_vec()))
    }

    fn make_mut(&mut self, copy: impl FnOnce(&[u8]) -> Box<dyn BlobStorage>) -> &mut [u8] {
        if self.storage.bytes_mut().is_none() {
            self.storage = copy(self.storage.bytes());
        }
        // A storage that refused once may refuse again only if `copy` built a read-only one,
        // which the copies above never do; fall back to an empty slice rather than panic.
        self.storage.bytes_mut().unwrap_or_default()
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the bytes live (shows whether reading this blob copied anything).
    pub fn storage_kind(&self) -> StorageKind {
        self.storage.kind()
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }
}

impl Default for Blob {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Clone for Blob {
    fn clone(&self) -> Self {
        match self.storage.share() {
            Some(storage) => Self { storage },
            None => Self::new(self.to_vec()),
        }
    }
}

impl core::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl From<&[u8]> for Blob {
    fn from(v: &[u8]) -> Self {
        Self::new(v.to_vec())
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl Eq for Blob {}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes, {:?})", self.len(), self.storage_kind())
    }
}

/// Serializes a buffer's bytes as a placeholder through the installed hooks.
fn serialize_buffer<S: Serializer>(
    name: &'static str,
    bytes: &[u8],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let Some(h) = blob_hooks() else {
        return Err(ser::Error::custom(
            "a Blob or Buffer can only be encoded by ferry (put, call arguments, results)",
        ));
    };
    let index = (h.serialized)(bytes).map_err(ser::Error::custom)?;
    serializer.serialize_newtype_struct(name, &index)
}

/// Reads a placeholder and asks the hooks for the buffer it stands for.
fn deserialize_buffer<'de, D: Deserializer<'de>>(
    name: &'static str,
    deserializer: D,
) -> Result<Blob, D::Error> {
    struct Index;
    impl<'de> Visitor<'de> for Index {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an out-of-band buffer placeholder")
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
            u32::deserialize(d)
        }
    }
    let index = deserializer.deserialize_newtype_struct(name, Index)?;
    let Some(h) = blob_hooks() else {
        return Err(de::Error::custom(
            "a Blob or Buffer can only be decoded by ferry (get, arguments)",
        ));
    };
    (h.take)(index).map_err(de::Error::custom)
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_buffer(BLOB_SERDE_NAME, self.as_slice(), serializer)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_buffer(BLOB_SERDE_NAME, deserializer)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A plain number type a [`Buffer`] can hold. Stored in little-endian byte order, which is the
/// order of every platform ferry runs on (Wasm is little-endian by definition).
pub trait Element: bytemuck::Pod + Send + Sync + sealed::Sealed {
    /// The serde name of `Buffer<Self>`.
    const BUFFER_NAME: &'static str;
}

macro_rules! elements {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const BUFFER_NAME: &'static str = concat!("ferry::Buffer<", stringify!($t), ">");
        }
    )*};
}
elements!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

/// A typed out-of-band array of plain numbers (`Buffer<f32>`, `Buffer<u64>`, ...).
///
/// Derefs to `&[T]`. Like [`Blob`] its bytes are kept out of the postcard stream, so reading a
/// large array on the host or in a guest does not copy it.
pub struct Buffer<T: Element> {
    /// Invariant: the bytes are aligned for `T` and a whole number of `T`s.
    blob: Blob,
    _type: PhantomData<T>,
}

impl<T: Element> Buffer<T> {
    /// A buffer owning `values`.
    pub fn new(values: Vec<T>) -> Self {
        Self {
            blob: Blob::from_storage(Box::new(ElementVec(values))),
            _type: PhantomData,
        }
    }

    /// A buffer holding a copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        Self::new(values.to_vec())
    }

    /// Reinterprets a blob's bytes as `T`s. Fails if the length is not a whole number of `T`s;
    /// copies (once) if the bytes are not aligned for `T`.
    pub fn from_blob(blob: Blob) -> Result<Self, BufferLengthError> {
        let size = core::mem::size_of::<T>();
        if !blob.len().is_multiple_of(size) {
            return Err(BufferLengthError {
                len: blob.len(),
                element: T::BUFFER_NAME,
            });
        }
        let blob = if (blob.as_slice().as_ptr() as usize).is_multiple_of(core::mem::align_of::<T>())
        {
            blob
        } else {
            let values: Vec<T> = blob
                .as_slice()
                .chunks_exact(size)
                .map(bytemuck::pod_read_unaligned)
                .collect();
            Blob::from_storage(Box::new(ElementVec(values)))
        };
        Ok(Self {
            blob,
            _type: PhantomData,
        })
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        // The invariant (aligned, whole number of `T`s) makes this cast infallible.
        bytemuck::try_cast_slice(self.blob.as_slice()).unwrap_or_default()
    }

    /// The values for writing; a read-only store view is copied first.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let bytes = self.blob.make_mut(|bytes| {
            let values: Vec<T> = bytes
                .chunks_exact(core::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect();
            Box::new(ElementVec(values))
        });
        bytemuck::try_cast_slice_mut(bytes).unwrap_or_default()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, as a blob.
    pub fn as_blob(&self) -> &Blob {
        &self.blob
    }

    /// Where the bytes live.
    pub fn storage_kind(&self) -> StorageKind {
        self.blob.storage_kind()
    }
}

impl<T: Element> Default for Buffer<T> {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl<T: Element> Clone for Buffer<T> {
    fn clone(&self) -> Self {
        match self.blob.storage.share() {
            Some(storage) => Self {
                blob: Blob { storage },
                _type: PhantomData,
            },
            None => Self::from_slice(self.as_slice()),
        }
    }
}

impl<T: Element> core::ops::Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Element> From<Vec<T>> for Buffer<T> {
    fn from(v: Vec<T>) -> Self {
        Self::new(v)
    }
}

impl<T: Element> From<&[T]> for Buffer<T> {
    fn from(v: &[T]) -> Self {
        Self::from_slice(v)
    }
}

impl<T: Element + PartialEq> PartialEq for Buffer<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Element> fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({} elements, {:?})",
            T::BUFFER_NAME,
            self.len(),
            self.storage_kind()
        )
    }
}

impl<T: Element> Serialize for Buffer<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_buffer(T::BUFFER_NAME, self.blob.as_slice(), serializer)
    }
}

impl<'de, T: Element> Deserialize<'de> for Buffer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let blob = deserialize_buffer(T::BUFFER_NAME, deserializer)?;
        Self::from_blob(blob).map_err(de::Error::custom)
    }
}

/// A blob whose length is not a whole number of elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferLengthError {
    /// The blob's length in bytes.
    pub len: usize,
    /// The buffer type.
    pub element: &'static str,
}

impl fmt::Display for BufferLengthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {}-byte buffer is not a whole number of elements of {}",
            self.len, self.element
        )
    }
}

/// How the side running the code encodes and decodes out-of-band buffers.
#[derive(Debug)]
pub struct BlobHooks {
    /// A buffer is being serialized into the value being encoded: returns its placeholder
    /// index, or why the buffer cannot be encoded here.
    pub serialized: fn(&[u8]) -> Result<u32, &'static str>,
    /// A placeholder is being decoded: returns the buffer it stands for.
    pub take: fn(u32) -> Result<Blob, String>,
}

static BLOB_HOOKS: AtomicPtr<BlobHooks> = AtomicPtr::new(core::ptr::null_mut());

/// Installs the process-wide blob hooks. Only the first call wins; returns whether this one did.
pub fn install_blob_hooks(hooks: &'static BlobHooks) -> bool {
    let ptr = hooks as *const BlobHooks as *mut BlobHooks;
    BLOB_HOOKS
        .compare_exchange(
            core::ptr::null_mut(),
            ptr,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

/// The blob hooks in force, if any were installed.
pub fn blob_hooks() -> Option<&'static BlobHooks> {
    let ptr = BLOB_HOOKS.load(Ordering::Acquire);
    // SAFETY: BLOB_HOOKS is either null or was set from a `&'static BlobHooks` in
    // `install_blob_hooks`, and it is never changed afterwards.
    unsafe { ptr.as_ref() }
}

/// Whether a serde name is that of a blob or buffer placeholder.
pub fn is_buffer_name(name: &str) -> bool {
    name == BLOB_SERDE_NAME || name.starts_with("ferry::Buffer<")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_refuse_to_encode_without_hooks() {
        let b = Blob::new(alloc::vec![1, 2, 3]);
        let err = postcard::to_allocvec(&b).unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeSerCustom));
    }

    #[test]
    fn buffer_views_and_copies() {
        let mut b = Buffer::new(alloc::vec![1.5f32, 2.5]);
        assert_eq!(b.as_slice(), &[1.5, 2.5]);
        b.as_mut_slice()[0] = 3.0;
        assert_eq!(&*b, &[3.0, 2.5]);
        let c = b.clone();
        assert_eq!(c, b);
        assert_eq!(c.storage_kind(), StorageKind::Owned);
        let odd = Buffer::<u32>::from_blob(Blob::new(alloc::vec![0; 7])).unwrap_err();
        assert_eq!(odd.len, 7);
        // Misaligned bytes are copied into aligned storage.
        let bytes: Vec<u8> = (0u8..9).collect();
        let blob = Blob::from(&bytes[1..9]);
        let buf = Buffer::<u64>::from_blob(blob).unwrap();
        assert_eq!(buf.len(), 1);
        assert_eq!(buf[0], u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
    }
}
