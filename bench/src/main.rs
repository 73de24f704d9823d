//! ferry's benchmarks. Each test runs several timed repetitions and prints
//! `name per second X +- Y` like Ray's `ray microbenchmark`, then a table of ratios against
//! baselines measured in the same run.
//!
//! Run with `cargo run --release -p ferry-bench` (add test names to run only those, and
//! `--quick` for short repetitions); `cargo run --release -p ferry-bench -- store` runs the
//! object store suite (large puts against memcpy, gets, guest mapping, spilling). Figures are recorded in `docs/benchmarks.md`.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferry::{Client, NodeConfig, ObjectRef};

mod store;

const GUEST: &[u8] = include_bytes!(env!("BENCH_GUEST_WASM"));

/// Ray 2.60 on a 2-core machine like this one (from the issue tracker); shown for scale only,
/// they were not measured in this run.
const RAY: &[(&str, f64)] = &[
    ("single_client_tasks_sync", 700.0),
    ("single_client_tasks_async", 1_800.0),
    ("single_client_put_calls", 2_600.0),
    ("single_client_get_calls", 16_600.0),
];

struct Settings {
    reps: usize,
    rep_time: Duration,
}

struct Outcome {
    name: &'static str,
    mean: f64,
    std: f64,
}

/// Runs `batch` (which performs some operations and returns how many) until `rep_time` has
/// passed, `reps` times; prints and returns the rate.
fn measure(name: &'static str, s: &Settings, mut batch: impl FnMut() -> u64) -> Outcome {
    // Warm up.
    let warm = Instant::now();
    while warm.elapsed() < s.rep_time / 4 {
        batch();
    }
    let mut rates = Vec::with_capacity(s.reps);
    for _ in 0..s.reps {
        let start = Instant::now();
        let mut ops = 0;
        while start.elapsed() < s.rep_time {
            ops += batch();
        }
        rates.push(ops as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    let std = var.sqrt();
    println!("{name} per second {mean:.2} +- {std:.2}");
    Outcome { name, mean, std }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    // The store suite needs a few GiB of memory and a minute: only when asked for.
    if only.contains(&"store") {
        return store::run(GUEST, quick);
    }
    let s = Settings {
        reps: if quick { 2 } else { 5 },
        rep_time: if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    let config = NodeConfig {
        store_capacity: 512 << 20,
        cache_dir: Some(dir.join("cache")),
        ..NodeConfig::default()
    };
    let client = Client::embedded_with(config).context("starting the embedded node")?;
    let module = client.load(GUEST).context("loading the benchmark guest")?;
    let noop = module.function(bench_guest::noop::REMOTE)?;
    let mut results = Vec::new();

    if wanted("wasmtime_direct_noop") {
        let direct = direct::Direct::new(GUEST)?;
        results.push(measure("wasmtime_direct_noop", &s, || {
            for _ in 0..100 {
                direct.call_fresh_instance();
            }
            100
        }));
    }
    if wanted("single_client_tasks_sync") {
        results.push(measure("single_client_tasks_sync", &s, || {
            for _ in 0..100 {
                let r = noop.call(()).expect("call");
                rt.block_on(client.get(&r)).expect("get");
            }
            100
        }));
    }
    if wanted("single_client_tasks_async") {
        results.push(measure("single_client_tasks_async", &s, || {
            let refs: Vec<ObjectRef<()>> =
                (0..1000).map(|_| noop.call(()).expect("call")).collect();
            rt.block_on(client.get_many(&refs)).expect("get");
            1000
        }));
    }
    if wanted("single_client_put_calls") {
        results.push(measure("single_client_put_calls", &s, || {
            for i in 0..1000u64 {
                drop(client.put(&i).expect("put"));
            }
            1000
        }));
    }
    if wanted("single_client_get_calls") {
        let obj = client.put(&0u64)?;
        results.push(measure("single_client_get_calls", &s, || {
            for _ in 0..1000 {
                let v: u64 = rt.block_on(client.get(&obj)).expect("get");
                std::hint::black_box(v);
            }
            1000
        }));
    }

    println!();
    println!(
        "{:<30} {:>14} {:>10} {:>12} {:>10}",
        "test", "per second", "+-", "Ray 2.60*", "vs Ray"
    );
    for r in &results {
        let ray = RAY.iter().find(|(n, _)| *n == r.name).map(|(_, v)| *v);
        let (ray_s, ratio) = match ray {
            Some(v) => (format!("{v:.0}"), format!("{:.1}x", r.mean / v)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<30} {:>14.0} {:>10.0} {:>12} {:>10}",
            r.name, r.mean, r.std, ray_s, ratio
        );
    }
    if let (Some(direct), Some(sync)) = (
        results.iter().find(|r| r.name == "wasmtime_direct_noop"),
        results
            .iter()
            .find(|r| r.name == "single_client_tasks_sync"),
    ) {
        println!();
        println!(
            "a synchronous ferry call costs {:.1} us; a fresh wasmtime instance plus the call, {:.1} us \
             (ferry's overhead over raw wasmtime: {:.1}x)",
            1e6 / sync.mean,
            1e6 / direct.mean,
            direct.mean / sync.mean
        );
        if let Some(asynch) = results
            .iter()
            .find(|r| r.name == "single_client_tasks_async")
        {
            println!(
                "with 1,000 calls in flight ferry reaches {:.2}x the single-threaded raw wasmtime rate",
                asynch.mean / direct.mean
            );
        }
    }
    println!("* Ray figures are from the issue (Ray 2.60, 2 cores), not measured in this run.");
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

mod direct {
    //! The baseline: the same no-op export called straight through wasmtime, with the same
    //! engine settings ferry uses (pooling allocator, epoch interruption, async), a fresh
    //! instance per call from an `InstancePre`, and host functions that do nothing.

    use wasmtime::{
        Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
        PoolingAllocationConfig, Store,
    };

    pub struct Direct {
        engine: Engine,
        pre: InstancePre<()>,
        rt: tokio::runtime::Runtime,
    }

    impl Direct {
        pub fn new(wasm: &[u8]) -> anyhow::Result<Self> {
            let mut cfg = Config::new();
            cfg.epoch_interruption(true)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(
                    PoolingAllocationConfig::default(),
                ));
            let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
            let module = Module::new(&engine, wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut linker: Linker<()> = Linker::new(&engine);
            for import in module.imports() {
                let ty = import
                    .ty()
                    .func()
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("non-function import"))?;
                linker
                    .func_new(import.module(), import.name(), ty, |_, _, results| {
                        for r in results.iter_mut() {
                            *r = match r {
                                wasmtime::Val::I64(_) => wasmtime::Val::I64(0),
                                _ => wasmtime::Val::I32(0),
                            };
                        }
                        Ok(())
                    })
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let pre = linker
                .instantiate_pre(&module)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            Ok(Self { engine, pre, rt })
        }

        /// One call of `noop` in a fresh instance.
        pub fn call_fresh_instance(&self) {
            self.rt.block_on(async {
                let mut store = Store::new(&self.engine, ());
                store.set_epoch_deadline(u64::MAX / 2);
                let instance = self
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .expect("instantiate");
                let f = instance
                    .get_typed_func::<(i32, i32), i32>(&mut store, "__ferry_fn_noop")
                    .expect("export");
                f.call_async(&mut store, (0, 0)).await.expect("call");
            });
        }
    }
}
