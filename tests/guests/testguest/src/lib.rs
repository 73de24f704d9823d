//! Guest functions exercised by ferry's host tests: one per behaviour the host must handle.
#![allow(clippy::unwrap_used)]

use ferry_guest::prelude::*;
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
