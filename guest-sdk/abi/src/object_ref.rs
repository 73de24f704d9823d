use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicPtr, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ObjectId;

/// A reference to an immutable object of type `T` in a ferry cluster.
///
/// The same type is used by drivers on the host and by guest functions, and it is an ordinary
/// serde value: refs can be passed as arguments, returned from functions and stored inside
/// other objects. On the wire a ref is its 16-byte [`ObjectId`].
///
/// A ref is a counted handle. Whoever runs the code installs [`RefHooks`]: on the host, cloning,
/// deserializing and dropping a ref adjust the object's reference count, and serializing one
/// records it as contained in the value being encoded (an object holding refs keeps them
/// alive). With no hooks installed a ref is a plain id.
pub struct ObjectRef<T: ?Sized> {
    id: ObjectId,
    _type: PhantomData<fn() -> T>,
}

impl<T: ?Sized> ObjectRef<T> {
    /// Takes over one reference count that the caller already holds for `id` (for example a
    /// fresh `put` result). Counts are not incremented; dropping the ref releases it.
    #[doc(hidden)]
    pub fn adopt(id: ObjectId) -> Self {
        Self {
            id,
            _type: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Gives up the handle without releasing its count; the caller now holds the count.
    #[doc(hidden)]
    pub fn into_raw(self) -> ObjectId {
        let id = self.id;
        core::mem::forget(self);
        id
    }

    /// Reinterprets the ref as a ref to another type. Decoding then checks the bytes against
    /// `U`; nothing unsafe can happen.
    pub fn cast<U: ?Sized>(self) -> ObjectRef<U> {
        ObjectRef::adopt(self.into_raw())
    }
}

impl<T: ?Sized> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        if let Some(h) = hooks() {
            (h.retain)(self.id);
        }
        Self::adopt(self.id)
    }
}

impl<T: ?Sized> Drop for ObjectRef<T> {
    fn drop(&mut self) {
        if let Some(h) = hooks() {
            (h.release)(self.id);
        }
    }
}

impl<T: ?Sized> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl<T: ?Sized> Eq for ObjectRef<T> {}

impl<T: ?Sized> core::hash::Hash for ObjectRef<T> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<T: ?Sized> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.id)
    }
}

/// The serde name of a ref; manifests name ref types by it.
pub const OBJECT_REF_SERDE_NAME: &str = "ObjectRef";

impl<T: ?Sized> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(h) = hooks() {
            (h.serialized)(self.id);
        }
        serializer.serialize_newtype_struct(OBJECT_REF_SERDE_NAME, &self.id.0)
    }
}

impl<'de, T: ?Sized> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "ObjectRef")]
        struct Wire([u8; 16]);
        let Wire(bytes) = Wire::deserialize(deserializer)?;
        let id = ObjectId(bytes);
        if let Some(h) = hooks() {
            (h.retain)(id);
        }
        Ok(Self::adopt(id))
    }
}

/// What the side running the code does when refs are cloned, decoded, dropped or encoded.
#[derive(Debug)]
pub struct RefHooks {
    /// A new handle to `id` came into being (a clone, or a ref decoded from bytes).
    pub retain: fn(ObjectId),
    /// A handle to `id` was dropped.
    pub release: fn(ObjectId),
    /// A ref to `id` was serialized into the value being encoded.
    pub serialized: fn(ObjectId),
}

static HOOKS: AtomicPtr<RefHooks> = AtomicPtr::new(core::ptr::null_mut());

/// Installs the process-wide ref hooks. Only the first call wins; returns whether this one did.
pub fn install_ref_hooks(hooks: &'static RefHooks) -> bool {
    let ptr = hooks as *const RefHooks as *mut RefHooks;
    HOOKS
        .compare_exchange(
            core::ptr::null_mut(),
            ptr,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

/// The hooks in force, if any were installed.
pub fn installed_ref_hooks() -> Option<&'static RefHooks> {
    hooks()
}

fn hooks() -> Option<&'static RefHooks> {
    let ptr = HOOKS.load(Ordering::Acquire);
    // SAFETY: HOOKS is either null or was set from a `&'static RefHooks` in
    // `install_ref_hooks`, and it is never changed afterwards.
    unsafe { ptr.as_ref() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_the_sixteen_id_bytes() {
        let r: ObjectRef<u32> = ObjectRef::adopt(ObjectId::new(7, 9));
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(bytes, ObjectId::new(7, 9).0);
        let back: ObjectRef<u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
    }
}
