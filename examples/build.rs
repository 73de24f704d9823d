//! Builds the example guests to Wasm; `src/lib.rs` embeds the artefacts.

fn main() {
    let sdk = [
        "../guest-sdk/src",
        "../guest-sdk/abi/src",
        "../guest-sdk/macros/src",
    ];
    for (env, dir) in [
        ("QUICKSTART_WASM", "guests/quickstart"),
        ("WORDCOUNT_WASM", "guests/wordcount"),
        ("PI_WASM", "guests/pi"),
    ] {
        let mut guest = ferry_guest_build::Guest::new(dir);
        for s in sdk {
            guest = guest.watch(s);
        }
        match guest.build() {
            Ok(path) => println!("cargo:rustc-env={env}={}", path.display()),
            Err(e) => panic!("building {dir}: {e}"),
        }
    }
}
