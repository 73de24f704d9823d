//! The wasmtime engine of a node and its epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::NodeConfig;

/// The engine plus the thread that advances its epoch.
pub struct WasmEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WasmEngine")
    }
}

impl WasmEngine {
    /// An engine for `config`: pooled instances (copy-on-write memory images), epoch
    /// interruption, async host functions.
    pub fn new(config: &NodeConfig) -> Result<Self, wasmtime::Error> {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances.max(1);
        pool.total_core_instances(n)
            .total_memories(n)
            .total_tables(n)
            .total_stacks(n)
            .max_memory_size(config.memory_limit as usize)
            // Resetting a slot with madvise makes the kernel shoot down TLB entries on every
            // core running a worker, once per call. Instead, find the pages a call dirtied
            // (PAGEMAP_SCAN, Linux 6.7+) and zero them in place, and batch what still needs
            // decommitting.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto)
            .decommit_batch_size(32);
        let mut cfg = Config::new();
        cfg.epoch_interruption(true)
            // Store buffers are mapped into linear memory at fixed addresses (wasm/windows.rs):
            // memory must never be moved to grow it.
            .memory_may_move(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.epoch_tick.max(Duration::from_millis(1));
            std::thread::Builder::new()
                .name("ferry-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| wasmtime::Error::msg(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(Self {
            engine,
            stop,
            ticker: Some(ticker),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fingerprint of the engine's code generation settings: compiled modules are only
    /// reused by engines with the same fingerprint.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// The error a task's time limit raises inside wasmtime.
#[derive(Debug)]
pub struct TimeLimitExceeded;

impl std::fmt::Display for TimeLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("time limit exceeded")
    }
}
impl std::error::Error for TimeLimitExceeded {}

/// The error a task's memory limit raises inside wasmtime.
#[derive(Debug)]
pub struct MemoryLimitExceeded;

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit exceeded")
    }
}
impl std::error::Error for MemoryLimitExceeded {}

/// Enforces the memory limit. Growing past it traps at once with [`MemoryLimitExceeded`], so
/// the task error can say so instead of reporting an allocation failure.
#[derive(Debug)]
pub struct MemoryLimiter {
    /// Most bytes one linear memory may have.
    pub limit: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            Err(wasmtime::Error::new(MemoryLimitExceeded))
        } else {
            Ok(true)
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
