//! Encoding values with the refs they contain.

use std::cell::RefCell;

use ferry_abi::abi::CallArg;
use ferry_abi::{ArgSink, ObjectId, RefHooks};
use serde::Serialize;

thread_local! {
    /// One frame per encoding in progress; refs serialized while it is on top land in it.
    static COLLECTORS: RefCell<Vec<Vec<ObjectId>>> = const { RefCell::new(Vec::new()) };
}

fn on_serialized(id: ObjectId) {
    COLLECTORS.with(|c| {
        if let Some(top) = c.borrow_mut().last_mut() {
            top.push(id);
        }
    });
}

fn noop(_: ObjectId) {}

/// Inside a guest the host counts references per task, so handles need no counting; only
/// serialization is observed, to report the refs an encoded value contains.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
static GUEST_HOOKS: RefHooks = RefHooks {
    retain: noop,
    release: noop,
    serialized: on_serialized,
};

/// Installs the guest's hooks. Only inside a Wasm guest: in a native build the process may be
/// a ferry host, whose own hooks count references.
pub(crate) fn install_hooks() {
    #[cfg(target_arch = "wasm32")]
    ferry_abi::install_ref_hooks(&GUEST_HOOKS);
}

/// Encodes `value` with postcard and returns the bytes and the ids of the refs inside.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> (Vec<u8>, Vec<ObjectId>) {
    install_hooks();
    COLLECTORS.with(|c| c.borrow_mut().push(Vec::new()));
    let bytes = postcard::to_allocvec(value);
    let refs = COLLECTORS.with(|c| c.borrow_mut().pop().unwrap_or_default());
    // Serializing into a Vec fails only for types whose Serialize impl fails on purpose.
    let bytes = bytes.unwrap_or_else(|e| panic!("a value did not serialize: {e}"));
    (bytes, refs)
}

/// Builds the argument list of a nested call.
#[derive(Default)]
pub(crate) struct CallSink {
    pub(crate) args: Vec<CallArg>,
}

impl ArgSink for CallSink {
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        let (bytes, refs) = encode(value);
        self.args.push(CallArg::Value { bytes, refs });
    }

    fn object(&mut self, id: ObjectId) {
        self.args.push(CallArg::Object(id));
    }

    fn untyped<T: Serialize + ?Sized>(&mut self, value: &T) {
        let (bytes, refs) = encode(value);
        match refs.as_slice() {
            [id] if bytes == id.0 => self.args.push(CallArg::Object(*id)),
            _ => self.args.push(CallArg::Value { bytes, refs }),
        }
    }
}
