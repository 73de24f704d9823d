//! The example guests, built to Wasm by `build.rs` and embedded here. The drivers are the
//! `[[example]]`s beside this crate: `cargo run -p ferry-examples --example quickstart`.

/// `guests/quickstart` as Wasm.
pub const QUICKSTART_WASM: &[u8] = include_bytes!(env!("QUICKSTART_WASM"));
/// `guests/wordcount` as Wasm.
pub const WORDCOUNT_WASM: &[u8] = include_bytes!(env!("WORDCOUNT_WASM"));
/// `guests/pi` as Wasm.
pub const PI_WASM: &[u8] = include_bytes!(env!("PI_WASM"));

/// A node configuration for the examples: the defaults, with a modest store.
pub fn config() -> ferry::NodeConfig {
    ferry::NodeConfig {
        store_capacity: 256 << 20,
        ..ferry::NodeConfig::default()
    }
}
