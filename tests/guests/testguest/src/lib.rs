//! Guest functions exercised by ferry's host tests: one per behaviour the host must handle.
#![allow(clippy::unwrap_used)]

use ferry_guest::prelude::*;
use ferry_guest::{Blob, Buffer, StorageKind};
use serde::{Deserialize, Serialize};

#[remote]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[remote]
pub fn noop() {}

/// Ray's `echo`: a top-level ref argument arrives as its value.
#[remote]
pub fn echo(x: i64) -> i64 {
    x
}

/// Ray's `echo_and_get`: refs nested in an argument stay refs; the guest gets them itself.
#[remote]
pub fn echo_and_get(xs: Vec<ObjectRef<i64>>) -> Result<Vec<i64>, Error> {
    ferry_guest::get_many(&xs)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    Circle { center: Point, radius: f64 },
    Polygon(Vec<Point>),
    Empty,
}

#[remote]
pub fn area(shape: Shape) -> f64 {
    match shape {
        Shape::Circle { radius, .. } => std::f64::consts::PI * radius * radius,
        Shape::Polygon(ps) => {
            let n = ps.len();
            let twice: f64 = (0..n)
                .map(|i| {
                    let (a, b) = (&ps[i], &ps[(i + 1) % n]);
                    a.x * b.y - b.x * a.y
                })
                .sum();
            twice.abs() / 2.0
        }
        Shape::Empty => 0.0,
    }
}

#[remote]
pub fn greet(name: String, times: Option<u32>) -> Vec<String> {
    (0..times.unwrap_or(1))
        .map(|i| format!("hello {name} #{i}"))
        .collect()
}

/// A struct holding refs: stored inside an object, they keep their targets alive.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bundle {
    pub label: String,
    pub parts: Vec<ObjectRef<i64>>,
}

/// Puts each value and returns the refs inside a struct.
#[remote]
pub fn make_bundle(label: String, values: Vec<i64>) -> Result<Bundle, Error> {
    let parts = values
        .iter()
        .map(ferry_guest::put)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bundle { label, parts })
}

#[remote]
pub fn sum_bundle(bundle: Bundle) -> Result<i64, Error> {
    Ok(ferry_guest::get_many(&bundle.parts)?.into_iter().sum())
}

/// Nested tasks: calls `add` through the typed handle and waits for the results.
#[remote]
pub fn sum_by_tasks(values: Vec<i64>) -> Result<i64, Error> {
    let mut acc = ferry_guest::put(&0i64)?;
    for v in values {
        acc = ferry_guest::call(add::REMOTE, (acc, v))?;
    }
    acc.get()
}

/// Nested task by name, returning the nested ref itself (a ref inside the result).
#[remote]
pub fn spawn_add(a: i64, b: i64) -> Result<ObjectRef<i64>, Error> {
    ferry_guest::call_by_name(None, "add", (a, b))
}

/// Recursion through nested tasks.
#[remote]
pub fn fib(n: u32) -> Result<u64, Error> {
    if n < 2 {
        return Ok(n as u64);
    }
    let a = ferry_guest::call(fib::REMOTE, (n - 1,))?;
    let b = ferry_guest::call(fib::REMOTE, (n - 2,))?;
    Ok(a.get()? + b.get()?)
}

#[remote]
pub fn wait_first(refs: Vec<ObjectRef<i64>>, n: u32) -> Result<(u32, u32), Error> {
    let (ready, pending) = ferry_guest::wait(refs, n as usize, None)?;
    Ok((ready.len() as u32, pending.len() as u32))
}

#[remote]
pub fn get_with_timeout(r: Vec<ObjectRef<i64>>, ms: u64) -> Result<i64, Error> {
    ferry_guest::get_timeout(&r[0], std::time::Duration::from_millis(ms))
}

#[remote]
pub fn call_missing() -> Result<i64, Error> {
    let r: ObjectRef<i64> = ferry_guest::call_by_name(None, "no_such_function", ())?;
    r.get()
}

/// Reads an object through a ref the task was never given (its id guessed exactly).
#[remote]
pub fn forge_ref(owner: u64, seq: u64) -> Result<i64, Error> {
    let forged: ObjectRef<i64> = ObjectRef::adopt(ferry_guest::ObjectId::new(owner, seq));
    forged.get()
}

/// `Result` spelled with a path, for the typed-handle signature check.
#[remote]
pub fn checked_half(x: i64) -> std::result::Result<i64, String> {
    if x % 2 == 0 {
        Ok(x / 2)
    } else {
        Err(format!("{x} is odd"))
    }
}

#[remote]
pub fn panics(message: String) -> i64 {
    panic!("guest panicked: {message}")
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum MathError {
    DivideByZero { numerator: i64 },
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MathError::DivideByZero { numerator } => write!(f, "cannot divide {numerator} by zero"),
        }
    }
}

#[remote]
pub fn divide(a: i64, b: i64) -> Result<i64, MathError> {
    if b == 0 {
        Err(MathError::DivideByZero { numerator: a })
    } else {
        Ok(a / b)
    }
}

#[remote]
pub fn traps() -> i64 {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    unreachable!()
}

