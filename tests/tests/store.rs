//! The object store in depth: out-of-band buffers, zero-copy views on the host, copy-on-write
//! mappings into guests (and their hazards), space reuse, spilling, and the store's figures.

use ferry::{Blob, Buffer, Client, GetError, ObjectLocation, ObjectRef, PutError, StorageKind};
use ferry_tests::{node_with_guest, settle, test_config, testguest_wasm};
use serde::{Deserialize, Serialize};

/// The test guest's `Matrix`, declared again on the driver side (same serde shape).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Matrix {
    rows: u32,
    cols: u32,
    data: Buffer<f32>,
    labels: Buffer<u64>,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn host_reads_buffers_in_place_and_views_pin_the_object() {
    let (_dir, client, _module) = node_with_guest();
    let bytes = pattern(3 << 20, 7);
    let r = client.put(&Blob::from(bytes.clone())).unwrap();
    let view: Blob = client.get_blocking(&r).unwrap();
    assert_eq!(view.storage_kind(), StorageKind::StoreView);
    assert_eq!(&*view, &bytes[..]);
    // A clone of a view shares it; writing to a view copies it and leaves the store alone.
    let mut copy = view.clone();
    assert_eq!(copy.storage_kind(), StorageKind::StoreView);
    copy.as_mut_slice()[0] ^= 0xff;
    assert_eq!(copy.storage_kind(), StorageKind::Owned);
    assert_eq!(client.get_blocking(&r).unwrap().as_slice(), &bytes[..]);

    let stats = client.stats().store;
    assert_eq!(stats.pinned_objects, 1, "{stats:?}");
    assert!(stats.pinned_bytes >= 3 << 20);
    // The view outlives the ref: the object's count is gone but its bytes stay pinned.
    drop(r);
    assert_eq!(&*view, &bytes[..]);
    assert!(client.stats().store.used >= 3 << 20);
    drop(view);
    assert_eq!(client.stats().store.used, 0);
    assert_eq!(client.stats().store.pinned_objects, 0);
}

#[test]
fn a_value_with_several_buffers_round_trips_through_guests() {
    let (_dir, client, module) = node_with_guest();
    let m: ObjectRef<Matrix> = module.call("make_matrix", (300u32, 500u32)).unwrap();
    let got: Matrix = client.get_blocking(&m).unwrap();
    assert_eq!((got.rows, got.cols), (300, 500));
    assert_eq!(got.data.len(), 150_000);
    assert_eq!(got.data[149_999], 149_999.0);
    assert_eq!(got.labels.as_slice(), (0..300).collect::<Vec<u64>>());
    assert_eq!(got.data.storage_kind(), StorageKind::StoreView);

    // Back into a guest: by ref, and by value from the driver.
    let expect = (
        (0..150_000u64).map(|i| i as f64).sum::<f64>(),
        (0..300u64).sum(),
    );
    let s: ObjectRef<(f64, u64)> = module.call("matrix_sum", (m.clone(),)).unwrap();
    assert_eq!(client.get_blocking(&s).unwrap(), expect);
    let s: ObjectRef<(f64, u64)> = module.call("matrix_sum", (got,)).unwrap();
    assert_eq!(client.get_blocking(&s).unwrap(), expect);
}

#[test]
fn large_buffers_are_mapped_into_guests_and_small_ones_copied() {
    let (_dir, client, module) = node_with_guest();
    for (len, mapped) in [(1000, false), (64 << 10, true), (5 << 20, true)] {
        let bytes = pattern(len, 3);
        let r = client.put(&Blob::from(bytes.clone())).unwrap();
        // As an argument (resolved by ref) ...
        let s: ObjectRef<(u64, bool)> = module.call("blob_sum", (r.clone(),)).unwrap();
        assert_eq!(
            client.get_blocking(&s).unwrap(),
            (byte_sum(&bytes), mapped),
            "{len}"
        );
        // ... and read by the guest itself.
        let s: ObjectRef<(u64, bool)> = module.call("get_blob_sum", (vec![r.clone()],)).unwrap();
        assert_eq!(
            client.get_blocking(&s).unwrap(),
            (byte_sum(&bytes), mapped),
            "{len}"
        );
        // A blob passed by value from the driver is stored once and read the same way.
        let s: ObjectRef<(u64, bool)> = module
            .call("blob_sum", (Blob::from(bytes.clone()),))
            .unwrap();
        assert_eq!(client.get_blocking(&s).unwrap(), (byte_sum(&bytes), mapped));
        // And a guest can pass one on to a nested call by value.
        let s: ObjectRef<u64> = module.call("nested_blob_sum", (r,)).unwrap();
        assert_eq!(client.get_blocking(&s).unwrap(), byte_sum(&bytes));
    }
    let (objects, used) = settle(&client);
    assert_eq!((objects, used), (0, 0), "mappings released their pins");
}

