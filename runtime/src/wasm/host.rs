//! The host functions of the guest ABI (`docs/abi.md`), and the per-call store data they use.
//!
//! Everything a guest passes is checked: pointers and lengths against its memory, ids against
//! the refs the task was given (a guest cannot read an object by guessing its id), messages
//! by decoding. A bad value fails the host call with a status code; nothing here panics.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_abi::abi::{self, CallRequest, status};
use ferry_abi::{ModuleId, ObjectId};
use wasmtime::{Caller, Linker, Memory};

use crate::error::{GetError, StoreError};
use crate::node::{CallOrigin, NodeInner};
use crate::objects::{ObjectState, ObjectTable, WaitFlags};
use crate::store::{Layout, Sealed};
use crate::wasm::engine::MemoryLimiter;
use crate::wasm::windows::Windows;

/// Longest message (panic, error, log line) kept from a guest.
const MAX_MESSAGE: usize = 64 * 1024;
/// Most ids one `wait` may name (each completion on the node re-checks them).
const MAX_WAIT_IDS: u32 = 100_000;
/// Largest encoded error value (`cause`) kept from a guest.
const MAX_CAUSE: usize = 1 << 20;
/// Most out-of-band buffers one value may have.
const MAX_BUFFERS: u32 = 1 << 16;

/// What a guest reported through `fail`.
#[derive(Debug, Clone)]
pub struct GuestFailure {
    /// One of [`abi::fail_kind`], or [`HOST_FAILURE`].
    pub kind: i32,
    /// The message.
    pub message: String,
    /// The encoded error value (for `fail_kind::ERROR`).
    pub cause: Vec<u8>,
}

/// The `kind` of a failure the host recorded itself (not one of [`abi::fail_kind`]).
pub const HOST_FAILURE: i32 = 0;

/// Bytes waiting for the guest to `take` them.
#[derive(Debug, Default)]
pub enum Staged {
    /// Nothing.
    #[default]
    Empty,
    /// An object, read in place from the store.
    Object(Arc<Sealed>),
    /// An error message.
    Message(Vec<u8>),
}

impl Staged {
    fn bytes(&self) -> &[u8] {
        match self {
            Staged::Empty => &[],
            Staged::Object(s) => s.meta(),
            Staged::Message(m) => m,
        }
    }
}

/// When a guest last resumed running. Shared with the future that yields a guest to the
/// executor, so that time spent queued behind other tasks is not charged to it.
#[derive(Debug)]
pub struct GuestClock {
    base: Instant,
    resumed_ns: AtomicU64,
}

impl GuestClock {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            resumed_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The time since the last resume, restarting the lap.
    fn lap(&self) -> Duration {
        let now = self.now_ns();
        let then = self.resumed_ns.swap(now, Ordering::Relaxed);
        Duration::from_nanos(now.saturating_sub(then))
    }

    /// Marks the guest as running from now on.
    pub fn resume(&self) {
        self.resumed_ns.store(self.now_ns(), Ordering::Relaxed);
    }
}

/// The data of one call's wasmtime store.
pub struct TaskState {
    /// The node (absent while a module's manifest is read).
    pub node: Option<Arc<NodeInner>>,
    /// The module the function belongs to.
    pub module: ModuleId,
    /// The function being run.
    pub function: String,
    /// The memory limit.
    pub limiter: MemoryLimiter,
    /// The time limit on guest execution.
    pub time_limit: Duration,
    time_used: Duration,
    /// When the guest last resumed running.
    pub clock: Arc<GuestClock>,
    /// The guest's memory, once instantiated.
    pub memory: Option<Memory>,
    /// Refs this task may use; each holds one reference count until the task ends.
    pub granted: HashSet<ObjectId>,
    /// Results of the calls this task made that may not have finished (for
    /// `max_calls_per_task`).
    children: Vec<ObjectId>,
    staged: Staged,
    /// The object of the last `get`, whose buffers the guest reads next.
    last_object: Option<Arc<Sealed>>,
    /// The objects behind arguments passed by ref, by position, for reading their buffers.
    pub arg_objects: Vec<Option<Arc<Sealed>>>,
    /// Buffers mapped into the guest's memory.
    pub windows: Windows,
    /// Buffers at least this large are mapped rather than copied.
    pub map_threshold: u64,
    /// The result the guest handed over, sealed in the store, with the refs it contains.
    pub result: Option<(Arc<Sealed>, Vec<ObjectId>)>,
    /// The result bytes while reading a manifest (there is no store then).
    pub raw_result: Option<Vec<u8>>,
    /// What the guest reported through `fail`.
    pub failure: Option<GuestFailure>,
}

