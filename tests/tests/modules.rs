//! Loading modules: content addressing, compile once, the on-disk cache across restarts, the
//! manifest, and modules that are not ferry modules.

use ferry::{Client, ModuleError, ObjectRef};
use ferry_tests::{test_config, testguest_wasm};

#[test]
fn the_same_bytes_compile_once() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    let a = client.load(&testguest_wasm()).unwrap();
    let b = client.load(&testguest_wasm()).unwrap();
    assert_eq!(a.id(), b.id());
    let s = client.stats().modules;
    assert_eq!((s.loaded, s.compiled), (1, 1));
}

#[test]
fn concurrent_loads_of_the_same_bytes_compile_once() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    let wasm = testguest_wasm();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| client.load(&wasm).unwrap());
        }
    });
    assert_eq!(client.stats().modules.compiled, 1);
}

#[test]
fn a_restarted_node_loads_compiled_code_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let client = Client::embedded_with(test_config(dir.path())).unwrap();
        client.load(&testguest_wasm()).unwrap();
        assert_eq!(client.stats().modules.compiled, 1);
    }
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    let s = client.stats().modules;
    assert_eq!((s.compiled, s.from_disk_cache), (0, 1));
    let r: ObjectRef<i64> = module.call("add", (1i64, 1i64)).unwrap();
    assert_eq!(client.get_blocking(&r).unwrap(), 2);
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    {
        let client = Client::embedded_with(cfg.clone()).unwrap();
        client.load(&testguest_wasm()).unwrap();
    }
    let cache = cfg.cache_dir.clone().unwrap();
    for e in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(e.unwrap().path(), b"garbage").unwrap();
    }
    let client = Client::embedded_with(cfg).unwrap();
    client.load(&testguest_wasm()).unwrap();
    assert_eq!(client.stats().modules.compiled, 1);
}

#[test]
fn the_manifest_names_functions_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    let module = client.load(&testguest_wasm()).unwrap();
    let names: Vec<&str> = module.functions().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&"add") && names.contains(&"echo_and_get"),
        "{names:?}"
    );
    let sig = |n: &str| module.signature(n).unwrap().display_signature();
    assert_eq!(sig("add"), "(a: i64, b: i64) -> i64");
    assert_eq!(
        sig("echo_and_get"),
        "(xs: Vec<ObjectRef<i64>>) -> Result<Vec<i64>, Error>"
    );
    assert_eq!(sig("divide"), "(a: i64, b: i64) -> Result<i64, MathError>");
    assert_eq!(sig("noop"), "() -> ()");
    let area = module.signature("area").unwrap();
    assert!(area.params[0].ty.format().is_ok());
    assert!(area.registry().contains_key("Shape"));
}

fn load_err(wasm: &[u8]) -> ModuleError {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::embedded_with(test_config(dir.path())).unwrap();
    client.load(wasm).unwrap_err()
}

#[test]
fn modules_that_are_not_ferry_modules_are_refused_clearly() {
    assert!(matches!(
        load_err(b"not wasm at all"),
        ModuleError::Invalid(_)
    ));
    let plain = wat::parse_str("(module (memory (export \"memory\") 1))").unwrap();
    assert!(matches!(load_err(&plain), ModuleError::NotFerry));
    let future = wat::parse_str(
        "(module (@custom \"ferry_abi\" \"\\63\\00\\00\\00\") (memory (export \"memory\") 1))",
    )
    .unwrap();
    assert!(
        matches!(
            load_err(&future),
            ModuleError::AbiVersion {
                found: 99,
                expected: ferry::ABI_VERSION
            }
        ),
        "{}",
        load_err(&future)
    );
    let foreign = wat::parse_str(
        "(module (@custom \"ferry_abi\" \"\\03\\00\\00\\00\") (import \"env\" \"open\" (func)) \
         (memory (export \"memory\") 1))",
    )
    .unwrap();
    let err = load_err(&foreign);
    assert!(err.to_string().contains("`env::open`"), "{err}");
    let truncated = &testguest_wasm()[..1000];
    assert!(matches!(load_err(truncated), ModuleError::Invalid(_)));
}

/// A module with `sigs` functions whose signature exports run `sig_body` (WAT instructions
/// leaving an i32).
fn module_with_signatures(sigs: usize, sig_body: &str, pages: u32) -> Vec<u8> {
    let mut funcs = String::new();
    for i in 0..sigs {
        funcs.push_str(&format!(
            "  (func (export \"__ferry_sig_f{i}\") (result i32) {sig_body})\n  \
             (func (export \"__ferry_fn_f{i}\") (param i32 i32) (result i32) (i32.const 0))\n"
        ));
    }
    let text = format!(
        r#"(module
  (@custom "ferry_abi" "\03\00\00\00")
  (import "ferry" "result" (func $result (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (func (export "__ferry_alloc") (param i32 i32) (result i32) (i32.const 1024))
{funcs})"#
    );
    wat::parse_str(text).unwrap()
}

/// Reading a manifest is bounded: at most 4,096 functions (none of whose signatures is run
/// then), and at most 1 MiB per signature.
#[test]
fn a_manifest_too_large_is_refused() {
    let many = module_with_signatures(4097, "(i32.const 0)", 1);
    let err = load_err(&many);
    assert!(
        err.to_string()
            .contains("more than the 4096 a module may have"),
        "{err}"
    );
    // One signature of 2 MiB (zeros).
    let big = module_with_signatures(
        1,
        "(call $result (i32.const 0) (i32.const 2097152) (i32.const 0) (i32.const 0) \
         (i32.const 0) (i32.const 0))",
        40,
    );
    let err = load_err(&big);
    assert!(
        err.to_string().contains("more than the limit of 1048576"),
        "{err}"
    );
}
