//! The fuzz targets on stable Rust, bounded: every input in `fuzz/corpus/<target>/` (seeds,
//! and inputs that once found a bug) is replayed, then random inputs are tried (256 per
//! target; `PROPTEST_CASES` sets more). Under libFuzzer, with nightly, the same targets run
//! without bound: `cargo +nightly fuzz run <target>` in `fuzz/` (see fuzz/README.md).

use std::path::PathBuf;

use ferry::fuzzing;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        // A panic names the input that caused it.
        let ok = std::panic::catch_unwind(|| run(&bytes));
        assert!(ok.is_ok(), "{target} failed on {}", path.display());
    }
}

#[test]
fn the_corpus_replays_cleanly() {
    replay("protocol", fuzzing::protocol);
    replay("layout", fuzzing::layout);
    replay("manifest", fuzzing::manifest);
    replay("json_result", fuzzing::json_result);
}

/// The manifest seeds decode, so the fuzzer starts from real signatures.
#[test]
fn the_manifest_seeds_are_signatures() {
    for (path, bytes) in corpus("manifest") {
        let sig = postcard::from_bytes::<ferry_abi::manifest::FunctionSig>(&bytes);
        assert!(sig.is_ok(), "{}: {sig:?}", path.display());
    }
}

proptest::proptest! {
    #[test]
    fn random_frames(data: Vec<u8>) {
        fuzzing::protocol(&data);
    }

    #[test]
    fn random_object_headers(data: Vec<u8>) {
        fuzzing::layout(&data);
    }

    #[test]
    fn random_manifests(data: Vec<u8>) {
        fuzzing::manifest(&data);
    }

    #[test]
    fn random_results(data: Vec<u8>) {
        fuzzing::json_result(&data);
    }
}
