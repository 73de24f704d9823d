//! Every way a call can fail comes back as a distinct typed error naming the function, and
//! the node keeps serving afterwards.

use std::time::Duration;

use ferry::{CallError, Client, GetError, ObjectRef, RemoteFn, TaskErrorKind};
use ferry_testguest::MathError;
use ferry_tests::{node_with_guest, test_config, testguest_wasm};

fn task_kind(err: &GetError) -> &TaskErrorKind {
    &err.task_error()
        .unwrap_or_else(|| panic!("not a task error: {err}"))
        .kind
}

async fn still_serving(client: &Client, module: &ferry::ModuleHandle) {
    let r: ObjectRef<i64> = module.call("add", (2i64, 2i64)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 4);
}

#[tokio::test]
async fn a_panic_carries_its_message() {
    let (_d, client, module) = node_with_guest();
    let r: ObjectRef<i64> = module.call("panics", ("boom".to_string(),)).unwrap();
    let err = client.get(&r).await.unwrap_err();
    let task = err.task_error().unwrap();
    assert_eq!(task.function, "panics");
    match task_kind(&err) {
        TaskErrorKind::Panicked { message } => {
            assert!(message.contains("guest panicked: boom"), "{message}");
            assert!(message.contains("src/lib.rs"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(err.to_string().contains("task `panics`"), "{err}");
    still_serving(&client, &module).await;
}

#[tokio::test]
async fn an_err_carries_a_typed_cause() {
    let (_d, client, module) = node_with_guest();
    let divide = module.function(ferry_testguest::divide::REMOTE).unwrap();
    let err = client.get(&divide.call((7, 0)).unwrap()).await.unwrap_err();
    assert!(matches!(task_kind(&err), TaskErrorKind::Failed { .. }));
    assert!(err.to_string().contains("cannot divide 7 by zero"), "{err}");
    let cause: MathError = err.task_error().unwrap().cause().unwrap();
    assert_eq!(cause, MathError::DivideByZero { numerator: 7 });
    // Ok values of a Result-returning function are plain values.
    assert_eq!(client.get(&divide.call((8, 2)).unwrap()).await.unwrap(), 4);
}

#[tokio::test]
async fn a_trap_is_reported_with_the_function() {
    let (_d, client, module) = node_with_guest();
    let r: ObjectRef<i64> = module.call("traps", ()).unwrap();
    let err = client.get(&r).await.unwrap_err();
    match task_kind(&err) {
        TaskErrorKind::Trapped { trap } => assert!(trap.contains("unreachable"), "{trap}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    still_serving(&client, &module).await;
}

#[tokio::test]
async fn an_infinite_loop_hits_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.time_limit = Duration::from_millis(200);
    let client = Client::embedded_with(config).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    let r: ObjectRef<u64> = module.call("spin_forever", ()).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(
        matches!(task_kind(&err), TaskErrorKind::TimedOut { limit } if *limit == Duration::from_millis(200)),
        "{err}"
    );
    still_serving(&client, &module).await;
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let (_d, client, module) = node_with_guest();
    // The test node allows 64 MiB per instance.
    let r: ObjectRef<u64> = module.call("allocate", (200u32,)).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(
        matches!(task_kind(&err), TaskErrorKind::MemoryLimit { limit } if *limit == 64 << 20),
        "{err}"
    );
    // Within the limit is fine.
    let r: ObjectRef<u64> = module.call("allocate", (8u32,)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 8 << 20);
}

/// One large object named as several arguments must not make the host copy it once per
/// argument past what the guest could ever receive: the arguments are bounded by the guest's
/// memory limit before any is copied.
#[tokio::test]
async fn arguments_larger_than_the_guests_memory_are_refused_before_copying() {
    let (_d, client, module) = node_with_guest();
    // 34 MiB in band (a String is not a Blob), named twice: 68 MiB against the test node's
    // 64 MiB limit.
    let big = client.put(&"x".repeat(34 << 20)).unwrap();
    let args = (big.clone(), big.clone());
    let r: ObjectRef<i64> = module.call("make_bundle", args).unwrap();
    let err = client.get(&r).await.unwrap_err();
    match task_kind(&err) {
        TaskErrorKind::BadArguments { detail } => {
            assert!(detail.contains("over the guest's memory limit"), "{detail}")
        }
        other => panic!("expected BadArguments, got {other:?}"),
    }
    drop(big);
    still_serving(&client, &module).await;
}

/// A self-forking guest fills only the guests' share of the node's unfinished calls: it ends
/// with an error naming the limit, and a driver's calls keep running meanwhile.
#[tokio::test]
async fn a_fork_bomb_is_contained_and_drivers_calls_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = ferry::NodeConfig {
        // Guests may hold 30 unfinished calls, drivers 40.
        max_pending_calls: 40,
        ..test_config(dir.path())
    };
    let client = Client::embedded_with(config).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    let bomb: ObjectRef<u64> = module.call("fork_bomb", (0u32,)).unwrap();
    // Meanwhile a driver's calls run (one at a time: the bomb leaves them ten places).
    for i in 0..20i64 {
        let r: ObjectRef<i64> = module.call("add", (i, 1i64)).unwrap();
        assert_eq!(client.get(&r).await.unwrap(), i + 1);
    }
    let err = client.get(&bomb).await.unwrap_err();
    assert!(
        err.to_string().contains("too many unfinished calls"),
        "{err}"
    );
    still_serving(&client, &module).await;
}

/// One task may have at most `max_calls_per_task` unfinished calls.
#[tokio::test]
async fn a_task_making_too_many_unfinished_calls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ferry::NodeConfig {
        max_calls_per_task: 10,
        ..test_config(dir.path())
    };
    let client = Client::embedded_with(config).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    // The children wait for a call that spins until its time limit: none finishes first.
    let gate: ObjectRef<i64> = module.call("spin_forever", ()).unwrap();
    let r: ObjectRef<u32> = module.call("fan_out", (vec![gate.clone()], 20u32)).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(
        err.to_string().contains("10 of 10 made by this task"),
        "{err}"
    );
    // Within the limit is fine.
    let r: ObjectRef<u32> = module.call("fan_out", (vec![gate], 5u32)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 5);
}

#[tokio::test]
async fn unknown_functions_and_wrong_arity_fail_at_submission() {
    let (_d, client, module) = node_with_guest();
    let err = module.call::<i64>("nope", (1i64,)).unwrap_err();
    assert!(matches!(err, CallError::UnknownFunction { .. }), "{err}");
    assert!(
        err.to_string().contains("`nope`") && err.to_string().contains("add"),
        "{err}"
    );
    let err = module.call::<i64>("add", (1i64,)).unwrap_err();
    assert!(
        matches!(
            err,
            CallError::ArgumentCount {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{err}"
    );
    // A guest calling an unknown function gets an error it can return.
    let r: ObjectRef<i64> = module.call("call_missing", ()).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(err.to_string().contains("no_such_function"), "{err}");
    still_serving(&client, &module).await;
}

#[tokio::test]
async fn arguments_that_do_not_decode_name_the_parameter() {
    let (_d, client, module) = node_with_guest();
    // Variant 7 of `Shape` does not exist.
    let r: ObjectRef<f64> = module.call("area", (7u32,)).unwrap();
    let err = client.get(&r).await.unwrap_err();
    match task_kind(&err) {
        TaskErrorKind::BadArguments { detail } => {
            assert!(detail.contains("argument 1 `shape: Shape`"), "{detail}");
            assert!(detail.contains("`area`"), "{detail}");
        }
        other => panic!("expected bad arguments, got {other:?}"),
    }
    // Extra bytes after the last parameter.
    let r: ObjectRef<i64> = module.call("echo", ((1i64, 2i64),)).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(
        matches!(task_kind(&err), TaskErrorKind::BadArguments { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_upstream_names_itself_downstream() {
    let (_d, client, module) = node_with_guest();
    let divide = module.function(ferry_testguest::divide::REMOTE).unwrap();
    let echo = module.function(ferry_testguest::echo::REMOTE).unwrap();
    let bad = divide.call((1, 0)).unwrap();
    let downstream = echo.call((&bad,)).unwrap();
    let err = client.get(&downstream).await.unwrap_err();
    let task = err.task_error().unwrap();
    assert_eq!(task.function, "echo");
    assert!(matches!(
        task.kind,
        TaskErrorKind::UpstreamFailed { argument: 1, .. }
    ));
    assert_eq!(task.root().function, "divide");
    assert_eq!(
        task.cause::<MathError>(),
        Some(MathError::DivideByZero { numerator: 1 })
    );
    assert!(err.to_string().contains("task `divide`"), "{err}");
}

#[tokio::test]
async fn a_long_chain_of_failures_stays_small() {
    let (_d, client, module) = node_with_guest();
    let divide = module.function(ferry_testguest::divide::REMOTE).unwrap();
    let echo = module.function(ferry_testguest::echo::REMOTE).unwrap();
    let mut r = divide.call((5, 0)).unwrap();
    for _ in 0..2000 {
        r = echo.call((r,)).unwrap();
    }
    let err = client.get(&r).await.unwrap_err();
    let task = err.task_error().unwrap();
    assert_eq!(task.function, "echo");
    assert_eq!(task.root().function, "divide");
    assert_eq!(
        task.cause::<MathError>(),
        Some(MathError::DivideByZero { numerator: 5 })
    );
    // One step of the chain, then the root: the message does not grow with the chain.
    assert!(err.to_string().len() < 400, "{err}");
}

#[tokio::test]
async fn guests_cannot_read_objects_they_were_not_given() {
    let (_d, client, module) = node_with_guest();
    let secret = client.put(&99i64).unwrap();
    let id = secret.id();
    let r: ObjectRef<i64> = module.call("forge_ref", (id.owner(), id.seq())).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(err.to_string().contains("not given to this task"), "{err}");
}

#[tokio::test]
async fn typed_handles_match_path_spelled_results() {
    let (_d, client, module) = node_with_guest();
    let half = module
        .function(ferry_testguest::checked_half::REMOTE)
        .unwrap();
    assert_eq!(client.get(&half.call((8,)).unwrap()).await.unwrap(), 4);
    let err = client.get(&half.call((3,)).unwrap()).await.unwrap_err();
    assert_eq!(
        err.task_error().unwrap().cause::<String>().unwrap(),
        "3 is odd"
    );
}

#[tokio::test]
async fn a_stale_typed_handle_is_refused() {
    let (_d, _client, module) = node_with_guest();
    let wrong: RemoteFn<(i64,), i64> = RemoteFn::new("add", "(a: i64) -> i64");
    let err = module.function(wrong).unwrap_err();
    assert!(matches!(err, CallError::SignatureMismatch { .. }), "{err}");
}

#[tokio::test]
async fn decoding_as_the_wrong_type_is_a_decode_error() {
    let (_d, client, _module) = node_with_guest();
    // One byte with the continuation bit set is not a complete varint.
    let r = client.put(&200u8).unwrap().cast::<u64>();
    let err = client.get(&r).await.unwrap_err();
    assert!(matches!(err, GetError::Decode { .. }), "{err}");
}

#[tokio::test]
async fn nested_calls_outgrowing_the_instance_pool_fail_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_instances = 4;
    let client = Client::embedded_with(config).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    // Every fib task waits on two children: with four instances the pool fills with waiting
    // parents and the children can never start.
    let r: ObjectRef<u64> = module.call("fib", (12u32,)).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(err.to_string().contains("raise max_instances"), "{err}");
    // The rest of the tree unwinds by itself; then the node serves as before.
    let start = std::time::Instant::now();
    while client.stats().tasks_finished < client.stats().tasks_submitted {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the task tree never unwound"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    still_serving(&client, &module).await;
}
