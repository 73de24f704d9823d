//! Encoding values on the host, and the host's ref hooks.
//!
//! Values are postcard. While a value is encoded, every `ObjectRef` inside it reports itself
//! through the `serialized` hook, so the host learns which refs an object contains without
//! knowing its type; every `Blob`/`Buffer` reports its bytes through the blob hook, which
//! sizes them on a first pass and copies them into their own region of the object on the
//! second (see [`crate::store::Layout`]). Cloning, decoding and dropping refs adjust the reference count on the
//! node that owns the object (its id names the owner; [`register_owner`] maps it to a table).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use ferry_abi::abi::CallArg;
use ferry_abi::{ArgSink, Blob, BlobHooks, BlobStorage, ObjectId, RefHooks, StorageKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{GetError, PutError, StoreError};
use crate::ids::IdGenerator;
use crate::ids::NodeId;
use crate::objects::ObjectTable;
use crate::store::{Block, Layout, Sealed};

type Owners = Vec<(u64, Weak<ObjectTable>)>;

static OWNERS: RwLock<Owners> = RwLock::new(Vec::new());

/// How the encoding on top of a thread's stack treats out-of-band buffers.
enum BufferMode {
    /// Count them (to learn whether a value has any).
    Count(usize),
    /// Record their lengths (the sizing pass of a store encoding).
    Sizing(Vec<usize>),
    /// Copy each into its region of a store block (the writing pass).
    Writing {
        /// Each buffer region of the block being written: start and length.
        dest: Vec<(*mut u8, usize)>,
        next: usize,
    },
}

/// One encoding in progress on this thread.
struct Frame {
    refs: Vec<ObjectId>,
    buffers: BufferMode,
    /// Why a buffer was refused (postcard drops custom error messages).
    refused: Option<&'static str>,
}

thread_local! {
    /// Encodings in progress; refs and buffers serialized while a frame is on top land in it.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

fn owners() -> std::sync::RwLockReadGuard<'static, Owners> {
    OWNERS.read().unwrap_or_else(|e| e.into_inner())
}

/// Which table of this process counts the handles of each object owned outside it (and
/// borrows it from its owner). Chosen once per id, so that a handle's retain and release
/// always meet the same table even when the process runs several cluster nodes (drivers).
/// A choice stands while that table has an entry for the id (while it does, this process's
/// handles are counted there); once the entry is freed no handle counted there is left, so
/// the next handle may choose again, and stale choices are pruned as the map grows.
static BORROWERS: Mutex<Borrowers> = Mutex::new(Borrowers {
    chosen: BTreeMap::new(),
    prune_at: 1024,
});

struct Borrowers {
    chosen: BTreeMap<ObjectId, Weak<ObjectTable>>,
    /// When the map reaches this size, stale choices are dropped (then twice what is left,
    /// so pruning costs O(1) per choice).
    prune_at: usize,
}

impl Borrowers {
    fn current(&self, id: ObjectId) -> Option<Arc<ObjectTable>> {
        self.chosen
            .get(&id)
            .and_then(Weak::upgrade)
            .filter(|t| t.contains(id))
    }

    fn choose(&mut self, id: ObjectId, table: &Arc<ObjectTable>) {
        self.chosen.insert(id, Arc::downgrade(table));
        if self.chosen.len() >= self.prune_at {
            self.chosen
                .retain(|id, t| t.upgrade().is_some_and(|t| t.contains(*id)));
            self.prune_at = (self.chosen.len() * 2).max(1024);
        }
    }
}

/// The table that counts `id`: its owner's, if the owner is in this process; else the table
/// that borrows it for this process's handles (the one decoding the value that holds it, if
/// any, else the first node of this process that is part of a cluster).
fn table_for(id: ObjectId) -> Option<Arc<ObjectTable>> {
    let owner = id.owner();
    {
        let owners = owners();
        if let Some(t) = owners.iter().find(|(o, _)| *o == owner) {
            return t.1.upgrade();
        }
    }
    let mut borrowers = BORROWERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = borrowers.current(id) {
        return Some(t);
    }
    let decoding = DECODING.with(|d| d.borrow().as_ref().map(|s| s.table.clone()));
    let table = decoding.filter(|t| t.is_foreign(id)).or_else(|| {
        owners()
            .iter()
            .filter_map(|(_, t)| t.upgrade())
            .find(|t| t.is_foreign(id))
    })?;
    borrowers.choose(id, &table);
    Some(table)
}

fn hook_retain(id: ObjectId) {
    if let Some(t) = table_for(id) {
        t.retain(id);
    }
    // Counts stay balanced either way; a ref the object never declared is reported.
    DECODING.with(|d| {
        if let Some(scope) = d.borrow_mut().as_mut() {
            let (table, object) = (&scope.table, scope.object);
            let allowed = scope.allowed.get_or_insert_with(|| {
                let mut ids = table.contained(object);
                ids.sort_unstable();
                ids
            });
            if allowed.binary_search(&id).is_err() {
                scope.undeclared.get_or_insert(id);
            }
        }
    });
}

/// An object being decoded for a driver, and the refs it declared when it was stored.
struct DecodeScope {
    object: ObjectId,
    sealed: Arc<Sealed>,
    table: Arc<ObjectTable>,
    /// Fetched (and sorted) on the first ref met, so ref-free values cost nothing.
    allowed: Option<Vec<ObjectId>>,
    undeclared: Option<ObjectId>,
}

thread_local! {
    static DECODING: RefCell<Option<DecodeScope>> = const { RefCell::new(None) };
}

/// Decodes `object` (stored as `sealed`) for a driver. Its buffers become views into the
/// store (no copy). A ref inside it that the object did not declare when it was stored (only a
/// guest breaking the ABI can make one) makes the decode fail, so that no one can be handed an
/// object id they were never given.
///
/// `contained` is the list of refs the object declared, when the caller has it (an object
/// read from another node); otherwise the table's record is used.
pub fn decode_object<T: DeserializeOwned>(
    table: &Arc<ObjectTable>,
    object: ObjectId,
    sealed: &Arc<Sealed>,
    contained: Option<Vec<ObjectId>>,
) -> Result<T, GetError> {
    let bytes = sealed.meta();
    let allowed = contained.map(|mut c| {
        c.sort_unstable();
        c
    });
    let previous = DECODING.with(|d| {
        d.borrow_mut().replace(DecodeScope {
            object,
            sealed: sealed.clone(),
            table: table.clone(),
            allowed,
            undeclared: None,
        })
    });
    let decoded = postcard::from_bytes::<T>(bytes);
    let scope = DECODING.with(|d| std::mem::replace(&mut *d.borrow_mut(), previous));
    let value = decoded.map_err(|source| GetError::Decode {
        id: object,
        type_name: std::any::type_name::<T>(),
        source,
    })?;
    match scope.and_then(|s| s.undeclared) {
        None => Ok(value),
        Some(undeclared) => {
            drop(value);
            Err(GetError::UndeclaredRef {
                id: object,
                undeclared,
            })
        }
    }
}

fn hook_release(id: ObjectId) {
    if let Some(t) = table_for(id) {
        t.release(id);
    }
}

fn hook_serialized(id: ObjectId) {
    FRAMES.with(|f| {
        if let Some(top) = f.borrow_mut().last_mut() {
            top.refs.push(id);
        }
    });
}

fn blob_serialized(bytes: &[u8]) -> Result<u32, &'static str> {
    FRAMES.with(|f| {
        let mut frames = f.borrow_mut();
        let Some(top) = frames.last_mut() else {
            return Err("a Blob or Buffer can only be encoded by ferry (put, call arguments)");
        };
        let result = match &mut top.buffers {
            BufferMode::Count(n) => {
                *n += 1;
                Ok(*n - 1)
            }
            BufferMode::Sizing(lens) => {
                lens.push(bytes.len());
                Ok(lens.len() - 1)
            }
            BufferMode::Writing { dest, next } => match dest.get(*next) {
                None => Err("a value serialized more buffers the second time it was encoded"),
                Some(&(_, len)) if len != bytes.len() => {
                    Err("a buffer changed length between the two passes of an encoding")
                }
                Some(&(ptr, len)) => {
                    // SAFETY: `ptr` is the start of a region of `len` bytes inside a store
                    // block that `encode_into_store` holds exclusively for the whole writing
                    // pass (the frame is popped before the block is sealed or dropped); the
                    // regions are disjoint from each other and from the metadata slice postcard
                    // writes to, and `bytes` (a value being encoded) cannot overlap a block
                    // nobody else can see.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, len) };
                    *next += 1;
                    Ok(*next - 1)
                }
            },
        };
        let index = result.and_then(|i| u32::try_from(i).map_err(|_| "too many buffers"));
        if let Err(why) = index {
            top.refused.get_or_insert(why);
        }
        index
    })
}

