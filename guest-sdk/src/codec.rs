//! Encoding values with the refs and out-of-band buffers they contain, and decoding values
//! whose buffers the host hands over (mapped or copied).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use ferry_abi::abi::CallArg;
use ferry_abi::{ArgSink, Blob, BlobHooks, BlobStorage, ObjectId, RefHooks, StorageKind};
use serde::Serialize;

use crate::host;

/// One encoding in progress.
#[derive(Default)]
struct Frame {
    refs: Vec<ObjectId>,
    /// Address and length of each buffer serialized, in placeholder order.
    buffers: Vec<(u32, u32)>,
}

thread_local! {
    /// One frame per encoding in progress; refs and buffers serialized while it is on top land
    /// in it.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
    /// Where buffers of the value being decoded come from: the last `get`
    /// ([`abi::SOURCE_LAST_GET`]) or argument `k`. `None`: not decoding an object.
    static SOURCE: Cell<Option<i32>> = const { Cell::new(None) };
    /// Set while the manifest's types are traced: placeholders decode to empty blobs.
    static TRACING: Cell<bool> = const { Cell::new(false) };
    /// How many handles (`ObjectRef`s) the guest holds to each object. The host counts one
    /// reference per object per task; when the last handle drops, the guest gives it back.
    static HANDLES: RefCell<BTreeMap<ObjectId, u32>> = const { RefCell::new(BTreeMap::new()) };
    /// While a call is submitted: ids whose last handle went with the arguments (encoding
    /// consumes them), given back only once the host has taken the call's own counts.
    static DEFERRED: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
}

/// Runs `f` (which encodes arguments and submits a call), giving back the ids whose last
/// handle dropped meanwhile only afterwards, unless a new handle appeared.
pub(crate) fn with_deferred_releases<R>(f: impl FnOnce() -> R) -> R {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    let result = f();
    let ids = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    for id in ids.unwrap_or_default() {
        if !HANDLES.with(|h| h.borrow().contains_key(&id)) {
            release_to_host(id);
        }
    }
    result
}

fn release_to_host(id: ObjectId) {
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(ids) => {
            ids.push(id);
            true
        }
        None => false,
    });
    if !deferred && !TRACING.get() {
        host::release(id);
    }
}

/// A handle to `id` came into being: a clone, a decoded ref, or a fresh id from the host.
fn handle_new(id: ObjectId) {
    HANDLES.with(|h| *h.borrow_mut().entry(id).or_insert(0) += 1);
}

/// A handle to `id` was dropped; the last one tells the host (so the object can be freed, as
/// in Ray when the last ref goes out of scope).
fn handle_dropped(id: ObjectId) {
    let last = HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        match h.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                h.remove(&id);
                true
            }
            // Never counted (made before the hooks were installed): nothing to give back.
            None => false,
        }
    });
    if last {
        release_to_host(id);
    }
}

/// A ref for an id the host just handed over with a count for this task (`put`, `call`).
pub(crate) fn adopt<T: ?Sized>(id: ObjectId) -> ferry_abi::ObjectRef<T> {
    handle_new(id);
    ferry_abi::ObjectRef::adopt(id)
}

fn on_serialized(id: ObjectId) {
    FRAMES.with(|c| {
        if let Some(top) = c.borrow_mut().last_mut() {
            top.refs.push(id);
        }
    });
}

/// Inside a guest the host counts one reference per object per task; the guest counts its
/// handles and gives the host's count back when the last one drops. Serialization is observed
/// to report the refs an encoded value contains.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
static GUEST_HOOKS: RefHooks = RefHooks {
    retain: handle_new,
    release: handle_dropped,
    serialized: on_serialized,
};

fn blob_serialized(bytes: &[u8]) -> Result<u32, &'static str> {
    FRAMES.with(|c| {
        let mut frames = c.borrow_mut();
        let top = frames
            .last_mut()
            .ok_or("a Blob or Buffer can only be encoded by ferry (put, call, results)")?;
        let len = u32::try_from(bytes.len()).map_err(|_| "a buffer is larger than 4 GiB")?;
        let index = u32::try_from(top.buffers.len()).map_err(|_| "too many buffers")?;
        // A guest is wasm32: addresses are 32 bits.
        top.buffers.push((bytes.as_ptr() as usize as u32, len));
        Ok(index)
    })
}

fn blob_take(index: u32) -> Result<Blob, String> {
    if TRACING.with(Cell::get) {
        return Ok(Blob::default());
    }
    let Some(source) = SOURCE.with(Cell::get) else {
        return Err("a Blob or Buffer can only be decoded from an object (get, arguments)".into());
    };
    let (info, mapped) = host::buffer(source, index).map_err(|s| status_message(s, "buffer"))?;
    if mapped {
        return Ok(Blob::from_storage(Box::new(Mapping {
            ptr: info.ptr,
            len: info.len,
            handle: info.handle,
        })));
    }
    let mut copy = Aligned::zeroed(info.len as usize);
    host::read_buffer(source, index, copy.bytes_mut_raw())
        .map_err(|s| status_message(s, "read_buffer"))?;
    Ok(Blob::from_storage(Box::new(copy)))
}

