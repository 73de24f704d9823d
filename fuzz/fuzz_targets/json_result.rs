//! libFuzzer target `json_result`: see `ferry::fuzzing::json_result` for what it feeds and checks. Run with
//! `cargo +nightly fuzz run json_result corpus/json_result` from this directory; on stable, every `cargo test`
//! replays `corpus/json_result` and tries random inputs (`runtime/tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::json_result(data));