impl TaskState {
    /// State for running `function` of `module`.
    pub fn new(
        node: Option<Arc<NodeInner>>,
        module: ModuleId,
        function: &str,
        time_limit: Duration,
        memory_limit: u64,
    ) -> Self {
        Self {
            node,
            module,
            function: function.to_owned(),
            limiter: MemoryLimiter {
                limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            },
            time_limit,
            time_used: Duration::ZERO,
            clock: Arc::new(GuestClock::new()),
            memory: None,
            granted: HashSet::new(),
            children: Vec::new(),
            staged: Staged::Empty,
            last_object: None,
            arg_objects: Vec::new(),
            windows: Windows::default(),
            map_threshold: u64::MAX,
            result: None,
            raw_result: None,
            failure: None,
        }
    }

    /// Charges the time since the guest last resumed; returns true if over the limit.
    pub fn charge_time(&mut self) -> bool {
        self.time_used += self.clock.lap();
        self.time_used > self.time_limit
    }

    /// Stops the clock while the guest waits for the host.
    fn pause_clock(&mut self) {
        self.time_used += self.clock.lap();
    }

    /// Restarts the clock when the guest resumes.
    fn resume_clock(&mut self) {
        self.clock.resume();
    }

    /// Lets the task use `id`, holding a count on it. Returns false if the object is gone.
    pub fn grant(&mut self, objects: &ObjectTable, id: ObjectId) -> bool {
        if self.granted.contains(&id) {
            return true;
        }
        if objects.retain(id) {
            self.granted.insert(id);
            true
        } else {
            false
        }
    }

    fn stage_message(&mut self, message: String) {
        self.staged = Staged::Message(message.into_bytes());
    }

    /// Fails a host call: stages `message` for the guest and returns `code`.
    fn refuse(&mut self, code: i32, message: String) -> i32 {
        self.stage_message(message);
        code
    }

    /// Fails the task because `result` refused the result: the staged message becomes the
    /// task's error, whatever the guest does next.
    fn refuse_result(&mut self, code: i32) -> i32 {
        let message = String::from_utf8_lossy(self.staged.bytes()).into_owned();
        self.failure.get_or_insert(GuestFailure {
            kind: HOST_FAILURE,
            message: format!("the result was refused: {message}"),
            cause: Vec::new(),
        });
        code
    }

    fn check_granted(&mut self, ids: &[ObjectId]) -> Result<(), i32> {
        match ids.iter().find(|id| !self.granted.contains(id)) {
            None => Ok(()),
            Some(id) => Err(self.refuse(
                status::INVALID_REF,
                format!("object {id} was not given to this task"),
            )),
        }
    }
}

fn range(ptr: i32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    Some(start..start.checked_add(len)?)
}

fn guest_bytes(data: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    data.get(range(ptr, len as u32 as usize)?)
}

fn guest_ids(data: &[u8], ptr: i32, count: i32) -> Option<Vec<ObjectId>> {
    let n = count as u32 as usize;
    let bytes = data.get(range(ptr, n.checked_mul(16)?)?)?;
    Some(
        bytes
            .chunks_exact(16)
            .map(|c| {
                let mut id = [0u8; 16];
                id.copy_from_slice(c);
                ObjectId(id)
            })
            .collect(),
    )
}

