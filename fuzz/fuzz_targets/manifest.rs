//! libFuzzer target `manifest`: see `ferry::fuzzing::manifest` for what it feeds and checks. Run with
//! `cargo +nightly fuzz run manifest corpus/manifest` from this directory; on stable, every `cargo test`
//! replays `corpus/manifest` and tries random inputs (`runtime/tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::manifest(data));
