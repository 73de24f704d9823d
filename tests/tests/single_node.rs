//! The driver API on an embedded node: calls, Ray's argument rules, nested tasks, refs inside
//! objects, get/get_many/wait with and without timeouts.

use std::time::Duration;

use ferry::{GetError, ObjectRef};
use ferry_testguest::{Bundle, Point, Shape};
use ferry_tests::node_with_guest;

#[tokio::test]
async fn typed_call_returns_a_ref_at_once() {
    let (_d, client, module) = node_with_guest();
    let add = module.function(ferry_testguest::add::REMOTE).unwrap();
    let r = add.call((40, 2)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 42);
}

#[tokio::test]
async fn top_level_refs_are_resolved_by_value() {
    let (_d, client, module) = node_with_guest();
    let echo = module.function(ferry_testguest::echo::REMOTE).unwrap();
    let x = client.put(&7i64).unwrap();
    // Typed: a parameter of type i64 takes an ObjectRef<i64> (borrowed or owned).
    assert_eq!(client.get(&echo.call((&x,)).unwrap()).await.unwrap(), 7);
    // A ref to a pending result works the same: the call waits for it.
    let y = echo.call((echo.call((x.clone(),)).unwrap(),)).unwrap();
    assert_eq!(client.get(&y).await.unwrap(), 7);
    // Untyped: a top-level argument that is exactly one ref is resolved too (Ray's rule).
    let z: ObjectRef<i64> = module.call("echo", (x,)).unwrap();
    assert_eq!(client.get(&z).await.unwrap(), 7);
}

#[tokio::test]
async fn nested_refs_stay_refs_and_the_guest_gets_them() {
    let (_d, client, module) = node_with_guest();
    let (a, b, c) = (
        client.put(&1i64).unwrap(),
        client.put(&2i64).unwrap(),
        client.put(&3i64).unwrap(),
    );
    let echo_and_get = module
        .function(ferry_testguest::echo_and_get::REMOTE)
        .unwrap();
    let r = echo_and_get.call((vec![a, b, c],)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), vec![1, 2, 3]);
    // The same through the untyped form.
    let d = client.put(&4i64).unwrap();
    let r: ObjectRef<Vec<i64>> = module.call("echo_and_get", (vec![d],)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), vec![4]);
}

#[tokio::test]
async fn structs_enums_strings_and_options_round_trip() {
    let (_d, client, module) = node_with_guest();
    let area = module.function(ferry_testguest::area::REMOTE).unwrap();
    let square = Shape::Polygon(vec![
        Point { x: 0.0, y: 0.0 },
        Point { x: 2.0, y: 0.0 },
        Point { x: 2.0, y: 2.0 },
        Point { x: 0.0, y: 2.0 },
    ]);
    assert_eq!(
        client.get(&area.call((square,)).unwrap()).await.unwrap(),
        4.0
    );
    assert_eq!(
        client
            .get(&area.call((Shape::Empty,)).unwrap())
            .await
            .unwrap(),
        0.0
    );
    let greet = module.function(ferry_testguest::greet::REMOTE).unwrap();
    let r = greet.call(("ferry".to_string(), Some(2))).unwrap();
    assert_eq!(
        client.get(&r).await.unwrap(),
        vec!["hello ferry #0", "hello ferry #1"]
    );
}

#[tokio::test]
async fn refs_returned_inside_objects_and_passed_on() {
    let (_d, client, module) = node_with_guest();
    let make = module
        .function(ferry_testguest::make_bundle::REMOTE)
        .unwrap();
    let bundle_ref = make.call(("b".to_string(), vec![5, 6, 7])).unwrap();
    // The driver decodes the refs and reads them.
    let bundle: Bundle = client.get(&bundle_ref).await.unwrap();
    assert_eq!(bundle.label, "b");
    assert_eq!(client.get_many(&bundle.parts).await.unwrap(), vec![5, 6, 7]);
    // The whole object passed by value to another task, which gets the nested refs.
    let sum = module
        .function(ferry_testguest::sum_bundle::REMOTE)
        .unwrap();
    assert_eq!(
        client
            .get(&sum.call((&bundle_ref,)).unwrap())
            .await
            .unwrap(),
        18
    );
    // And a driver-built object holding refs, passed by value.
    let own = Bundle {
        label: "mine".into(),
        parts: vec![client.put(&10i64).unwrap(), client.put(&20i64).unwrap()],
    };
    assert_eq!(client.get(&sum.call((own,)).unwrap()).await.unwrap(), 30);
}