fn guest_string(data: &[u8], ptr: i32, len: i32) -> Option<String> {
    let b = guest_bytes(data, ptr, len)?;
    let b = &b[..b.len().min(MAX_MESSAGE)];
    Some(String::from_utf8_lossy(b).into_owned())
}

fn write_guest(data: &mut [u8], ptr: i32, bytes: &[u8]) -> bool {
    match range(ptr, bytes.len()).and_then(|r| data.get_mut(r)) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// The `(ptr, len)` pairs of a buffer list, each checked against the guest's memory.
fn guest_buffers(data: &[u8], ptr: i32, count: i32) -> Option<Vec<std::ops::Range<usize>>> {
    let n = count as u32 as usize;
    let table = data.get(range(ptr, n.checked_mul(8)?)?)?;
    table
        .chunks_exact(8)
        .map(|c| {
            let p = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            let l = u32::from_le_bytes([c[4], c[5], c[6], c[7]]) as usize;
            let r = p..p.checked_add(l)?;
            data.get(r.clone())?;
            Some(r)
        })
        .collect()
}

/// Stores a value a guest encoded (metadata plus buffers, all in its memory) as one object:
/// each byte is copied once, from guest memory into the store.
fn seal_from_guest(
    node: &NodeInner,
    data: &[u8],
    meta: &[u8],
    buffers: &[std::ops::Range<usize>],
) -> Result<Arc<Sealed>, StoreError> {
    let lens: Vec<usize> = buffers.iter().map(|r| r.len()).collect();
    let layout = Layout::plan(meta.len(), &lens).ok_or(StoreError::TooLarge {
        len: u64::MAX,
        capacity: node.objects.store().stats().capacity,
    })?;
    let mut block = node.objects.allocate(layout)?;
    let (meta_dst, buf_dst) = block.parts_mut();
    meta_dst.copy_from_slice(meta);
    for (dst, src) in buf_dst.into_iter().zip(buffers) {
        dst.copy_from_slice(&data[src.clone()]);
    }
    Ok(block.seal())
}

/// The object a `buffer`/`read_buffer` source names.
fn buffer_source(st: &mut TaskState, source: i32) -> Result<Arc<Sealed>, i32> {
    let object = if source == abi::SOURCE_LAST_GET {
        st.last_object.clone()
    } else {
        usize::try_from(source)
            .ok()
            .and_then(|k| st.arg_objects.get(k).cloned().flatten())
    };
    object.ok_or_else(|| {
        st.refuse(
            status::BAD_REQUEST,
            format!("buffer source {source} names no object with buffers"),
        )
    })
}

fn timeout(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// The guest's memory and the store data, or the status to return if it has no memory.
fn memory(caller: &mut Caller<'_, TaskState>) -> Result<Memory, i32> {
    caller.data().memory.ok_or(status::BAD_REQUEST)
}

fn node_of(st: &mut TaskState) -> Result<Arc<NodeInner>, i32> {
    match &st.node {
        Some(n) => Ok(n.clone()),
        None => Err(st.refuse(
            status::HOST_ERROR,
            "the cluster is not available while a module's manifest is read".into(),
        )),
    }
}

/// Fails a host call for a pointer or length outside the guest's memory.
fn out_of_bounds(st: &mut TaskState, what: &str) -> i32 {
    st.refuse(
        status::BAD_REQUEST,
        format!("{what} lies outside the guest's memory"),
    )
}

macro_rules! try_status {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return Ok(code),
        }
    };
}