#[remote]
pub fn spin_forever() -> u64 {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Allocates `mib` MiB and touches it.
#[remote]
pub fn allocate(mib: u32) -> u64 {
    let v = vec![1u8; mib as usize * 1024 * 1024];
    v.iter().map(|&b| b as u64).sum()
}

#[remote]
pub fn bytes_len(data: Vec<u8>) -> u64 {
    data.len() as u64
}

#[remote]
pub fn make_bytes(len: u32, fill: u8) -> Vec<u8> {
    vec![fill; len as usize]
}

#[remote]
pub fn double(x: u64) -> u64 {
    x * 2
}

#[remote]
pub fn shapes(n: u32) -> Vec<Shape> {
    (0..n)
        .map(|i| match i % 2 {
            0 => Shape::Empty,
            _ => Shape::Circle {
                center: Point { x: 1.0, y: 2.0 },
                radius: i as f64,
            },
        })
        .collect()
}

// ---- Out-of-band buffers ----

/// Sums a blob's bytes; says whether the host mapped it into memory (no copy).
#[remote]
pub fn blob_sum(data: Blob) -> (u64, bool) {
    let sum = data.iter().map(|&b| u64::from(b)).sum();
    (sum, data.storage_kind() == StorageKind::GuestMapping)
}

/// Gets a blob from inside the guest; sums it and says whether it was mapped. (The ref is in
/// a `Vec` so that it stays a ref: a top-level ref would be resolved by value.)
#[remote]
pub fn get_blob_sum(r: Vec<ObjectRef<Blob>>) -> Result<(u64, bool), Error> {
    let data = r[0].get()?;
    Ok(blob_sum_inner(&data))
}

fn blob_sum_inner(data: &Blob) -> (u64, bool) {
    let sum = data.iter().map(|&b| u64::from(b)).sum();
    (sum, data.storage_kind() == StorageKind::GuestMapping)
}

/// Overwrites every byte of its (possibly mapped) view with `fill` and returns the new sum.
#[remote]
pub fn scribble(mut data: Blob, fill: u8) -> (u64, bool) {
    let mapped = data.storage_kind() == StorageKind::GuestMapping;
    data.as_mut_slice().fill(fill);
    (blob_sum_inner(&data).0, mapped)
}

/// Maps a blob and leaks the mapping (never releases it): the host must still clean up.
#[remote]
pub fn leak_mapping(data: Blob) -> bool {
    let mapped = data.storage_kind() == StorageKind::GuestMapping;
    std::mem::forget(data);
    mapped
}

/// Maps a blob, then traps.
#[remote]
pub fn map_then_trap(data: Blob) -> u64 {
    let first = u64::from(data.first().copied().unwrap_or(0));
    if first != 1234 {
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        unreachable!("map_then_trap");
    }
    first
}

/// Grows memory by `pages` Wasm pages and checks every new byte is zero (a recycled instance
/// must never see an earlier task's mapped object).
#[cfg(target_arch = "wasm32")]
#[remote]
pub fn fresh_memory_is_zero(pages: u32) -> bool {
    let old = core::arch::wasm32::memory_grow(0, pages as usize);
    assert!(old != usize::MAX, "memory.grow failed");
    let start = old * 65536;
    let len = pages as usize * 65536;
    // SAFETY: the range was just added to this instance's memory by `memory.grow`; nothing
    // else uses it.
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
    bytes.iter().all(|&b| b == 0)
}

/// A matrix with its numbers out of band.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: u32,
    pub cols: u32,
    pub data: Buffer<f32>,
    pub labels: Buffer<u64>,
}

/// Builds a `rows x cols` matrix whose element `i` is `i as f32`.
#[remote]
pub fn make_matrix(rows: u32, cols: u32) -> Matrix {
    let n = rows as usize * cols as usize;
    Matrix {
        rows,
        cols,
        data: Buffer::new((0..n).map(|i| i as f32).collect()),
        labels: Buffer::new((0..rows as u64).collect()),
    }
}

/// Sums a matrix's elements and labels.
#[remote]
pub fn matrix_sum(m: Matrix) -> (f64, u64) {
    (
        m.data.iter().map(|&x| f64::from(x)).sum(),
        m.labels.iter().sum(),
    )
}

/// Passes a blob to a nested call by value (the SDK stores it as an object of its own).
#[remote]
pub fn nested_blob_sum(data: Blob) -> Result<u64, Error> {
    let r = ferry_guest::call(blob_sum::REMOTE, (data,))?;
    Ok(r.get()?.0)
}

/// Puts `n` blobs of `size` bytes, dropping each ref at once: the store needs room for only
/// one at a time, because dropping a guest's last handle frees the object.
#[remote]
pub fn put_and_drop(n: u32, size: u32) -> Result<u32, Error> {
    for i in 0..n {
        let blob = ferry_guest::Blob::new(vec![i as u8; size as usize]);
        drop(ferry_guest::put(&blob)?);
    }
    Ok(n)
}

/// A clone keeps an object alive after the original handle drops, and an object holding a
/// ref keeps it alive after every handle drops (getting the holder hands it back).
#[remote]
pub fn handles_outlive_each_other(x: i64) -> Result<i64, Error> {
    let a = ferry_guest::put(&x)?;
    let b = a.clone();
    drop(a);
    let holder = ferry_guest::put(&vec![b.clone()])?;
    drop(b);
    let inner: Vec<ObjectRef<i64>> = ferry_guest::get(&holder)?;
    ferry_guest::get(&inner[0])
}

/// Forks itself twice, forever: a fork bomb, for the limits on unfinished calls.
#[remote]
pub fn fork_bomb(depth: u32) -> Result<u64, Error> {
    let a = ferry_guest::call(fork_bomb::REMOTE, (depth + 1,))?;
    let b = ferry_guest::call(fork_bomb::REMOTE, (depth + 1,))?;
    Ok(a.get()? + b.get()?)
}

/// Makes `n` calls that each wait for `gate[0]` (so none finishes while this task runs).
#[remote]
pub fn fan_out(gate: Vec<ObjectRef<i64>>, n: u32) -> Result<u32, Error> {
    let mut made = Vec::new();
    for _ in 0..n {
        made.push(ferry_guest::call(add::REMOTE, (gate[0].clone(), 1i64))?);
    }
    Ok(made.len() as u32)
}
