//! Typed call handles and the argument rules.
//!
//! Ray's rule, kept exactly: an [`ObjectRef`] passed as a *top-level* argument is resolved to
//! its value before the function runs, so the function sees a `T`; a ref nested inside an
//! argument (a `Vec<ObjectRef<T>>`, a struct field) stays a ref. With typed handles the rule is
//! checked by the compiler: a parameter of type `T` accepts a `T`, an `ObjectRef<T>` or an
//! `&ObjectRef<T>`, and nothing else.

use core::marker::PhantomData;

use serde::Serialize;

use crate::{ObjectId, ObjectRef};

/// Receives the encoded arguments of a call. Each side of the ABI implements it with its own
/// encoder (the host collects contained refs to keep them alive; the guest reports them).
pub trait ArgSink {
    /// An argument passed by value.
    fn value<T: Serialize + ?Sized>(&mut self, value: &T);
    /// A top-level ref argument, to be resolved to the object's value before the call runs.
    fn object(&mut self, id: ObjectId);
    /// An argument of an untyped call: resolved by value if the value *is* one `ObjectRef`
    /// (Ray's rule, decided at run time), passed by value otherwise.
    fn untyped<T: Serialize + ?Sized>(&mut self, value: &T);
}

/// A value usable as an argument of type `T`: the value itself, or a ref to one.
pub trait Arg<T> {
    /// Hands the argument to `sink`.
    fn encode<S: ArgSink>(self, sink: &mut S);
}

impl<T: Serialize> Arg<T> for T {
    fn encode<S: ArgSink>(self, sink: &mut S) {
        sink.value(&self);
    }
}

impl<T: Serialize> Arg<T> for &T {
    fn encode<S: ArgSink>(self, sink: &mut S) {
        sink.value(self);
    }
}

impl<T> Arg<T> for ObjectRef<T> {
    fn encode<S: ArgSink>(self, sink: &mut S) {
        sink.object(self.id());
    }
}

impl<T> Arg<T> for &ObjectRef<T> {
    fn encode<S: ArgSink>(self, sink: &mut S) {
        sink.object(self.id());
    }
}

/// A tuple of arguments for a function whose parameters are the tuple `Params`.
pub trait IntoArgs<Params> {
    /// Hands every argument to `sink`, in order.
    fn encode_args<S: ArgSink>(self, sink: &mut S);
}

/// A tuple of arguments for a call by name, with no static types (any serde values).
pub trait UntypedArgs {
    /// Hands every argument to `sink`, in order.
    fn encode_args<S: ArgSink>(self, sink: &mut S);
}

macro_rules! tuple_args {
    ($($a:ident $t:ident),*) => {
        impl<$($a: Arg<$t>, $t,)*> IntoArgs<($($t,)*)> for ($($a,)*) {
            #[allow(non_snake_case, unused_variables)]
            fn encode_args<S: ArgSink>(self, sink: &mut S) {
                let ($($a,)*) = self;
                $($a.encode(sink);)*
            }
        }
        impl<$($a: Serialize,)*> UntypedArgs for ($($a,)*) {
            #[allow(non_snake_case, unused_variables)]
            fn encode_args<S: ArgSink>(self, sink: &mut S) {
                let ($($a,)*) = self;
                $(sink.untyped(&$a);)*
            }
        }
    };
}
tuple_args!();
tuple_args!(A1 T1);
tuple_args!(A1 T1, A2 T2);
tuple_args!(A1 T1, A2 T2, A3 T3);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4, A5 T5);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4, A5 T5, A6 T6);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4, A5 T5, A6 T6, A7 T7);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4, A5 T5, A6 T6, A7 T7, A8 T8);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4, A5 T5, A6 T6, A7 T7, A8 T8, A9 T9);
tuple_args!(A1 T1, A2 T2, A3 T3, A4 T4, A5 T5, A6 T6, A7 T7, A8 T8, A9 T9, A10 T10);

/// A typed handle to a remote function taking the parameter tuple `Params` and producing `R`.
///
/// `#[ferry_guest::remote]` generates one per function (`my_guest::add::REMOTE`), so a driver
/// that depends on the guest crate calls it with checked argument types, and a guest can make
/// a typed nested call to a sibling function.
pub struct RemoteFn<Params, R> {
    name: &'static str,
    signature: &'static str,
    _types: PhantomData<fn(Params) -> R>,
}

impl<Params, R> RemoteFn<Params, R> {
    /// A handle for the function `name` whose signature (as the manifest spells it, for
    /// example `(a: i32, b: i32) -> i32`) is `signature`.
    pub const fn new(name: &'static str, signature: &'static str) -> Self {
        Self {
            name,
            signature,
            _types: PhantomData,
        }
    }

    /// The function's exported name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The function's signature as written in its source.
    pub const fn signature(&self) -> &'static str {
        self.signature
    }
}

impl<Params, R> Clone for RemoteFn<Params, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Params, R> Copy for RemoteFn<Params, R> {}

impl<Params, R> core::fmt::Debug for RemoteFn<Params, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RemoteFn({} {})", self.name, self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    #[derive(Default)]
    struct Record(Vec<String>);
    impl ArgSink for Record {
        fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
            let bytes = postcard::to_allocvec(value).unwrap();
            self.0.push(alloc::format!("value {bytes:?}"));
        }
        fn object(&mut self, id: ObjectId) {
            self.0.push(alloc::format!("object {}", id.seq()));
        }
        fn untyped<T: Serialize + ?Sized>(&mut self, value: &T) {
            let bytes = postcard::to_allocvec(value).unwrap();
            self.0.push(alloc::format!("untyped {bytes:?}"));
        }
    }

    fn encode<P, A: IntoArgs<P>>(_f: RemoteFn<P, ()>, args: A) -> Vec<String> {
        let mut r = Record::default();
        args.encode_args(&mut r);
        r.0
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn typed_args_choose_value_or_object_by_type() {
        let f: RemoteFn<(u8, ObjectRef<u8>, Vec<ObjectRef<u8>>), ()> = RemoteFn::new("f", "");
        let r: ObjectRef<u8> = ObjectRef::adopt(ObjectId::new(1, 5));
        let top: ObjectRef<ObjectRef<u8>> = ObjectRef::adopt(ObjectId::new(1, 6));
        let out = encode(f, (&r, top, alloc::vec![r.clone()]));
        assert_eq!(out[0], "object 5");
        assert_eq!(out[1], "object 6");
        assert!(out[2].starts_with("value [1, 1, 0, 0"));
        let out = encode(f, (3u8, r.clone(), Vec::new()));
        assert_eq!(out[0], "value [3]");
        assert!(out[1].starts_with("value [1, 0, 0"));
    }
}