#[test]
fn a_guest_writing_to_its_mapped_view_never_changes_the_stored_object() {
    let (_dir, client, module) = node_with_guest();
    let bytes = pattern(2 << 20, 11);
    let r = client.put(&Blob::from(bytes.clone())).unwrap();
    for _ in 0..3 {
        let s: ObjectRef<(u64, bool)> = module.call("scribble", (r.clone(), 0xffu8)).unwrap();
        assert_eq!(
            client.get_blocking(&s).unwrap(),
            (0xff * bytes.len() as u64, true),
            "the guest saw its own writes in a mapped view"
        );
        let stored: Blob = client.get_blocking(&r).unwrap();
        assert_eq!(&*stored, &bytes[..], "the stored object changed");
        // The next guest to map it sees the original bytes too.
        let s: ObjectRef<(u64, bool)> = module.call("blob_sum", (r.clone(),)).unwrap();
        assert_eq!(client.get_blocking(&s).unwrap(), (byte_sum(&bytes), true));
    }
}

/// DESIGN.md's hazard: resetting a pooled slot restores a `MAP_PRIVATE` window's file bytes.
/// Whatever way a task ends (released, leaked, trapped), the instances that reuse its slot
/// must find fresh memory where its windows were.
#[test]
fn recycled_instances_never_see_another_tasks_mapped_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // One worker and a small pool: later tasks land in the slots earlier ones used.
    config.workers = 1;
    config.max_instances = 2;
    let client = Client::embedded_with(config).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    let r = client.put(&Blob::from(vec![0xabu8; 4 << 20])).unwrap();
    for round in 0..4 {
        match round % 3 {
            0 => {
                let s: ObjectRef<(u64, bool)> = module.call("blob_sum", (r.clone(),)).unwrap();
                assert!(client.get_blocking(&s).unwrap().1);
            }
            1 => {
                let s: ObjectRef<bool> = module.call("leak_mapping", (r.clone(),)).unwrap();
                assert!(client.get_blocking(&s).unwrap());
            }
            _ => {
                let s: ObjectRef<u64> = module.call("map_then_trap", (r.clone(),)).unwrap();
                assert!(client.get_blocking(&s).is_err());
            }
        }
        for _ in 0..4 {
            // 16 MiB of fresh pages covers every window the 4 MiB mapping could have used.
            let clean: ObjectRef<bool> = module.call("fresh_memory_is_zero", (256u32,)).unwrap();
            assert!(
                client.get_blocking(&clean).unwrap(),
                "round {round}: a new instance saw bytes of an earlier task's mapping"
            );
        }
    }
    drop(r);
    assert_eq!(settle(&client), (0, 0), "windows released their pins");
    // The store file is never truncated or shrunk while mapped.
    assert_eq!(
        client.store_file_len().unwrap(),
        client.stats().store.capacity
    );
}

#[test]
fn freed_space_is_reused() {
    let (_dir, client, _module) = node_with_guest();
    let first = client.put(&Blob::from(vec![1u8; 8 << 20])).unwrap();
    let used = client.stats().store.used;
    drop(first);
    assert_eq!(client.stats().store.used, 0);
    // Many more bytes than the store holds, one object at a time: all fit in the reused space.
    for i in 0..40u8 {
        let r = client.put(&Blob::from(vec![i; 8 << 20])).unwrap();
        assert_eq!(client.stats().store.used, used);
        assert_eq!(client.location(&r), Some(ObjectLocation::Memory));
    }
    assert_eq!(client.stats().store.spill.unwrap().spilled_total, 0);
}

fn spilling_node(store_mib: u64, spill_mib: Option<u64>) -> (tempfile::TempDir, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store_capacity = store_mib << 20;
    config.spill_capacity = spill_mib.map(|m| m << 20);
    let client = Client::embedded_with(config).unwrap();
    (dir, client)
}

