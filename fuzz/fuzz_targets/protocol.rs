//! libFuzzer target `protocol`: see `ferry::fuzzing::protocol` for what it feeds and checks. Run with
//! `cargo +nightly fuzz run protocol corpus/protocol` from this directory; on stable, every `cargo test`
//! replays `corpus/protocol` and tries random inputs (`runtime/tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::fuzzing::protocol(data));
