//! Builds the example guests to Wasm; `src/lib.rs` embeds the artefacts.

fn main() {
    ferry_guest_build::build_and_export(
        &[
            ("QUICKSTART_WASM", "guests/quickstart"),
            ("WORDCOUNT_WASM", "guests/wordcount"),
            ("PI_WASM", "guests/pi"),
        ],
        &[
            "../guest-sdk/src",
            "../guest-sdk/abi/src",
            "../guest-sdk/macros/src",
        ],
    );
}
