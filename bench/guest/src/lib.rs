//! Functions measured by `ferry-bench`.

use ferry_guest::prelude::*;

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

// The functions of Ray's `ray microbenchmark` (`ray/_private/ray_perf.py`), with the same
// workloads.

/// Ray's `small_value`: returns the two bytes `b"ok"`.
#[remote]
pub fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

/// Ray's `do_put_small`: 100 puts of a small integer, each ref dropped at once.
#[remote]
pub fn do_put_small() -> Result<(), Error> {
    for _ in 0..100 {
        drop(ferry_guest::put(&0u64)?);
    }
    Ok(())
}

/// Ray's `do_put`: ten puts of a fresh array of 10 Mi zeros (`np.zeros(10 * 1024 * 1024,
/// dtype=np.int64)`, 80 MiB).
#[remote]
pub fn do_put() -> Result<(), Error> {
    for _ in 0..10 {
        let array = ferry_guest::Buffer::new(vec![0i64; 10 * 1024 * 1024]);
        drop(ferry_guest::put(&array)?);
    }
    Ok(())
}

/// Ray's `create_object_containing_ref`: puts the integer 1 ten thousand times and returns
/// the refs.
#[remote]
pub fn create_object_containing_ref() -> Result<Vec<ObjectRef<u64>>, Error> {
    (0..10_000).map(|_| ferry_guest::put(&1u64)).collect()
}

/// Ray's `Actor.small_value_batch(n)`: submits `n` calls of [`small_value`] and gets them all.
#[remote]
pub fn small_value_batch(n: u32) -> Result<(), Error> {
    let refs = (0..n)
        .map(|_| ferry_guest::call(small_value::REMOTE, ()))
        .collect::<Result<Vec<_>, _>>()?;
    ferry_guest::get_many(&refs)?;
    Ok(())
}
