//! The quickstart's guest functions: plain Rust, marked with `#[remote]`.

use ferry_guest::prelude::*;

/// Adds two numbers.
#[remote]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Squares a number.
#[remote]
pub fn square(x: i64) -> i64 {
    x * x
}

/// Sums the objects behind `parts`. The refs arrive as refs (they are nested in a `Vec`), so
/// the function gets their values itself.
#[remote]
pub fn sum(parts: Vec<ObjectRef<i64>>) -> Result<i64, Error> {
    Ok(ferry_guest::get_many(&parts)?.into_iter().sum())
}

/// Squares every number in a nested task of its own, then adds the results.
#[remote]
pub fn sum_of_squares(xs: Vec<i64>) -> Result<i64, Error> {
    let squares = xs
        .into_iter()
        .map(|x| ferry_guest::call(square::REMOTE, (x,)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ferry_guest::get_many(&squares)?.into_iter().sum())
}

/// Divides, failing with a message on division by zero.
#[remote]
pub fn divide(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}
