//! Local reference counting: an object is freed when the last reference to it is gone
//! (driver handles, refs inside other objects, refs held by pending tasks and running guests).

use ferry::ObjectRef;
use ferry_testguest::Bundle;
use ferry_tests::{node_with_guest, settle};

#[tokio::test]
async fn dropping_the_last_handle_frees_the_object() {
    let (_d, client, _m) = node_with_guest();
    let x = client.put(&vec![1u8; 10_000]).unwrap();
    let id = x.id();
    let y = x.clone();
    assert_eq!(client.ref_count(&x), Some(2));
    drop(x);
    assert!(client.exists(id));
    assert_eq!(client.get(&y).await.unwrap().len(), 10_000);
    drop(y);
    assert!(!client.exists(id));
    assert_eq!(client.stats().store.used, 0);
}

#[tokio::test]
async fn an_object_holding_refs_keeps_them_alive() {
    let (_d, client, _m) = node_with_guest();
    let inner = client.put(&5i64).unwrap();
    let inner_id = inner.id();
    let outer = client.put(&vec![inner.clone()]).unwrap();
    drop(inner);
    assert!(
        client.exists(inner_id),
        "the outer object holds the inner one"
    );
    // Decoding the outer object yields live handles.
    let got: Vec<ObjectRef<i64>> = client.get(&outer).await.unwrap();
    drop(outer);
    assert!(client.exists(inner_id), "the decoded handle holds it");
    assert_eq!(client.get(&got[0]).await.unwrap(), 5);
    drop(got);
    assert!(!client.exists(inner_id));
    assert_eq!(client.stats().objects.objects, 0);
}

#[tokio::test]
async fn pending_tasks_hold_their_arguments() {
    let (_d, client, module) = node_with_guest();
    let fib = module.function(ferry_testguest::fib::REMOTE).unwrap();
    let double = module.function(ferry_testguest::double::REMOTE).unwrap();
    // `slow` is still pending when its only driver handle goes; the next task must keep it.
    let slow = fib.call((11,)).unwrap();
    let r = double.call((&slow,)).unwrap();
    drop(slow);
    assert_eq!(client.get(&r).await.unwrap(), 178);
    drop(r);
    assert_eq!(settle(&client), (0, 0));
}

#[tokio::test]
async fn objects_guests_create_are_freed_with_what_holds_them() {
    let (_d, client, module) = node_with_guest();
    let make = module
        .function(ferry_testguest::make_bundle::REMOTE)
        .unwrap();
    let r = make.call(("x".to_string(), vec![1, 2, 3])).unwrap();
    let bundle: Bundle = client.get(&r).await.unwrap();
    let part_ids: Vec<_> = bundle.parts.iter().map(ObjectRef::id).collect();
    drop(r);
    assert!(part_ids.iter().all(|&id| client.exists(id)));
    drop(bundle);
    assert!(part_ids.iter().all(|&id| !client.exists(id)));
    assert_eq!(settle(&client), (0, 0));
}

#[tokio::test]
async fn a_guest_dropping_its_last_handle_frees_the_object() {
    // No spilling: 24 puts of 8 MiB through a 64 MiB store only fit if each is freed when the
    // guest drops its ref (as in Ray), not when the call ends.
    let dir = tempfile::tempdir().unwrap();
    let mut config = ferry_tests::test_config(dir.path());
    config.spill_dir = None;
    let client = ferry::Client::embedded_with(config).unwrap();
    let module = client.load(&ferry_tests::testguest_wasm()).unwrap();
    let put_and_drop = module
        .function(ferry_testguest::put_and_drop::REMOTE)
        .unwrap();
    let r = put_and_drop.call((24u32, 8u32 << 20)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 24);
    drop(r);

    // Clones and holders keep what they refer to; a released id can be handed back.
    let handles = module
        .function(ferry_testguest::handles_outlive_each_other::REMOTE)
        .unwrap();
    let r = handles.call((42i64,)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 42);
    drop(r);
    assert_eq!(settle(&client), (0, 0));
}

#[tokio::test]
async fn a_dropped_result_is_freed_when_its_task_finishes() {
    let (_d, client, module) = node_with_guest();
    let sum = module
        .function(ferry_testguest::sum_by_tasks::REMOTE)
        .unwrap();
    for _ in 0..20 {
        drop(sum.call((vec![1, 2, 3],)).unwrap());
    }
    let fib = module.function(ferry_testguest::fib::REMOTE).unwrap();
    drop(fib.call((10,)).unwrap());
    // Every intermediate object (nested results, guest puts) is gone once all tasks finish.
    assert_eq!(settle(&client), (0, 0));
}

#[tokio::test]
async fn a_put_larger_than_the_store_is_a_clear_error() {
    let (_d, client, _m) = node_with_guest();
    // The test store holds 64 MiB.
    let err = client.put(&vec![0u8; 65 << 20]).unwrap_err();
    assert!(
        err.to_string().contains("larger than the object store"),
        "{err}"
    );
    // With spilling on, a full store makes room by spilling.
    let a = client.put(&vec![0u8; 40 << 20]).unwrap();
    let b = client.put(&vec![1u8; 40 << 20]).unwrap();
    assert_eq!(client.location(&a), Some(ferry::ObjectLocation::Disk));
    drop((a, b));

    // Without it, filling the store is a different error, and freeing makes room again.
    let dir = tempfile::tempdir().unwrap();
    let mut config = ferry_tests::test_config(dir.path());
    config.spill_dir = None;
    let client = ferry::Client::embedded_with(config).unwrap();
    let a = client.put(&vec![0u8; 40 << 20]).unwrap();
    let err = client.put(&vec![0u8; 40 << 20]).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    drop(a);
    client.put(&vec![0u8; 40 << 20]).unwrap();
}
