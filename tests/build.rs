//! Builds the guest test programs to Wasm and exposes each artefact's path as an environment
//! variable for `src/lib.rs`.

fn main() {
    let sdk = [
        "../guest-sdk/src",
        "../guest-sdk/abi/src",
        "../guest-sdk/macros/src",
    ];
    for (env, dir) in [("FERRY_TESTGUEST_WASM", "guests/testguest")] {
        let mut guest = ferry_guest_build::Guest::new(dir);
        for s in sdk {
            guest = guest.watch(s);
        }
        match guest.build() {
            Ok(path) => println!("cargo:rustc-env={env}={}", path.display()),
            Err(e) => panic!("building guest {dir}: {e}"),
        }
    }
}