/// A linker with every host function of the ABI.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<TaskState>> {
    let mut l = Linker::new(engine);
    let m = abi::IMPORT_MODULE;

    l.func_wrap(
        m,
        abi::import::PUT,
        |mut caller: Caller<'_, TaskState>,
         data: i32,
         len: i32,
         refs: i32,
         nrefs: i32,
         bufs: i32,
         nbufs: i32,
         out: i32|
         -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let node = try_status!(node_of(st));
            let Some(ids) = guest_ids(mem_data, refs, nrefs) else {
                return Ok(out_of_bounds(st, "the ref list"));
            };
            try_status!(st.check_granted(&ids));
            let Some(bytes) = guest_bytes(mem_data, data, len) else {
                return Ok(out_of_bounds(st, "the value"));
            };
            if nbufs as u32 > MAX_BUFFERS {
                return Ok(st.refuse(
                    status::BAD_REQUEST,
                    format!("a value may have at most {MAX_BUFFERS} buffers"),
                ));
            }
            let Some(buffers) = guest_buffers(mem_data, bufs, nbufs) else {
                return Ok(out_of_bounds(st, "a buffer"));
            };
            if range(out, 16).and_then(|r| mem_data.get(r)).is_none() {
                return Ok(out_of_bounds(st, "the id out-pointer"));
            }
            let sealed = match seal_from_guest(&node, mem_data, bytes, &buffers) {
                Ok(s) => s,
                Err(e) => return Ok(st.refuse(status::STORE_FULL, e.to_string())),
            };
            let id = node.ids.next();
            node.objects.insert_ready(id, sealed, ids, 1);
            st.granted.insert(id);
            write_guest(mem_data, out, &id.0);
            Ok(status::OK)
        },
    )?;

    l.func_wrap_async(
        m,
        abi::import::GET,
        |mut caller: Caller<'_, TaskState>, (id_ptr, timeout_ms): (i32, i64)| {
            Box::new(async move {
                let mem = match memory(&mut caller) {
                    Ok(m) => m,
                    Err(code) => return Ok(code as i64),
                };
                let (mem_data, st) = mem.data_and_store_mut(&mut caller);
                let Some(id) = guest_ids(mem_data, id_ptr, 1).and_then(|v| v.first().copied())
                else {
                    return Ok(out_of_bounds(st, "the id") as i64);
                };
                let node = match node_of(st) {
                    Ok(n) => n,
                    Err(code) => return Ok(code as i64),
                };
                if let Err(code) = st.check_granted(&[id]) {
                    return Ok(code as i64);
                }
                st.pause_clock();
                let outcome = {
                    // Only a guest that will really block counts towards a stalled pool.
                    let pending = matches!(node.objects.state(id), Some(ObjectState::Pending));
                    let _waiting = pending.then(|| node.guest_waiting());
                    node.objects.wait_object(id, timeout(timeout_ms)).await
                };
                let st = caller.data_mut();
                st.resume_clock();
                Ok(match outcome {
                    Ok((sealed, contained)) => {
                        for c in contained {
                            st.grant(&node.objects, c);
                        }
                        let len = sealed.layout().meta_len as i64;
                        st.last_object =
                            (!sealed.layout().buffers.is_empty()).then(|| sealed.clone());
                        st.staged = Staged::Object(sealed);
                        len
                    }
                    Err(e @ GetError::Timeout { .. }) => {
                        st.refuse(status::TIMEOUT, e.to_string()) as i64
                    }
                    Err(e @ GetError::Task(_)) => {
                        st.refuse(status::TASK_FAILED, e.to_string()) as i64
                    }
                    Err(e) => st.refuse(status::INVALID_REF, e.to_string()) as i64,
                })
            })
        },
    )?;

    l.func_wrap(
        m,
        abi::import::TAKE,
        |mut caller: Caller<'_, TaskState>, dst: i32, cap: i32| -> wasmtime::Result<i64> {
            let mem = match memory(&mut caller) {
                Ok(m) => m,
                Err(code) => return Ok(code as i64),
            };
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let staged = st.staged.bytes();
            let len = staged.len();
            if len > cap as u32 as usize {
                return Ok(len as i64);
            }
            if !write_guest(mem_data, dst, staged) {
                return Ok(out_of_bounds(st, "the destination") as i64);
            }
            st.staged = Staged::Empty;
            Ok(len as i64)
        },
    )?;

    l.func_wrap(
        m,
        abi::import::CALL,
        |mut caller: Caller<'_, TaskState>,
         req: i32,
         len: i32,
         out: i32|
         -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let node = try_status!(node_of(st));
            let Some(bytes) = guest_bytes(mem_data, req, len) else {
                return Ok(out_of_bounds(st, "the call request"));
            };
            if range(out, 16).and_then(|r| mem_data.get(r)).is_none() {
                return Ok(out_of_bounds(st, "the id out-pointer"));
            }
            let request: CallRequest = match postcard::from_bytes(bytes) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(
                        st.refuse(status::BAD_REQUEST, format!("malformed call request: {e}"))
                    );
                }
            };
            let mut used = Vec::new();
            for a in &request.args {
                match a {
                    abi::CallArg::Value { refs, .. } => used.extend_from_slice(refs),
                    abi::CallArg::Object(id) => used.push(*id),
                }
            }
            try_status!(st.check_granted(&used));
            // At most `max_calls_per_task` unfinished calls per task (finished ones are
            // forgotten when the list is full).
            let limit = node.config.max_calls_per_task;
            if st.children.len() as u64 >= limit {
                st.children.retain(|id| {
                    matches!(
                        node.objects.state(*id),
                        Some(crate::objects::ObjectState::Pending)
                    )
                });
                if st.children.len() as u64 >= limit {
                    let e = crate::error::CallError::Overloaded {
                        pending: st.children.len() as u64,
                        limit,
                        scope: "made by this task",
                    };
                    return Ok(st.refuse(status::HOST_ERROR, e.to_string()));
                }
            }
            // The task's grants end with it; the nested task takes counts of its own.
            for id in &used {
                node.objects.retain(*id);
            }
            let module = request.module.unwrap_or(st.module);
            match node.submit(module, &request.function, request.args, CallOrigin::Guest) {
                Ok(id) => {
                    st.children.push(id);
                    // `submit` took one count for the caller's handle; the task's grant owns it.
                    st.granted.insert(id);
                    write_guest(mem_data, out, &id.0);
                    Ok(status::OK)
                }
                Err(e) => {
                    let code = match e {
                        crate::error::CallError::UnknownFunction { .. } => status::UNKNOWN_FUNCTION,
                        crate::error::CallError::ModuleNotLoaded { .. } => status::UNKNOWN_FUNCTION,
                        crate::error::CallError::Overloaded { .. } => status::HOST_ERROR,
                        _ => status::BAD_REQUEST,
                    };
                    Ok(st.refuse(code, e.to_string()))
                }
            }
        },
    )?;

    l.func_wrap_async(
        m,
        abi::import::WAIT,
        |mut caller: Caller<'_, TaskState>,
         (ids_ptr, count, num_ready, timeout_ms, out): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                let mem = try_status!(memory(&mut caller));
                let (mem_data, st) = mem.data_and_store_mut(&mut caller);
                let node = try_status!(node_of(st));
                if count as u32 > MAX_WAIT_IDS {
                    return Ok(st.refuse(
                        status::BAD_REQUEST,
                        format!("wait takes at most {MAX_WAIT_IDS} ids"),
                    ));
                }
                let Some(ids) = guest_ids(mem_data, ids_ptr, count) else {
                    return Ok(out_of_bounds(st, "the id list"));
                };
                try_status!(st.check_granted(&ids));
                st.pause_clock();
                let flags = {
                    let _waiting = node.guest_waiting();
                    node.objects
                        .wait_many(
                            &ids,
                            num_ready as u32 as usize,
                            timeout(timeout_ms),
                            WaitFlags::All,
                        )
                        .await
                };
                let (mem_data, st) = mem.data_and_store_mut(&mut caller);
                st.resume_clock();
                let bytes: Vec<u8> = flags.iter().map(|&f| f as u8).collect();
                if !write_guest(mem_data, out, &bytes) {
                    return Ok(out_of_bounds(st, "the ready flags"));
                }
                Ok(flags.iter().filter(|&&f| f).count() as i32)
            })
        },
    )?;

    l.func_wrap(
        m,
        abi::import::BUFFER,
        |mut caller: Caller<'_, TaskState>,
         source: i32,
         index: i32,
         out: i32|
         -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            if range(out, 12).and_then(|r| mem_data.get(r)).is_none() {
                return Ok(out_of_bounds(st, "the buffer info out-pointer"));
            }
            let object = try_status!(buffer_source(st, source));
            let Some(b) = object.layout().buffers.get(index as u32 as usize).copied() else {
                return Ok(st.refuse(
                    status::BAD_REQUEST,
                    format!("the object has no buffer {index}"),
                ));
            };
            let Ok(len) = u32::try_from(b.len) else {
                return Ok(st.refuse(
                    status::BAD_REQUEST,
                    format!("a {}-byte buffer does not fit in a 32-bit guest", b.len),
                ));
            };
            let mut info = abi::BufferInfo {
                ptr: 0,
                len,
                handle: 0,
            };
            let mut mapped = 0;
            if b.len >= st.map_threshold.max(crate::store::alloc::PAGE) {
                match Windows::map(
                    &mut caller,
                    |s: &mut TaskState| &mut s.windows,
                    mem,
                    &object,
                    index as u32 as usize,
                ) {
                    Ok((ptr, handle)) => {
                        info.ptr = ptr;
                        info.handle = handle;
                        mapped = 1;
                    }
                    Err(why) => tracing::debug!(
                        target: "ferry::store",
                        "copying a {}-byte buffer into the guest instead of mapping it: {why}",
                        b.len
                    ),
                }
            }
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            if !write_guest(mem_data, out, &info.to_bytes()) {
                return Ok(out_of_bounds(st, "the buffer info out-pointer"));
            }
            Ok(mapped)
        },
    )?;

    l.func_wrap(
        m,
        abi::import::READ_BUFFER,
        |mut caller: Caller<'_, TaskState>,
         source: i32,
         index: i32,
         dst: i32|
         -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let object = try_status!(buffer_source(st, source));
            let Some(bytes) = object.buffer(index as u32 as usize) else {
                return Ok(st.refuse(
                    status::BAD_REQUEST,
                    format!("the object has no buffer {index}"),
                ));
            };
            if !write_guest(mem_data, dst, bytes) {
                return Ok(out_of_bounds(st, "the buffer's destination"));
            }
            Ok(status::OK)
        },
    )?;

    l.func_wrap(
        m,
        abi::import::RELEASE_BUFFER,
        |mut caller: Caller<'_, TaskState>, handle: i32| -> wasmtime::Result<i32> {
            let st = caller.data_mut();
            if st.windows.release(handle as u32) {
                Ok(status::OK)
            } else {
                Ok(st.refuse(
                    status::BAD_REQUEST,
                    format!("no mapped buffer has handle {handle}"),
                ))
            }
        },
    )?;

    l.func_wrap(
        m,
        abi::import::RELEASE,
        |mut caller: Caller<'_, TaskState>, id_ptr: i32| -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let Some(id) = guest_ids(mem_data, id_ptr, 1).and_then(|v| v.first().copied()) else {
                return Ok(out_of_bounds(st, "the id"));
            };
            // Handles dropped after the result was handed over: the task's counts go when it
            // completes, after the result has taken its own on the refs it contains.
            if st.result.is_some() || st.raw_result.is_some() {
                return Ok(status::OK);
            }
            if !st.granted.remove(&id) {
                return Ok(st.refuse(
                    status::INVALID_REF,
                    format!("object {id} is not held by this task"),
                ));
            }
            let node = try_status!(node_of(st));
            node.objects.release(id);
            Ok(status::OK)
        },
    )?;

    l.func_wrap(
        m,
        abi::import::RESULT,
        |mut caller: Caller<'_, TaskState>,
         data: i32,
         len: i32,
         refs: i32,
         nrefs: i32,
         bufs: i32,
         nbufs: i32|
         -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            if st.result.is_some() || st.raw_result.is_some() {
                return Ok(st.refuse(status::BAD_REQUEST, "the result was already set".into()));
            }
            let Some(ids) = guest_ids(mem_data, refs, nrefs) else {
                let code = out_of_bounds(st, "the result's ref list");
                return Ok(st.refuse_result(code));
            };
            if let Err(code) = st.check_granted(&ids) {
                return Ok(st.refuse_result(code));
            }
            let Some(bytes) = guest_bytes(mem_data, data, len) else {
                let code = out_of_bounds(st, "the result");
                return Ok(st.refuse_result(code));
            };
            if nbufs as u32 > MAX_BUFFERS {
                let code = st.refuse(
                    status::BAD_REQUEST,
                    format!("a value may have at most {MAX_BUFFERS} buffers"),
                );
                return Ok(st.refuse_result(code));
            }
            let Some(buffers) = guest_buffers(mem_data, bufs, nbufs) else {
                let code = out_of_bounds(st, "a buffer of the result");
                return Ok(st.refuse_result(code));
            };
            match &st.node {
                None if buffers.is_empty() => st.raw_result = Some(bytes.to_vec()),
                None => {
                    let code =
                        st.refuse(status::BAD_REQUEST, "a manifest cannot have buffers".into());
                    return Ok(st.refuse_result(code));
                }
                Some(node) => match seal_from_guest(node, mem_data, bytes, &buffers) {
                    Ok(sealed) => st.result = Some((sealed, ids)),
                    Err(e) => {
                        let code = st.refuse(status::STORE_FULL, e.to_string());
                        return Ok(st.refuse_result(code));
                    }
                },
            }
            Ok(status::OK)
        },
    )?;

    l.func_wrap(
        m,
        abi::import::FAIL,
        |mut caller: Caller<'_, TaskState>,
         kind: i32,
         msg: i32,
         msg_len: i32,
         cause: i32,
         cause_len: i32|
         -> wasmtime::Result<i32> {
            let mem = try_status!(memory(&mut caller));
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let mut message = guest_string(mem_data, msg, msg_len)
                .unwrap_or_else(|| "<the guest's message was out of bounds>".into());
            let cause = match guest_bytes(mem_data, cause, cause_len) {
                Some(c) if c.len() <= MAX_CAUSE => c.to_vec(),
                Some(c) => {
                    message.push_str(&format!(
                        " (its {}-byte error value was dropped: larger than {MAX_CAUSE} bytes)",
                        c.len()
                    ));
                    Vec::new()
                }
                None => Vec::new(),
            };
            if st.failure.is_none() {
                st.failure = Some(GuestFailure {
                    kind,
                    message,
                    cause,
                });
            }
            Ok(status::OK)
        },
    )?;

    l.func_wrap(
        m,
        abi::import::LOG,
        |mut caller: Caller<'_, TaskState>, level: i32, msg: i32, len: i32| {
            let Ok(mem) = memory(&mut caller) else {
                return;
            };
            let (mem_data, st) = mem.data_and_store_mut(&mut caller);
            let Some(text) = guest_string(mem_data, msg, len) else {
                return;
            };
            let function = st.function.as_str();
            match level {
                abi::log_level::ERROR => {
                    tracing::error!(target: "ferry::guest", function, "{text}")
                }
                abi::log_level::WARN => tracing::warn!(target: "ferry::guest", function, "{text}"),
                abi::log_level::DEBUG => {
                    tracing::debug!(target: "ferry::guest", function, "{text}")
                }
                _ => tracing::info!(target: "ferry::guest", function, "{text}"),
            }
        },
    )?;

    Ok(l)
}

/// The names of the host functions, for checking a module's imports.
pub const IMPORTS: &[&str] = &[
    abi::import::PUT,
    abi::import::GET,
    abi::import::TAKE,
    abi::import::CALL,
    abi::import::WAIT,
    abi::import::RESULT,
    abi::import::FAIL,
    abi::import::LOG,
    abi::import::BUFFER,
    abi::import::READ_BUFFER,
    abi::import::RELEASE_BUFFER,
    abi::import::RELEASE,
];
