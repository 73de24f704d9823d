//! A hand-written guest that breaks every rule of the ABI: pointers outside its memory,
//! garbage messages, ids it was never given, a missing result, a shim of the wrong type. Each
//! becomes a task error; the node never panics and keeps serving.

use std::time::Duration;

use ferry::{Client, FunctionSig, ObjectRef, Param, TaskErrorKind, TypeDesc};
use ferry_tests::{test_config, testguest_wasm};

fn sig(name: &str) -> Vec<u8> {
    let params = match name {
        "smuggle" => vec![Param {
            name: "id".into(),
            ty: TypeDesc {
                rust: "[u8; 16]".into(),
                format: Err("hand-written".into()),
            },
        }],
        _ => Vec::new(),
    };
    let sig = FunctionSig {
        name: name.into(),
        params,
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

/// The hand-written functions: name and body (the shim's locals are its two parameters).
const FUNCTIONS: &[(&str, &str)] = &[
    // Each bad host call's status goes to one byte at 8192; the bytes are the result.
    (
        "evil",
        r#"
    ;; an id and a destination outside the 64 KiB memory
    (i32.store8 (i32.const 8192) (i32.wrap_i64 (call $get (i32.const -16) (i64.const -1))))
    (i32.store8 (i32.const 8193) (i32.wrap_i64 (call $take (i32.const -1) (i32.const 100))))
    ;; a value outside memory, then an out-pointer outside memory
    (i32.store8 (i32.const 8194)
      (call $put (i32.const -100) (i32.const 1000) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (i32.store8 (i32.const 8195)
      (call $put (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -3)))
    ;; an id it was never given, read and then put inside a value
    (i32.store8 (i32.const 8196) (i32.wrap_i64 (call $get (i32.const 4096) (i64.const 0))))
    (i32.store8 (i32.const 8197)
      (call $put (i32.const 0) (i32.const 4) (i32.const 4096) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)))
    ;; a call request that is not one, and a wait on two billion ids
    (i32.store8 (i32.const 8198) (call $call (i32.const 4096) (i32.const 16) (i32.const 0)))
    (i32.store8 (i32.const 8199)
      (call $wait (i32.const 0) (i32.const 2000000000) (i32.const 1) (i64.const 0) (i32.const 0)))
    ;; a buffer list outside memory, a buffer whose bytes run past memory, buffers of objects
    ;; it does not have, and a mapping it never got
    (i32.store8 (i32.const 8200)
      (call $put (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const -8) (i32.const 1) (i32.const 0)))
    (i64.store (i32.const 9000) (i64.const 0xffff0000fff00000))
    (i32.store8 (i32.const 8201)
      (call $put (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 9000) (i32.const 1) (i32.const 0)))
    (i32.store8 (i32.const 8202) (call $buffer (i32.const -1) (i32.const 0) (i32.const 0)))
    (i32.store8 (i32.const 8203) (call $read_buffer (i32.const 5) (i32.const 0) (i32.const 0)))
    (i32.store8 (i32.const 8204) (call $release_buffer (i32.const 77)))
    ;; releasing an id outside memory and one it was never given; then one it made, twice,
    ;; after which the id is no longer its to use
    (i32.store8 (i32.const 8205) (call $release (i32.const -16)))
    (i32.store8 (i32.const 8206) (call $release (i32.const 4096)))
    (drop (call $put (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 9100)))
    (i32.store8 (i32.const 8207) (call $release (i32.const 9100)))
    (i32.store8 (i32.const 8208) (call $release (i32.const 9100)))
    (i32.store8 (i32.const 8209) (i32.wrap_i64 (call $get (i32.const 9100) (i64.const 0))))
    (call $log (i32.const 3) (i32.const -5) (i32.const 99999))
    (drop (call $result (i32.const 8192) (i32.const 18) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (i32.const 0)"#,
    ),
    // An unknown failure kind whose message and cause lie outside memory.
    (
        "evil_fail",
        r#"
    (drop (call $fail (i32.const 99) (i32.const -1) (i32.const 50) (i32.const -1) (i32.const 50)))
    (i32.const 1)"#,
    ),
    // A result claiming to contain an object the task was never given.
    (
        "liar",
        r#"
    (drop (call $result (i32.const 0) (i32.const 16) (i32.const 4096) (i32.const 1) (i32.const 0) (i32.const 0)))
    (i32.const 0)"#,
    ),
    // Returns success without a result.
    ("silent", "(i32.const 0)"),
    // Returns the 16 id bytes it was passed as a value, without declaring them as a ref.
    (
        "smuggle",
        r#"
    (drop (call $result (local.get 0) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (i32.const 0)"#,
    ),
];

fn hostile_module() -> Vec<u8> {
    let mut data = String::new();
    let mut funcs = String::new();
    let mut offset = 16384;
    let all = FUNCTIONS.iter().map(|(n, _)| *n).chain(["badsig"]);
    for name in all {
        let sig = sig(name);
        data.push_str(&format!(
            "  (data (i32.const {offset}) \"{}\")\n",
            wat_bytes(&sig)
        ));
        funcs.push_str(&format!(
            "  (func (export \"__ferry_sig_{name}\") (result i32)\n    \
             (call $result (i32.const {offset}) (i32.const {}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))\n",
            sig.len()
        ));
        offset += 1024;
    }
    for (name, body) in FUNCTIONS {
        funcs.push_str(&format!(
            "  (func (export \"__ferry_fn_{name}\") (param i32 i32) (result i32){body})\n"
        ));
    }
    // A shim of the wrong type.
    funcs.push_str(
        "  (func (export \"__ferry_fn_badsig\") (param i64) (result i64) (i64.const 0))\n",
    );
    let text = format!(
        r#"(module
  (@custom "ferry_abi" "\03\00\00\00")
  (import "ferry" "get" (func $get (param i32 i64) (result i64)))
  (import "ferry" "take" (func $take (param i32 i32) (result i64)))
  (import "ferry" "put" (func $put (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "ferry" "buffer" (func $buffer (param i32 i32 i32) (result i32)))
  (import "ferry" "read_buffer" (func $read_buffer (param i32 i32 i32) (result i32)))
  (import "ferry" "release_buffer" (func $release_buffer (param i32) (result i32)))
  (import "ferry" "release" (func $release (param i32) (result i32)))
  (import "ferry" "call" (func $call (param i32 i32 i32) (result i32)))
  (import "ferry" "wait" (func $wait (param i32 i32 i32 i64 i32) (result i32)))
  (import "ferry" "result" (func $result (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "ferry" "fail" (func $fail (param i32 i32 i32 i32 i32) (result i32)))
  (import "ferry" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 4096) "\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff\ff")
{data}  (func (export "__ferry_alloc") (param i32 i32) (result i32) (i32.const 32768))
{funcs})"#
    );
    wat::parse_str(text).unwrap()
}

#[tokio::test]
async fn abi_violations_are_refused_one_by_one_and_the_node_keeps_serving() {
    use ferry::GetError;
    let limit = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    let module = client.load(&hostile_module()).unwrap();

    // Every bad host call got the status it deserved (statuses are negative i32s; the guest
    // kept their low bytes).
    let r: ObjectRef<[u8; 18]> = module.call("evil", ()).unwrap();
    let statuses = client.get_timeout(&r, limit).await.unwrap();
    let (bad, invalid) = ((-4i32) as u8, (-3i32) as u8);
    assert_eq!(
        statuses,
        [
            bad, bad, bad, bad, invalid, invalid, bad, bad, bad, bad, bad, bad, bad, bad, invalid,
            0, invalid, invalid
        ],
        "get, take, put, put(out), get(not given), put(ref not given), call, wait, \
         put(buffer list), put(buffer bytes), buffer, read_buffer, release_buffer, \
         release(out of bounds), release(not given), release, release again, get(released)"
    );

    let kind = |err: &GetError| err.task_error().map(|t| t.kind.clone());
    let r: ObjectRef<()> = module.call("evil_fail", ()).unwrap();
    let err = client.get_timeout(&r, limit).await.unwrap_err();
    assert!(
        matches!(kind(&err), Some(TaskErrorKind::Failed { ref message, .. }) if message.contains("out of bounds")),
        "{err}"
    );

    let r: ObjectRef<()> = module.call("liar", ()).unwrap();
    let err = client.get_timeout(&r, limit).await.unwrap_err();
    assert!(
        matches!(kind(&err), Some(TaskErrorKind::Host { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("was not given to this task"),
        "{err}"
    );

    let r: ObjectRef<()> = module.call("silent", ()).unwrap();
    let err = client.get_timeout(&r, limit).await.unwrap_err();
    assert!(
        matches!(kind(&err), Some(TaskErrorKind::Abi { .. })),
        "{err}"
    );

    let r: ObjectRef<()> = module.call("badsig", ()).unwrap();
    let err = client.get_timeout(&r, limit).await.unwrap_err();
    assert!(
        matches!(kind(&err), Some(TaskErrorKind::Host { .. })),
        "{err}"
    );

    // A guest cannot hand the driver a ref it never declared (here, to an object the driver
    // made and the guest was never given): the driver refuses to decode it.
    let secret = client.put(&7i64).unwrap();
    let r: ObjectRef<ObjectRef<i64>> = module.call("smuggle", (secret.id().0,)).unwrap();
    let err = client.get_timeout(&r, limit).await.unwrap_err();
    assert!(matches!(err, GetError::UndeclaredRef { .. }), "{err}");
    assert_eq!(client.ref_count(&secret), Some(1), "counts stay balanced");

    // The node still serves ordinary guests.
    let good = client.load(&testguest_wasm()).unwrap();
    let r: ObjectRef<i64> = good.call("add", (1i64, 2i64)).unwrap();
    assert_eq!(client.get_timeout(&r, limit).await.unwrap(), 3);
}