#[tokio::test]
async fn guests_call_further_functions_as_nested_tasks() {
    let (_d, client, module) = node_with_guest();
    let sum = module
        .function(ferry_testguest::sum_by_tasks::REMOTE)
        .unwrap();
    let r = sum.call(((1..=10).collect::<Vec<i64>>(),)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 55);
    let fib = module.function(ferry_testguest::fib::REMOTE).unwrap();
    assert_eq!(client.get(&fib.call((12,)).unwrap()).await.unwrap(), 144);
    // A guest can return the ref of a task it started; the driver follows it.
    let spawn = module.function(ferry_testguest::spawn_add::REMOTE).unwrap();
    let outer = spawn.call((2, 3)).unwrap();
    let inner: ObjectRef<i64> = client.get(&outer).await.unwrap();
    assert_eq!(client.get(&inner).await.unwrap(), 5);
}

#[tokio::test]
async fn get_with_timeout_fails_with_a_distinct_error() {
    let (_d, client, module) = node_with_guest();
    let slow: ObjectRef<u64> = module.call("spin_forever", ()).unwrap();
    let err = client
        .get_timeout(&slow, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, GetError::Timeout { .. }), "{err}");
    let err = client
        .get_blocking_timeout(&slow, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, GetError::Timeout { .. }), "{err}");
    // A ready object is returned regardless of the timeout.
    let x = client.put(&1i64).unwrap();
    assert_eq!(client.get_timeout(&x, Duration::ZERO).await.unwrap(), 1);
}

#[test]
fn blocking_get_outside_any_runtime() {
    let (_d, client, module) = node_with_guest();
    let r: ObjectRef<i64> = module.call("add", (1i64, 2i64)).unwrap();
    assert_eq!(client.get_blocking(&r).unwrap(), 3);
}

#[tokio::test]
async fn wait_splits_ready_and_pending_like_ray() {
    let (_d, client, module) = node_with_guest();
    let a: ObjectRef<i64> = module.call("add", (1i64, 1i64)).unwrap();
    let b = client.put(&2i64).unwrap();
    let slow: ObjectRef<i64> = module.call("spin_forever", ()).unwrap();
    let refs = vec![a.clone(), slow.clone(), b.clone()];
    let (ready, pending) = client.wait(refs.clone(), 2, None).await;
    assert_eq!(ready, vec![a.clone(), b.clone()]);
    assert_eq!(pending, vec![slow.clone()]);
    // Asking for all three with a timeout returns what is ready when time runs out.
    let (ready, pending) = client.wait(refs, 3, Some(Duration::from_millis(100))).await;
    assert_eq!((ready.len(), pending.len()), (2, 1));
    // Like Ray, `ready` holds at most `num_ready` refs: the first complete ones, in order.
    let (ready, pending) = client.wait(vec![a.clone(), b.clone()], 1, None).await;
    assert_eq!((ready, pending), (vec![a.clone()], vec![b.clone()]));
    let (ready, pending) = client
        .wait(vec![slow.clone(), b.clone(), a.clone()], 1, None)
        .await;
    assert_eq!(
        (ready, pending),
        (vec![b.clone()], vec![slow.clone(), a.clone()])
    );
    let two_ready: ObjectRef<(u32, u32)> = module
        .call("wait_first", (vec![a.clone(), b.clone()], 1u32))
        .unwrap();
    assert_eq!(client.get(&two_ready).await.unwrap(), (1, 1));
    // Inside a guest.
    let first: ObjectRef<(u32, u32)> = module
        .call("wait_first", (vec![a, slow.clone()], 1u32))
        .unwrap();
    assert_eq!(client.get(&first).await.unwrap(), (1, 1));
    let timed: ObjectRef<i64> = module
        .call("get_with_timeout", (vec![slow], 20u64))
        .unwrap();
    let err = client.get(&timed).await.unwrap_err();
    assert!(err.to_string().contains("was not ready within"), "{err}");
}

#[tokio::test]
async fn a_thousand_calls_in_flight() {
    let (_d, client, module) = node_with_guest();
    let add = module.function(ferry_testguest::add::REMOTE).unwrap();
    let refs: Vec<_> = (0..1000).map(|i| add.call((i, 1)).unwrap()).collect();
    let values = client.get_many(&refs).await.unwrap();
    assert_eq!(values, (1..=1000).collect::<Vec<i64>>());
    let stats = client.stats();
    assert_eq!(stats.tasks_submitted, 1000);
}

#[tokio::test]
async fn bytes_in_and_out() {
    let (_d, client, module) = node_with_guest();
    let data = client.put(&vec![7u8; 1 << 20]).unwrap();
    let len: ObjectRef<u64> = module.call("bytes_len", (&data,)).unwrap();
    assert_eq!(client.get(&len).await.unwrap(), 1 << 20);
    let made: ObjectRef<Vec<u8>> = module.call("make_bytes", (4096u32, 9u8)).unwrap();
    assert_eq!(client.get(&made).await.unwrap(), vec![9u8; 4096]);
}
