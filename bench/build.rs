//! Builds the benchmark guest to Wasm.

fn main() {
    let guest = ferry_guest_build::Guest::new("guest")
        .watch("../guest-sdk/src")
        .watch("../guest-sdk/abi/src")
        .watch("../guest-sdk/macros/src");
    match guest.build() {
        Ok(path) => println!("cargo:rustc-env=BENCH_GUEST_WASM={}", path.display()),
        Err(e) => panic!("building the benchmark guest: {e}"),
    }
}
