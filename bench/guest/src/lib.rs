//! Functions measured by `ferry-bench`.

use ferry_guest::prelude::*;

/// Does nothing: measures the cost of a call itself.
#[remote]
pub fn noop() {}

/// Returns its argument: a call with one small value in and out.
#[remote]
pub fn echo(x: u64) -> u64 {
    x
}
