//! libFuzzer target `layout`: see `ferry::fuzzing::layout` for what it feeds and checks. Run with
//! `cargo +nightly fuzz run layout corpus/layout` from this directory; on stable, every `cargo test`
//! replays `corpus/layout` and tries random inputs (`runtime/tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::layout(data));