fn spill_files(dir: &std::path::Path) -> usize {
    let spill = dir.join("spill");
    std::fs::read_dir(&spill)
        .map(|nodes| {
            nodes
                .flatten()
                .map(|n| std::fs::read_dir(n.path()).map_or(0, |f| f.count()))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn objects_spill_under_memory_pressure_and_come_back_identical() {
    let (dir, client) = spilling_node(16, None);
    let blobs: Vec<Vec<u8>> = (0..24).map(|i| pattern(1 << 20, i)).collect();
    let refs: Vec<ObjectRef<Blob>> = blobs
        .iter()
        .map(|b| client.put(&Blob::from(b.clone())).unwrap())
        .collect();
    let stats = client.stats().store;
    let spill = stats.spill.unwrap();
    assert!(spill.objects >= 8, "{stats:?}");
    assert_eq!(spill_files(dir.path()) as u64, spill.objects);
    assert_eq!(client.location(&refs[0]), Some(ObjectLocation::Disk));
    // Every object reads back byte for byte, the spilled ones transparently.
    for _ in 0..2 {
        for (r, b) in refs.iter().zip(&blobs) {
            let got: Blob = client.get_blocking(r).unwrap();
            assert_eq!(&*got, &b[..]);
        }
    }
    assert!(client.stats().store.spill.unwrap().restored_total >= 8);
    // Freeing objects deletes their spill files.
    drop(refs);
    let stats = client.stats().store;
    assert_eq!(
        (stats.used, stats.spill.unwrap().objects),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.spill.unwrap().bytes, 0);
    assert_eq!(spill_files(dir.path()), 0);
}

#[test]
fn pinned_objects_are_never_spilled() {
    let (_dir, client) = spilling_node(16, None);
    let pinned = client.put(&Blob::from(pattern(4 << 20, 1))).unwrap();
    let view: Blob = client.get_blocking(&pinned).unwrap();
    let mut others = Vec::new();
    for i in 0..30 {
        others.push(client.put(&Blob::from(pattern(1 << 20, i))).unwrap());
        assert_eq!(client.location(&pinned), Some(ObjectLocation::Memory));
    }
    assert!(client.stats().store.spill.unwrap().spilled_total > 0);
    assert_eq!(&*view, &pattern(4 << 20, 1)[..]);
    drop(view);
    // Unpinned, it may go like any other.
    for i in 0..30 {
        others.push(client.put(&Blob::from(pattern(1 << 20, i))).unwrap());
    }
    assert_eq!(client.location(&pinned), Some(ObjectLocation::Disk));
    let back: Blob = client.get_blocking(&pinned).unwrap();
    assert_eq!(&*back, &pattern(4 << 20, 1)[..]);
}

#[test]
fn when_memory_and_disk_are_full_put_fails_cleanly_and_nothing_is_lost() {
    let (_dir, client) = spilling_node(8, Some(8));
    let mut kept = Vec::new();
    let err = loop {
        let i = kept.len();
        assert!(i < 100, "the store never filled");
        match client.put(&Blob::from(pattern(1 << 20, i as u8))) {
            Ok(r) => kept.push(r),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, PutError::Store(ferry::StoreError::Full { .. })),
        "{err}"
    );
    assert!(kept.len() >= 12, "{} objects fit", kept.len());
    for (i, r) in kept.iter().enumerate() {
        let got: Blob = client.get_blocking(r).unwrap();
        assert_eq!(&*got, &pattern(1 << 20, i as u8)[..]);
    }
    // The node still works once space is freed.
    kept.truncate(2);
    let r = client.put(&Blob::from(vec![9u8; 1 << 20])).unwrap();
    assert_eq!(client.get_blocking(&r).unwrap().len(), 1 << 20);
}

#[test]
fn concurrent_puts_gets_and_frees_from_many_threads() {
    let (_dir, client) = spilling_node(24, None);
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let client = client.clone();
            s.spawn(move || {
                let mut live = Vec::new();
                for i in 0..40usize {
                    let len = (i * 7919 + t as usize * 104_729) % (500 << 10) + 1;
                    let bytes = pattern(len, t.wrapping_add(i as u8));
                    let r = client.put(&Blob::from(bytes.clone())).unwrap();
                    live.push((r, bytes));
                    if i % 3 == 0 {
                        let (r, bytes) = live.swap_remove(i % live.len());
                        let got: Blob = client.get_blocking(&r).unwrap();
                        assert_eq!(&*got, &bytes[..]);
                    }
                }
                for (r, bytes) in &live {
                    let got: Blob = client.get_blocking(r).unwrap();
                    assert_eq!(&*got, &bytes[..]);
                }
            });
        }
    });
    let stats = client.stats().store;
    assert_eq!(stats.used, 0, "{stats:?}");
    assert_eq!(stats.spill.unwrap().objects, 0, "{stats:?}");
}

#[test]
fn spilled_objects_feed_guests() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store_capacity = 16 << 20;
    let client = Client::embedded_with(config).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    let blobs: Vec<Vec<u8>> = (0..20).map(|i| pattern(1 << 20, i)).collect();
    let refs: Vec<ObjectRef<Blob>> = blobs
        .iter()
        .map(|b| client.put(&Blob::from(b.clone())).unwrap())
        .collect();
    assert_eq!(client.location(&refs[0]), Some(ObjectLocation::Disk));
    for (r, b) in refs.iter().zip(&blobs) {
        let s: ObjectRef<(u64, bool)> = module.call("blob_sum", (r.clone(),)).unwrap();
        assert_eq!(client.get_blocking(&s).unwrap(), (byte_sum(b), true));
    }
}

#[test]
fn a_blob_outside_ferry_is_a_clear_error_not_lost_bytes() {
    let err = postcard::to_allocvec(&Blob::from(vec![1, 2, 3])).unwrap_err();
    assert!(matches!(err, postcard::Error::SerdeSerCustom), "{err:?}");
    let (_dir, client, _module) = node_with_guest();
    // A driver decoding a blob placeholder from an object that has no such buffer.
    let r = client.put(&7u32).unwrap();
    let err = client.get_blocking::<Blob>(&r.cast()).unwrap_err();
    assert!(matches!(err, GetError::Decode { .. }), "{err}");
}
