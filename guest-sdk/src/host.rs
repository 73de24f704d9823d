//! The host functions, as safe wrappers over the raw imports.
//!
//! Inside a ferry node the imports come from the `ferry` import module. In a native build (a
//! driver depending on a guest crate for its typed handles, or `cargo test` of a guest crate)
//! there is no host; every call fails with [`ErrorKind::NoHost`](crate::ErrorKind::NoHost).

use ferry_abi::{ObjectId, abi};

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "ferry")]
    unsafe extern "C" {
        pub fn put(
            data: *const u8,
            len: usize,
            refs: *const u8,
            nrefs: usize,
            bufs: *const u8,
            nbufs: usize,
            out: *mut u8,
        ) -> i32;
        pub fn get(id: *const u8, timeout_ms: i64) -> i64;
        pub fn take(dst: *mut u8, cap: usize) -> i64;
        pub fn call(req: *const u8, len: usize, out: *mut u8) -> i32;
        pub fn wait(
            ids: *const u8,
            count: usize,
            num_ready: usize,
            timeout_ms: i64,
            ready_out: *mut u8,
        ) -> i32;
        pub fn result(
            data: *const u8,
            len: usize,
            refs: *const u8,
            nrefs: usize,
            bufs: *const u8,
            nbufs: usize,
        ) -> i32;
        pub fn buffer(source: i32, index: i32, out: *mut u8) -> i32;
        pub fn read_buffer(source: i32, index: i32, dst: *mut u8) -> i32;
        pub fn release_buffer(handle: i32) -> i32;
        pub fn release(id: *const u8) -> i32;
        pub fn fail(
            kind: i32,
            msg: *const u8,
            msg_len: usize,
            cause: *const u8,
            cause_len: usize,
        ) -> i32;
        pub fn log(level: i32, msg: *const u8, len: usize);
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod raw {
    //! Native stand-ins: no host is present.
    use ferry_abi::abi::status::HOST_ERROR;
    pub unsafe fn put(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *mut u8,
    ) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn get(_: *const u8, _: i64) -> i64 {
        HOST_ERROR as i64
    }
    pub unsafe fn take(_: *mut u8, _: usize) -> i64 {
        0
    }
    pub unsafe fn call(_: *const u8, _: usize, _: *mut u8) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn wait(_: *const u8, _: usize, _: usize, _: i64, _: *mut u8) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn result(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn buffer(_: i32, _: i32, _: *mut u8) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn read_buffer(_: i32, _: i32, _: *mut u8) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn release_buffer(_: i32) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn release(_: *const u8) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn fail(_: i32, _: *const u8, _: usize, _: *const u8, _: usize) -> i32 {
        HOST_ERROR
    }
    pub unsafe fn log(_: i32, msg: *const u8, len: usize) {
        // SAFETY: callers pass a pointer and length taken from one `&str`.
        let msg = unsafe { core::slice::from_raw_parts(msg, len) };
        eprintln!("[ferry-guest] {}", String::from_utf8_lossy(msg));
    }
}

/// Whether a host is present (false in native builds).
pub(crate) const HAS_HOST: bool = cfg!(target_arch = "wasm32");

fn ids_as_bytes(ids: &[ObjectId]) -> *const u8 {
    // `ObjectId` is `[u8; 16]` in a newtype; a slice of them is `16 * len` contiguous bytes.
    ids.as_ptr().cast()
}

/// The `(ptr, len)` table of a value's buffers, as the host reads it (8 bytes each).
fn buffer_table(buffers: &[(u32, u32)]) -> Vec<u8> {
    buffers
        .iter()
        .flat_map(|&(p, l)| p.to_le_bytes().into_iter().chain(l.to_le_bytes()))
        .collect()
}

/// Stores a value. `buffers` must point at bytes that stay alive and unchanged for the call
/// (the value they came from is still borrowed); the host only reads them, bounds-checked.
pub(crate) fn put(data: &[u8], refs: &[ObjectId], buffers: &[(u32, u32)]) -> Result<ObjectId, i32> {
    let mut out = ObjectId([0; 16]);
    let table = buffer_table(buffers);
    // SAFETY: every pointer comes from a live slice or local with the length passed beside it;
    // the host writes exactly 16 bytes to `out`.
    let status = unsafe {
        raw::put(
            data.as_ptr(),
            data.len(),
            ids_as_bytes(refs),
            refs.len(),
            table.as_ptr(),
            buffers.len(),
            out.0.as_mut_ptr(),
        )
    };
    if status == 0 { Ok(out) } else { Err(status) }
}

/// Stages the object on the host and returns its length; on failure the host staged an error
/// message instead and the status is returned.
pub(crate) fn get(id: ObjectId, timeout_ms: i64) -> Result<usize, i32> {
    // SAFETY: `id.0` is 16 readable bytes.
    let n = unsafe { raw::get(id.0.as_ptr(), timeout_ms) };
    if n >= 0 {
        Ok(n as usize)
    } else {
        Err(n as i32)
    }
}

/// Copies the staged bytes (an object, or an error message) out of the host.
pub(crate) fn take() -> Vec<u8> {
    // SAFETY: a null pointer with capacity 0 only asks for the staged length.
    let len = unsafe { raw::take(core::ptr::null_mut(), 0) };
    let Ok(len) = usize::try_from(len) else {
        return Vec::new();
    };
    take_exact(len)
}

/// Copies exactly `len` staged bytes out of the host.
pub(crate) fn take_exact(len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(len);
    // SAFETY: `buf` has capacity `len`; the host writes at most `len` bytes and returns how many
    // it wrote, and we set the length to that only when it fits.
    unsafe {
        let n = raw::take(buf.as_mut_ptr(), len);
        if n >= 0 && n as usize <= len {
            buf.set_len(n as usize);
        }
    }
    buf
}

pub(crate) fn call(request: &[u8]) -> Result<ObjectId, i32> {
    let mut out = ObjectId([0; 16]);
    // SAFETY: pointer and length from one slice; the host writes 16 bytes to `out`.
    let status = unsafe { raw::call(request.as_ptr(), request.len(), out.0.as_mut_ptr()) };
    if status == 0 { Ok(out) } else { Err(status) }
}

pub(crate) fn wait(ids: &[ObjectId], num_ready: usize, timeout_ms: i64) -> Result<Vec<bool>, i32> {
    let mut ready = vec![0u8; ids.len()];
    // SAFETY: `ids` is `16 * len` bytes; `ready` is `len` writable bytes.
    let n = unsafe {
        raw::wait(
            ids_as_bytes(ids),
            ids.len(),
            num_ready,
            timeout_ms,
            ready.as_mut_ptr(),
        )
    };
    if n >= 0 {
        Ok(ready.into_iter().map(|b| b != 0).collect())
    } else {
        Err(n)
    }
}

/// Hands over the function's result (buffers as for [`put`]).
pub(crate) fn result(data: &[u8], refs: &[ObjectId], buffers: &[(u32, u32)]) -> i32 {
    let table = buffer_table(buffers);
    // SAFETY: pointers and lengths from live slices.
    unsafe {
        raw::result(
            data.as_ptr(),
            data.len(),
            ids_as_bytes(refs),
            refs.len(),
            table.as_ptr(),
            buffers.len(),
        )
    }
}

/// Asks the host for buffer `index` of `source`: `(info, true)` if it mapped the buffer,
/// `(info, false)` if the guest must copy `info.len` bytes with [`read_buffer`].
pub(crate) fn buffer(source: i32, index: u32) -> Result<(abi::BufferInfo, bool), i32> {
    let mut out = [0u8; 12];
    // SAFETY: `out` is 12 writable bytes, all the host writes.
    let status = unsafe { raw::buffer(source, index as i32, out.as_mut_ptr()) };
    match status {
        0 | 1 => Ok((abi::BufferInfo::from_bytes(out), status == 1)),
        s => Err(s),
    }
}

/// Copies buffer `index` of `source` into `dst`, which must be exactly its length.
pub(crate) fn read_buffer(source: i32, index: u32, dst: &mut [u8]) -> Result<(), i32> {
    // SAFETY: `dst` is writable for its length, the buffer's length (from `buffer`).
    match unsafe { raw::read_buffer(source, index as i32, dst.as_mut_ptr()) } {
        0 => Ok(()),
        s => Err(s),
    }
}

/// Unmaps a buffer the host mapped.
pub(crate) fn release_buffer(handle: u32) {
    // SAFETY: no pointers.
    unsafe { raw::release_buffer(handle as i32) };
}

/// Tells the host that the guest holds no more handles to `id`.
pub(crate) fn release(id: ObjectId) {
    // SAFETY: `id.0` is 16 readable bytes.
    unsafe { raw::release(id.0.as_ptr()) };
}

pub(crate) fn fail(kind: i32, message: &str, cause: &[u8]) -> i32 {
    // SAFETY: pointers and lengths from live slices.
    unsafe {
        raw::fail(
            kind,
            message.as_ptr(),
            message.len(),
            cause.as_ptr(),
            cause.len(),
        )
    }
}

pub(crate) fn log(level: i32, message: &str) {
    // SAFETY: pointer and length from one `&str`.
    unsafe { raw::log(level, message.as_ptr(), message.len()) }
}
