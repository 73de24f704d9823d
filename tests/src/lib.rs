//! Helpers shared by ferry's integration tests: the guest artefacts and small, isolated nodes.

use std::path::{Path, PathBuf};

pub use ferry;

/// The Wasm bytes of `tests/guests/testguest`.
pub fn testguest_wasm() -> Vec<u8> {
    std::fs::read(env!("FERRY_TESTGUEST_WASM")).expect("the build script built the test guest")
}

/// Path of the test guest's `.wasm` file.
pub fn testguest_path() -> &'static Path {
    Path::new(env!("FERRY_TESTGUEST_WASM"))
}

/// Where tests put store files: `/dev/shm` where there is one (memory, a node's default; each
/// store file has a unique name and is unlinked once mapped), else `fallback`. Store files
/// are reserved in full up front, so on disk a test suite's many small stores would take disk
/// space that a build machine may not have to spare.
pub fn store_dir(fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        fallback.to_path_buf()
    }
}

/// A node configuration for tests: a small store (see [`store_dir`]), a private compile cache
/// and spill directory in `dir`, and short limits.
pub fn test_config(dir: &Path) -> ferry::NodeConfig {
    ferry::NodeConfig {
        store_dir: store_dir(dir),
        store_capacity: 64 << 20,
        cache_dir: Some(dir.join("cache")),
        workers: 2,
        time_limit: std::time::Duration::from_secs(20),
        memory_limit: 64 << 20,
        max_instances: 256,
        spill_dir: Some(dir.join("spill")),
        ..ferry::NodeConfig::default()
    }
}

/// An embedded node for a test, with the test guest loaded. Keep the `TempDir` alive.
pub fn node_with_guest() -> (tempfile::TempDir, ferry::Client, ferry::ModuleHandle) {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = ferry::Client::embedded_with(test_config(dir.path())).expect("node starts");
    let module = client.load(&testguest_wasm()).expect("test guest loads");
    (dir, client, module)
}

/// Waits until every task submitted to `client`'s node has finished, then returns the node's
/// live object count and store bytes in use. The bound only stops a hang; it is not a timing
/// assertion.
pub fn settle(client: &ferry::Client) -> (u64, u64) {
    let start = std::time::Instant::now();
    loop {
        let s = client.stats();
        if s.tasks_finished == s.tasks_submitted && s.objects.pending == 0 {
            return (s.objects.objects, s.store.used);
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "tasks never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
