//! The `ferry` command line: JSON in and out through the module's manifest, and errors as
//! one clear line with a non-zero exit code.

use std::process::{Command, Output};

use ferry_tests::{store_dir, testguest_path};

fn ferry(args: &[&str]) -> Output {
    let store = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .args([
            "--no-cache",
            "--store-size",
            "64M",
            "--store-dir",
            store_dir(store.path()).to_str().unwrap(),
        ])
        .env("FERRY_LOG", "off")
        .output()
        .unwrap()
}

fn run(args: &[&str]) -> Output {
    let module = testguest_path().to_str().unwrap().to_owned();
    let mut full = vec!["run", module.as_str()];
    full.extend_from_slice(args);
    ferry(&full)
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

/// Fails with exactly one line on stderr, returned.
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "should have failed");
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim().to_owned()
}

#[test]
fn run_converts_json_to_and_from_the_functions_types() {
    assert_eq!(stdout(&run(&["add", "40", "2"])), "42");
    assert_eq!(stdout(&run(&["add", "-1", "-2"])), "-3");
    assert_eq!(
        stdout(&run(&["greet", "\"ada\"", "2"])),
        r#"["hello ada #0","hello ada #1"]"#
    );
    assert_eq!(
        stdout(&run(&["greet", "\"bo\"", "null"])),
        r#"["hello bo #0"]"#
    );
    let circle = r#"{"Circle":{"center":{"x":0.0,"y":0.0},"radius":1.0}}"#;
    let area: f64 = stdout(&run(&["area", circle])).parse().unwrap();
    assert!((area - std::f64::consts::PI).abs() < 1e-12);
    assert_eq!(stdout(&run(&["area", r#""Empty""#])), "0.0");
    assert_eq!(stdout(&run(&["area", r#"{"Empty":null}"#])), "0.0");
    assert_eq!(
        stdout(&run(&["shapes", "2"])),
        r#"["Empty",{"Circle":{"center":{"x":1.0,"y":2.0},"radius":1.0}}]"#
    );
    assert_eq!(stdout(&run(&["make_bytes", "3", "7"])), "[7,7,7]");
    assert_eq!(stdout(&run(&["noop"])), "null");
    assert_eq!(stdout(&run(&["divide", "9", "3"])), "3");
    // Nested tasks run on the embedded node too.
    assert_eq!(stdout(&run(&["sum_by_tasks", "[1,2,3,4]"])), "10");
}

#[test]
fn inspect_lists_signatures() {
    let out = stdout(&ferry(&["inspect", testguest_path().to_str().unwrap()]));
    assert!(out.contains("add(a: i64, b: i64) -> i64"), "{out}");
    assert!(
        out.contains("divide(a: i64, b: i64) -> Result<i64, MathError>"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ABI version {}", ferry::ABI_VERSION)),
        "{out}"
    );
    let json = stdout(&ferry(&[
        "inspect",
        "--json",
        testguest_path().to_str().unwrap(),
    ]));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = doc["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo_and_get"), "{names:?}");
}

#[test]
fn errors_are_one_clear_line() {
    let e = error_line(&run(&["nope"]));
    assert!(e.contains("no function `nope`") && e.contains("add"), "{e}");
    let e = error_line(&run(&["add", "1"]));
    assert!(e.contains("takes 2 arguments, 1 were given"), "{e}");
    let e = error_line(&run(&["add", "1", "{oops"]));
    assert!(e.contains("argument 2 is not valid JSON"), "{e}");
    let e = error_line(&run(&["add", "1", "\"two\""]));
    assert!(e.contains("argument 2 `b: i64`"), "{e}");
    let e = error_line(&run(&["divide", "7", "0"]));
    assert!(e.contains("cannot divide 7 by zero"), "{e}");
    assert!(
        e.contains(r#"cause: {"DivideByZero":{"numerator":7}}"#),
        "{e}"
    );
    let e = error_line(&run(&["panics", "\"oh no\""]));
    assert!(e.contains("panicked: guest panicked: oh no"), "{e}");
    let e = error_line(&ferry(&["run", "/nonexistent/x.wasm", "f"]));
    assert!(e.contains("/nonexistent/x.wasm"), "{e}");
    let not_wasm = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_wasm.path(), b"hello").unwrap();
    let e = error_line(&ferry(&["inspect", not_wasm.path().to_str().unwrap()]));
    assert!(e.contains("invalid Wasm module"), "{e}");
    // A cause already in the message is not repeated.
    let e = error_line(&ferry(&[
        "run",
        "--cluster",
        "127.0.0.1:9",
        "--certs",
        "/nonexistent/certs",
        "/nonexistent/x.wasm",
        "f",
    ]));
    assert!(e.contains("/nonexistent/certs/ca.pem"), "{e}");
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "x.wasm", "f", "--store-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a size"));
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("inspect"));
}

#[test]
fn run_passes_and_shows_buffers_as_json_arrays() {
    // A Blob argument is a JSON array of bytes, stored out of band.
    assert_eq!(stdout(&run(&["blob_sum", "[1,2,3,250]"])), "[256,false]");
    // A result holding Buffer<f32> and Buffer<u64> shows their numbers.
    let out = stdout(&run(&["make_matrix", "2", "3"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"], serde_json::json!([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    assert_eq!(v["labels"], serde_json::json!([0, 1]));
    // And back in: a matrix given as JSON.
    let m = r#"{"rows":1,"cols":2,"data":[1.5,2.5],"labels":[7]}"#;
    assert_eq!(stdout(&run(&["matrix_sum", m])), "[4.0,7]");
    // A byte out of range is a clear, one-line error.
    let err = error_line(&run(&["blob_sum", "[1,256]"]));
    assert!(err.contains("256 is not a u8"), "{err}");
}

#[test]
fn run_prints_the_store_figures_on_request() {
    let o = run(&["make_bytes", "10", "1", "--stats"]);
    assert!(o.status.success());
    let stats: serde_json::Value =
        serde_json::from_slice(&o.stderr).expect("the figures are JSON on stderr");
    assert!(stats["store"]["capacity"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["store"]["spill"]["spilled_total"].is_u64(), "{stats}");
    assert!(stats["store"]["pinned_bytes"].is_u64(), "{stats}");
}
