//! Builds the benchmark guest to Wasm.

fn main() {
    ferry_guest_build::build_and_export(
        &[("BENCH_GUEST_WASM", "guest")],
        &[
            "../guest-sdk/src",
            "../guest-sdk/abi/src",
            "../guest-sdk/macros/src",
        ],
    );
}
