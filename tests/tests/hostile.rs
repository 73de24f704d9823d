//! A hand-written guest that breaks every rule of the ABI: pointers outside its memory,
//! garbage messages, ids it was never given, a missing result, a shim of the wrong type. Each
//! becomes a task error; the node never panics and keeps serving.

use ferry::{Client, FunctionSig, ObjectRef, TaskErrorKind, TypeDesc};
use ferry_tests::{test_config, testguest_wasm};

fn sig(name: &str) -> Vec<u8> {
    let sig = FunctionSig {
        name: name.into(),
        params: Vec::new(),
        result: TypeDesc {
            rust: "()".into(),
            format: Err("hand-written".into()),
        },
        error: None,
        registry: vec![0],
    };
    postcard::to_allocvec(&sig).unwrap()
}

fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module with functions `evil`, `silent` and `badsig`.
fn hostile_module() -> Vec<u8> {
    let (evil, silent, badsig) = (sig("evil"), sig("silent"), sig("badsig"));
    let text = format!(
        r#"(module
  (@custom "ferry_abi" "\01\00\00\00")
  (import "ferry" "get" (func $get (param i32 i64) (result i64)))
  (import "ferry" "take" (func $take (param i32 i32) (result i64)))
  (import "ferry" "put" (func $put (param i32 i32 i32 i32 i32) (result i32)))
  (import "ferry" "call" (func $call (param i32 i32 i32) (result i32)))
  (import "ferry" "wait" (func $wait (param i32 i32 i32 i64 i32) (result i32)))
  (import "ferry" "result" (func $result (param i32 i32 i32 i32) (result i32)))
  (import "ferry" "fail" (func $fail (param i32 i32 i32 i32 i32) (result i32)))
  (import "ferry" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{evil}")
  (data (i32.const 2048) "{silent}")
  (data (i32.const 3072) "{badsig}")
  (data (i32.const 4096) "\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff")
  (func (export "__ferry_alloc") (param i32 i32) (result i32) (i32.const 8192))
  (func (export "__ferry_sig_evil") (result i32)
    (call $result (i32.const 1024) (i32.const {evil_len}) (i32.const 0) (i32.const 0)))
  (func (export "__ferry_sig_silent") (result i32)
    (call $result (i32.const 2048) (i32.const {silent_len}) (i32.const 0) (i32.const 0)))
  (func (export "__ferry_sig_badsig") (result i32)
    (call $result (i32.const 3072) (i32.const {badsig_len}) (i32.const 0) (i32.const 0)))
  (func (export "__ferry_fn_evil") (param i32 i32) (result i32)
    ;; ids and buffers far outside the 64 KiB memory
    (drop (call $get (i32.const -16) (i64.const -1)))
    (drop (call $take (i32.const -1) (i32.const 100)))
    (drop (call $put (i32.const -100) (i32.const 1000) (i32.const 0) (i32.const 0) (i32.const 0)))
    (drop (call $put (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const -3)))
    ;; an id it was never given, inside its memory
    (drop (call $get (i32.const 4096) (i64.const 0)))
    (drop (call $put (i32.const 0) (i32.const 4) (i32.const 4096) (i32.const 1) (i32.const 0)))
    ;; a call request that is not one, and a huge id list
    (drop (call $call (i32.const 4096) (i32.const 16) (i32.const 0)))
    (drop (call $wait (i32.const 0) (i32.const 2000000000) (i32.const 1) (i64.const 0) (i32.const 0)))
    (drop (call $result (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 0)))
    (call $log (i32.const 3) (i32.const -5) (i32.const 99999))
    ;; an unknown failure kind whose message lies outside memory
    (drop (call $fail (i32.const 99) (i32.const -1) (i32.const 50) (i32.const -1) (i32.const 50)))
    (i32.const 1))
  (func (export "__ferry_fn_silent") (param i32 i32) (result i32) (i32.const 0))
  (func (export "__ferry_fn_badsig") (param i64) (result i64) (i64.const 0))
)"#,
        evil = wat_bytes(&evil),
        silent = wat_bytes(&silent),
        badsig = wat_bytes(&badsig),
        evil_len = evil.len(),
        silent_len = silent.len(),
        badsig_len = badsig.len(),
    );
    wat::parse_str(text).unwrap()
}

#[tokio::test]
async fn abi_violations_are_task_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    let module = client.load(&hostile_module()).unwrap();

    let r: ObjectRef<()> = module.call("evil", ()).unwrap();
    let err = client.get(&r).await.unwrap_err();
    match &err.task_error().unwrap().kind {
        TaskErrorKind::Failed { message, .. } => {
            assert!(message.contains("out of bounds"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }

    let r: ObjectRef<()> = module.call("silent", ()).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(
        matches!(err.task_error().unwrap().kind, TaskErrorKind::Abi { .. }),
        "{err}"
    );

    let r: ObjectRef<()> = module.call("badsig", ()).unwrap();
    let err = client.get(&r).await.unwrap_err();
    assert!(
        matches!(err.task_error().unwrap().kind, TaskErrorKind::Host { .. }),
        "{err}"
    );

    // The node still serves ordinary guests.
    let good = client.load(&testguest_wasm()).unwrap();
    let r: ObjectRef<i64> = good.call("add", (1i64, 2i64)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 3);
}
