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

/// Receives a blob (mapped or copied, depending on the node) and reads one byte of each page:
/// measures getting a large buffer into a guest, not computing on it.
#[remote]
pub fn touch_blob(data: ferry_guest::Blob) -> u64 {
    data.iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum::<u64>()
        + data.len() as u64
}

/// Receives a blob and returns its length without reading it: measures only getting it into
/// the guest.
#[remote]
pub fn blob_len(data: ferry_guest::Blob) -> u64 {
    data.len() as u64
}