fn blob_take(index: u32) -> Result<Blob, String> {
    DECODING.with(|d| match d.borrow().as_ref() {
        Some(scope) => {
            let index = index as usize;
            if scope.sealed.buffer(index).is_none() {
                return Err(format!(
                    "the value refers to buffer {index} but the object has {}",
                    scope.sealed.layout().buffers.len()
                ));
            }
            Ok(Blob::from_storage(Box::new(StoreView {
                object: scope.sealed.clone(),
                index,
            })))
        }
        None => Err("a Blob or Buffer can only be decoded from a stored object (get)".into()),
    })
}

/// A buffer read in place from a sealed object: the object stays pinned while it lives.
#[derive(Clone)]
struct StoreView {
    object: Arc<Sealed>,
    index: usize,
}

// SAFETY: a sealed object's bytes never change and stay in place while the `Arc` lives.
unsafe impl BlobStorage for StoreView {
    fn bytes(&self) -> &[u8] {
        self.object.buffer(self.index).unwrap_or_default()
    }
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        None
    }
    fn share(&self) -> Option<Box<dyn BlobStorage>> {
        Some(Box::new(self.clone()))
    }
    fn kind(&self) -> StorageKind {
        StorageKind::StoreView
    }
}

static BLOB_HOOKS: BlobHooks = BlobHooks {
    serialized: blob_serialized,
    take: blob_take,
};

