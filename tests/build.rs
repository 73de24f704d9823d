//! Builds the guest test programs to Wasm and exposes each artefact's path as an environment
//! variable for `src/lib.rs`.

fn main() {
    ferry_guest_build::build_and_export(
        &[("FERRY_TESTGUEST_WASM", "guests/testguest")],
        &[
            "../guest-sdk/src",
            "../guest-sdk/abi/src",
            "../guest-sdk/macros/src",
        ],
    );
}
