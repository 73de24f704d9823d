//! Node configuration.

use std::path::PathBuf;
use std::time::Duration;

/// How a node is set up. `NodeConfig::default()` suits a laptop; every field can be changed.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory of the object store file. Default: `/dev/shm` where it exists (memory-backed),
    /// else the system temporary directory.
    pub store_dir: PathBuf,
    /// Object store capacity in bytes, reserved in full at start-up. Default: 1 GiB, or a
    /// quarter of the memory if that is less.
    pub store_capacity: u64,
    /// Touch every page of the store once at start-up, in the background, so that writing
    /// objects does not pay page faults. Default: on.
    pub prefault: bool,
    /// Directory under which the node spills objects when the store is full (it makes a
    /// private subdirectory, removed when it stops). `None` turns spilling off: a full store
    /// fails puts at once. Default: `$TMPDIR/ferry-spill`.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes that may be spilled at once. `None`: as much as the disk holds. Default: none.
    pub spill_capacity: Option<u64>,
    /// Buffers at least this large that a guest reads are mapped copy-on-write into its memory
    /// instead of copied (at least one page, 4 KiB). Default: 64 KiB.
    pub map_threshold: u64,
    /// Directory for compiled modules, so a restarted node does not compile again. `None`
    /// disables the disk cache. Default: `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`, else
    /// `~/.cache/ferry`.
    pub cache_dir: Option<PathBuf>,
    /// Threads running guest code. Default: the number of cores.
    pub workers: usize,
    /// Longest time a call may run guest code (time spent waiting for objects does not
    /// count). Default: 60 s.
    pub time_limit: Duration,
    /// Most linear memory one guest instance may use, in bytes. Default: 1 GiB.
    pub memory_limit: u64,
    /// Most guest instances alive at once (running or waiting inside a call). Default: 1000.
    pub max_instances: u32,
    /// How often running guests are interrupted to check their time limit and let others run.
    /// Default: 10 ms.
    pub epoch_tick: Duration,
    /// Most calls this node holds unfinished (its own, queued or running here, and the calls
    /// it runs for other nodes). Calls made by guests may take three quarters of them; past
    /// that a guest's call fails with [`CallError::Overloaded`](crate::CallError::Overloaded),
    /// so a self-forking guest cannot keep drivers' calls out. Past the whole limit a driver's
    /// call fails the same way, and a peer's call fails with a host error. Default: 100,000.
    pub max_pending_calls: u64,
    /// Most unfinished calls one running task may have made (its children still queued or
    /// running); past that its next call fails with
    /// [`CallError::Overloaded`](crate::CallError::Overloaded). Default: 10,000.
    pub max_calls_per_task: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let shm = PathBuf::from("/dev/shm");
        let store_dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        Self {
            store_dir,
            store_capacity: default_capacity(),
            prefault: true,
            spill_dir: Some(std::env::temp_dir().join("ferry-spill")),
            spill_capacity: None,
            map_threshold: 64 << 10,
            cache_dir: default_cache_dir(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            time_limit: Duration::from_secs(60),
            memory_limit: 1 << 30,
            max_instances: 1000,
            epoch_tick: Duration::from_millis(10),
            max_pending_calls: 100_000,
            max_calls_per_task: 10_000,
        }
    }
}

impl NodeConfig {
    /// A small node in `dir` for the crate's unit tests: a 16 MiB store, no compile cache, no
    /// spilling, no prefaulting.
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &std::path::Path) -> Self {
        Self {
            store_dir: dir.to_path_buf(),
            store_capacity: 16 << 20,
            prefault: false,
            cache_dir: None,
            spill_dir: None,
            ..Self::default()
        }
    }
}

fn default_capacity() -> u64 {
    const GIB: u64 = 1 << 30;
    // SAFETY: sysconf reads a system constant and takes no pointers.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page > 0 {
        (pages as u64 * page as u64 / 4).clamp(64 << 20, GIB)
    } else {
        GIB
    }
}

/// The default directory for compiled modules.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FERRY_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ferry"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("ferry"))
}