fn status_message(status: i32, what: &str) -> String {
    format!(
        "the host refused `{what}` (status {status}): {}",
        String::from_utf8_lossy(&host::take())
    )
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
static GUEST_BLOB_HOOKS: BlobHooks = BlobHooks {
    serialized: blob_serialized,
    take: blob_take,
};

/// 16-byte aligned chunk, so copied buffers suit any element type.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

// SAFETY: a `repr(C)` wrapper of a byte array: no padding, every bit pattern valid.
unsafe impl bytemuck::Zeroable for Chunk {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl bytemuck::Pod for Chunk {}

/// A buffer the host copied into guest memory.
struct Aligned {
    chunks: Vec<Chunk>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        Self {
            chunks: vec![Chunk([0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn bytes_mut_raw(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.chunks)[..self.len]
    }
}

// SAFETY: the chunks stay in place and unchanged until mutated through `bytes_mut`.
unsafe impl BlobStorage for Aligned {
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.chunks)[..self.len]
    }
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        Some(self.bytes_mut_raw())
    }
    fn kind(&self) -> StorageKind {
        StorageKind::Owned
    }
}

/// A buffer the host mapped copy-on-write into guest memory. Dropping it asks the host to
/// unmap it (the object is unpinned and the pages become fresh memory).
struct Mapping {
    ptr: u32,
    len: u32,
    handle: u32,
}

// SAFETY: a guest is single-threaded; `Send`/`Sync` are only needed because `BlobStorage`
// requires them for the host's sake.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

// SAFETY: the host mapped `len` bytes at `ptr` for this handle alone and leaves them in place
// until `release_buffer(handle)`, which only `Drop` calls.
unsafe impl BlobStorage for Mapping {
    fn bytes(&self) -> &[u8] {
        // SAFETY: see the impl's comment: `[ptr, ptr + len)` is mapped, readable guest memory
        // owned by this value until it drops.
        unsafe { std::slice::from_raw_parts(self.ptr as usize as *const u8, self.len as usize) }
    }
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as for `bytes`; the mapping is private and writable, and `&mut self` makes
        // this the only reference.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.ptr as usize as *mut u8, self.len as usize)
        })
    }
    fn kind(&self) -> StorageKind {
        StorageKind::GuestMapping
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        host::release_buffer(self.handle);
    }
}

/// Installs the guest's hooks. Only inside a Wasm guest: in a native build the process may be
/// a ferry host, whose own hooks count references.
pub(crate) fn install_hooks() {
    #[cfg(target_arch = "wasm32")]
    {
        ferry_abi::install_ref_hooks(&GUEST_HOOKS);
        ferry_abi::install_blob_hooks(&GUEST_BLOB_HOOKS);
    }
}

/// A value encoded by a guest: its postcard metadata, the refs inside, and where its buffers'
/// bytes are (in guest memory, inside the value, which must stay borrowed until the host has
/// copied them).
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) refs: Vec<ObjectId>,
    pub(crate) buffers: Vec<(u32, u32)>,
}

/// Encodes `value`. The buffer addresses in the result point into `value`: hand them to the
/// host while `value` is still borrowed.
pub(crate) fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, postcard::Error> {
    install_hooks();
    FRAMES.with(|c| c.borrow_mut().push(Frame::default()));
    let bytes = postcard::to_allocvec(value);
    let frame = FRAMES.with(|c| c.borrow_mut().pop().unwrap_or_default());
    Ok(Encoded {
        bytes: bytes?,
        refs: frame.refs,
        buffers: frame.buffers,
    })
}

/// [`try_encode`] for values that serialize (anything but a type whose `Serialize` fails on
/// purpose, which is a bug in the guest).
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Encoded {
    try_encode(value).unwrap_or_else(|e| panic!("a value did not serialize: {e}"))
}

/// Decodes `bytes` whose buffers come from `source` (see [`SOURCE`]).
pub(crate) fn decode_from<T: serde::de::DeserializeOwned>(
    source: i32,
    bytes: &[u8],
) -> Result<T, postcard::Error> {
    install_hooks();
    let previous = SOURCE.with(|s| s.replace(Some(source)));
    let r = postcard::from_bytes(bytes);
    SOURCE.with(|s| s.set(previous));
    r
}

/// Takes one value off the front of `bytes`, its buffers coming from `source`.
pub(crate) fn take_from<T: serde::de::DeserializeOwned>(
    source: i32,
    bytes: &[u8],
) -> Result<(T, &[u8]), postcard::Error> {
    install_hooks();
    let previous = SOURCE.with(|s| s.replace(Some(source)));
    let r = postcard::take_from_bytes(bytes);
    SOURCE.with(|s| s.set(previous));
    r
}

/// Runs `f` with placeholders decoding to empty blobs (manifest tracing).
pub(crate) fn tracing<R>(f: impl FnOnce() -> R) -> R {
    TRACING.with(|t| t.set(true));
    let r = f();
    TRACING.with(|t| t.set(false));
    r
}

/// Builds the argument list of a nested call.
#[derive(Default)]
pub(crate) struct CallSink {
    pub(crate) args: Vec<CallArg>,
    /// A value with buffers that could not be stored (status), reported by `submit`.
    pub(crate) error: Option<i32>,
}

impl CallSink {
    fn push_value<T: Serialize + ?Sized>(&mut self, value: &T, untyped: bool) {
        let e = encode(value);
        if !e.buffers.is_empty() {
            // A value with buffers travels as an object of its own: the host copies each
            // buffer once into the store, and the function sees the value.
            match host::put(&e.bytes, &e.refs, &e.buffers) {
                Ok(id) => self.args.push(CallArg::Object(id)),
                Err(status) => {
                    self.error.get_or_insert(status);
                    self.args.push(CallArg::Object(ObjectId([0; 16])));
                }
            }
            return;
        }
        match e.refs.as_slice() {
            [id] if untyped && e.bytes == id.0 => self.args.push(CallArg::Object(*id)),
            _ => self.args.push(CallArg::Value {
                bytes: e.bytes,
                refs: e.refs,
            }),
        }
    }
}

impl ArgSink for CallSink {
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.push_value(value, false);
    }

    fn object(&mut self, id: ObjectId) {
        self.args.push(CallArg::Object(id));
    }

    fn untyped<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.push_value(value, true);
    }
}