static HOST_HOOKS: RefHooks = RefHooks {
    retain: hook_retain,
    release: hook_release,
    serialized: hook_serialized,
};

/// Makes refs owned by `node` count against `table`.
pub fn register_owner(node: NodeId, table: &Arc<ObjectTable>) {
    ferry_abi::install_ref_hooks(&HOST_HOOKS);
    ferry_abi::install_blob_hooks(&BLOB_HOOKS);
    if !ferry_abi::installed_ref_hooks().is_some_and(|h| std::ptr::eq(h, &HOST_HOOKS)) {
        tracing::error!(
            "another set of ObjectRef hooks was installed in this process before ferry's; \
             reference counting of driver handles will not work"
        );
    }
    let mut o = OWNERS.write().unwrap_or_else(|e| e.into_inner());
    o.retain(|(_, t)| t.strong_count() > 0);
    o.push((node.0, Arc::downgrade(table)));
}

/// Forgets `node`'s table (the node stopped).
pub fn unregister_owner(node: NodeId) {
    let mut o = OWNERS.write().unwrap_or_else(|e| e.into_inner());
    o.retain(|(n, t)| *n != node.0 && t.strong_count() > 0);
}

/// Pops the frame it pushed, also if encoding panics (a stale frame could otherwise receive
/// another encoding's buffers).
struct FrameGuard;

impl Drop for FrameGuard {
    fn drop(&mut self) {
        FRAMES.with(|f| f.borrow_mut().pop());
    }
}

/// Runs `f` as an encoding with its own frame; returns its result and the frame.
fn encoding<R>(buffers: BufferMode, f: impl FnOnce() -> R) -> (R, Frame) {
    FRAMES.with(|fr| {
        fr.borrow_mut().push(Frame {
            refs: Vec::new(),
            buffers,
            refused: None,
        })
    });
    let guard = FrameGuard;
    let r = f();
    let frame = FRAMES.with(|fr| fr.borrow_mut().pop());
    std::mem::forget(guard);
    let frame = frame.unwrap_or(Frame {
        refs: Vec::new(),
        buffers: BufferMode::Count(0),
        refused: None,
    });
    (r, frame)
}

fn serialize_error(e: postcard::Error, frame: &Frame) -> PutError {
    match frame.refused {
        Some(why) => PutError::Serialize(why.to_owned()),
        None => PutError::Serialize(e.to_string()),
    }
}

/// Encodes `value` into a `Vec`, returning its bytes, the refs inside it and how many
/// out-of-band buffers it holds (which a `Vec` cannot carry: such values go to the store).
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, Vec<ObjectId>, usize), PutError> {
    let (bytes, frame) = encoding(BufferMode::Count(0), || postcard::to_allocvec(value));
    let bytes = bytes.map_err(|e| serialize_error(e, &frame))?;
    let buffers = match frame.buffers {
        BufferMode::Count(n) => n,
        _ => 0,
    };
    Ok((bytes, frame.refs, buffers))
}

