//! Encoding values on the host, and the host's ref hooks.
//!
//! Values are postcard. While a value is encoded, every `ObjectRef` inside it reports itself
//! through the `serialized` hook, so the host learns which refs an object contains without
//! knowing its type. Cloning, decoding and dropping refs adjust the reference count on the
//! node that owns the object (its id names the owner; [`register_owner`] maps it to a table).

use std::cell::RefCell;
use std::sync::{Arc, RwLock, Weak};

use ferry_abi::abi::CallArg;
use ferry_abi::{ArgSink, ObjectId, RefHooks};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{GetError, PutError};
use crate::ids::NodeId;
use crate::objects::ObjectTable;
use crate::store::{ObjectStore, Sealed};

type Owners = Vec<(u64, Weak<ObjectTable>)>;

static OWNERS: RwLock<Owners> = RwLock::new(Vec::new());

thread_local! {
    static COLLECTORS: RefCell<Vec<Vec<ObjectId>>> = const { RefCell::new(Vec::new()) };
}

fn owners() -> std::sync::RwLockReadGuard<'static, Owners> {
    OWNERS.read().unwrap_or_else(|e| e.into_inner())
}

fn table_for(id: ObjectId) -> Option<Arc<ObjectTable>> {
    let owner = id.owner();
    owners()
        .iter()
        .find(|(o, _)| *o == owner)
        .and_then(|(_, t)| t.upgrade())
}

fn hook_retain(id: ObjectId) {
    if let Some(t) = table_for(id) {
        t.retain(id);
    }
    // Counts stay balanced either way; a ref the object never declared is reported.
    DECODING.with(|d| {
        if let Some(scope) = d.borrow_mut().as_mut() {
            let (table, object) = (&scope.table, scope.object);
            let allowed = scope.allowed.get_or_insert_with(|| table.contained(object));
            if !allowed.contains(&id) {
                scope.undeclared.get_or_insert(id);
            }
        }
    });
}

/// An object being decoded for a driver, and the refs it declared when it was stored.
struct DecodeScope {
    object: ObjectId,
    table: Arc<ObjectTable>,
    /// Fetched on the first ref met, so ref-free values cost nothing.
    allowed: Option<Vec<ObjectId>>,
    undeclared: Option<ObjectId>,
}

thread_local! {
    static DECODING: RefCell<Option<DecodeScope>> = const { RefCell::new(None) };
}

/// Decodes `object` (whose bytes are `bytes`) for a driver. A ref inside it that the object
/// did not declare when it was stored (only a guest breaking the ABI can make one) makes the
/// decode fail, so that no one can be handed an object id they were never given.
pub fn decode_object<T: DeserializeOwned>(
    table: &Arc<ObjectTable>,
    object: ObjectId,
    bytes: &[u8],
) -> Result<T, GetError> {
    let previous = DECODING.with(|d| {
        d.borrow_mut().replace(DecodeScope {
            object,
            table: table.clone(),
            allowed: None,
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
    COLLECTORS.with(|c| {
        if let Some(top) = c.borrow_mut().last_mut() {
            top.push(id);
        }
    });
}

static HOST_HOOKS: RefHooks = RefHooks {
    retain: hook_retain,
    release: hook_release,
    serialized: hook_serialized,
};

/// Makes refs owned by `node` count against `table`.
pub fn register_owner(node: NodeId, table: &Arc<ObjectTable>) {
    ferry_abi::install_ref_hooks(&HOST_HOOKS);
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

/// Runs `f` while collecting the refs serialized on this thread.
fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<ObjectId>) {
    COLLECTORS.with(|c| c.borrow_mut().push(Vec::new()));
    let r = f();
    let refs = COLLECTORS.with(|c| c.borrow_mut().pop().unwrap_or_default());
    (r, refs)
}

/// Encodes `value`, returning its bytes and the refs inside it.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, Vec<ObjectId>), postcard::Error> {
    let (bytes, refs) = collecting(|| postcard::to_allocvec(value));
    Ok((bytes?, refs))
}

/// Encodes `value` straight into a new store object: one pass to size it, one to write it in
/// place, no intermediate buffer.
pub fn encode_into_store<T: Serialize + ?Sized>(
    store: &ObjectStore,
    value: &T,
) -> Result<(Arc<Sealed>, Vec<ObjectId>), PutError> {
    let len = postcard::experimental::serialized_size(value).map_err(PutError::Serialize)?;
    let mut block = store.allocate(len)?;
    let (written, refs) =
        collecting(|| postcard::to_slice(value, block.as_mut_slice()).map(|s| s.len()));
    let written = written.map_err(PutError::Serialize)?;
    if written != len {
        // A Serialize impl that writes differently on two passes; refuse rather than store junk.
        return Err(PutError::Serialize(postcard::Error::SerializeBufferFull));
    }
    Ok((block.seal(), refs))
}

/// Builds the argument list of a call made by the host (a driver).
///
/// Every ref an argument holds (top-level or inside a value) is retained the moment it is
/// encoded: arguments are often moved into the call and dropped right after encoding, and the
/// task must hold them from then on. The counts belong to the arguments; whoever consumes
/// `args` (a task, or [`HostArgSink::abandon`]) releases them.
#[derive(Debug)]
pub struct HostArgSink<'a> {
    objects: &'a ObjectTable,
    /// The arguments so far.
    pub args: Vec<CallArg>,
    /// The first argument that did not serialize (1-based position and the error).
    pub error: Option<(usize, postcard::Error)>,
}

impl<'a> HostArgSink<'a> {
    /// An empty argument list whose refs count against `objects`.
    pub fn new(objects: &'a ObjectTable) -> Self {
        Self {
            objects,
            args: Vec::new(),
            error: None,
        }
    }

    /// Releases the counts the arguments took (the call is not going ahead).
    pub fn abandon(self) {
        self.objects
            .release_all(&crate::wasm::TaskSpec::refs_of(&self.args));
    }

    fn push_value<T: Serialize + ?Sized>(&mut self, value: &T, untyped: bool) {
        match encode(value) {
            Ok((bytes, refs)) => {
                for id in &refs {
                    self.objects.retain(*id);
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
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some((self.args.len() + 1, e));
                }
                self.args.push(CallArg::Value {
                    bytes: Vec::new(),
                    refs: Vec::new(),
                });
            }
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