/// Encodes `value` straight into a new store object obtained from `allocate`: one pass to size
/// the metadata and the buffers, one to write the metadata in place and copy each buffer's
/// bytes once into its page-aligned region. No intermediate buffer.
pub fn encode_into_store<T: Serialize + ?Sized>(
    allocate: impl FnOnce(Layout) -> Result<Block, StoreError>,
    value: &T,
) -> Result<(Arc<Sealed>, Vec<ObjectId>), PutError> {
    let (len, frame) = encoding(BufferMode::Sizing(Vec::new()), || {
        postcard::experimental::serialized_size(value)
    });
    let len = len.map_err(|e| serialize_error(e, &frame))?;
    let BufferMode::Sizing(lens) = frame.buffers else {
        return Err(PutError::Serialize(
            "internal: lost the sizing frame".into(),
        ));
    };
    let layout = Layout::plan(len, &lens).ok_or_else(|| {
        PutError::Serialize("the value's buffers overflow the address space".into())
    })?;
    let mut block = allocate(layout)?;
    let (meta, buffers) = block.parts_mut();
    let dest = buffers
        .into_iter()
        .map(|b| (b.as_mut_ptr(), b.len()))
        .collect();
    let (written, frame) = encoding(BufferMode::Writing { dest, next: 0 }, || {
        postcard::to_slice(value, meta).map(|s| s.len())
    });
    let written = written.map_err(|e| serialize_error(e, &frame))?;
    let copied = match frame.buffers {
        BufferMode::Writing { next, .. } => next,
        _ => 0,
    };
    if written != len || copied != lens.len() {
        // A Serialize impl that writes differently on two passes; refuse rather than store junk.
        return Err(PutError::Serialize(
            "the value serialized differently on two passes".into(),
        ));
    }
    Ok((block.seal(), frame.refs))
}

/// Builds the argument list of a call made by the host (a driver).
///
/// Every ref an argument holds (top-level or inside a value) is retained the moment it is
/// encoded: arguments are often moved into the call and dropped right after encoding, and the
/// task must hold them from then on. The counts belong to the arguments; whoever consumes
/// `args` (a task, or [`HostArgSink::abandon`]) releases them. A value holding out-of-band
/// buffers is stored as an object of its own (its bytes copied once, into the store) and
/// passed by ref, which the function sees as the value.
#[derive(Debug)]
pub struct HostArgSink<'a> {
    objects: &'a ObjectTable,
    /// Ids for arguments stored as objects of their own.
    ids: &'a IdGenerator,
    /// The arguments so far.
    pub args: Vec<CallArg>,
    /// The first argument that did not encode (1-based position and the error).
    pub error: Option<(usize, PutError)>,
}

impl<'a> HostArgSink<'a> {
    /// An empty argument list for a call on the node of `objects`, whose ids come from
    /// `ids`.
    pub fn new(objects: &'a ObjectTable, ids: &'a IdGenerator) -> Self {
        Self {
            objects,
            ids,
            args: Vec::new(),
            error: None,
        }
    }

    /// Releases the counts the arguments took (the call is not going ahead).
    pub fn abandon(self) {
        self.objects
            .release_all(&ferry_core::TaskSpec::refs_of(&self.args));
    }

    fn fail(&mut self, e: PutError) {
        if self.error.is_none() {
            self.error = Some((self.args.len() + 1, e));
        }
        self.args.push(CallArg::Value {
            bytes: Vec::new(),
            refs: Vec::new(),
        });
    }

    fn push_value<T: Serialize + ?Sized>(&mut self, value: &T, untyped: bool) {
        let objects = self.objects;
        match encode(value) {
            Ok((_, _, buffers)) if buffers > 0 => {
                match encode_into_store(|l| objects.allocate(l), value) {
                    Ok((sealed, refs)) => {
                        let id = self.ids.next();
                        // The object's one count belongs to the argument.
                        objects.insert_ready(id, sealed, refs, 1);
                        self.args.push(CallArg::Object(id));
                    }
                    Err(e) => self.fail(e),
                }
            }
            Ok((bytes, refs, _)) => {
                for id in &refs {
                    objects.retain(*id);
                }
                if untyped
                    && let [id] = refs.as_slice()
                    && bytes == id.0
                {
                    self.args.push(CallArg::Object(*id));
                } else {
                    self.args.push(CallArg::Value { bytes, refs });
                }
            }
            Err(e) => self.fail(e),
        }
    }
}

impl ArgSink for HostArgSink<'_> {
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.push_value(value, false);
    }

    fn object(&mut self, id: ObjectId) {
        self.objects.retain(id);
        self.args.push(CallArg::Object(id));
    }

    fn untyped<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.push_value(value, true);
    }
}
