//! ferry's benchmarks.
//!
//! `ferry-bench` runs the equivalents of Ray's `ray microbenchmark` (`ray/_private/ray_perf.py`)
//! with the same names, workloads and timing rule, through the public driver API, and prints
//! each as `name per second X +- Y` like Ray does. It also measures `small_value` called
//! straight through wasmtime, as a baseline in the same run. `bench/compare-ray.sh` runs Ray's
//! suite and this one back to back and prints the table recorded in `docs/benchmarks.md`.
//!
//! Usage: `cargo run --release -p ferry-bench [-- [--quick] [TEST...]]`, where a test is a name
//! or a part of one (like Ray's `TESTS_TO_RUN`). `cargo run --release -p ferry-bench -- store`
//! runs the object store suite instead (large puts against memcpy, gets, guest mapping,
//! spilling), and `-- cluster` the two-node suite (calls and object transfers over QUIC
//! against the same node and a plain TCP socket).

use std::time::{Duration, Instant};

use anyhow::Context;
use bench_guest::{
    create_object_containing_ref, do_put, do_put_small, small_value, small_value_batch,
};
use ferry::{Buffer, Client, NodeConfig, ObjectRef};

mod cluster;
mod direct;
mod store;

const GUEST: &[u8] = include_bytes!(env!("BENCH_GUEST_WASM"));

/// How long each test runs, after Ray's `timeit`.
struct Timing {
    /// Pause before each test (Ray: 10 s, "to avoid noisy neighbours").
    settle: Duration,
    /// Warm-up; its call count sets the step (Ray: 1 s).
    warmup: Duration,
    /// Timed repetitions (Ray: 4) ...
    reps: usize,
    /// ... each at least this long (Ray: 2 s).
    rep_time: Duration,
}

impl Timing {
    fn full() -> Self {
        Self {
            settle: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            reps: 4,
            rep_time: Duration::from_secs(2),
        }
    }

    fn quick() -> Self {
        Self {
            settle: Duration::ZERO,
            warmup: Duration::from_millis(100),
            reps: 2,
            rep_time: Duration::from_millis(200),
        }
    }
}

/// One test's figure: operations per second, mean and standard deviation over repetitions.
struct Outcome {
    name: &'static str,
    mean: f64,
    std: f64,
}

/// Ray's `timeit(name, fn, multiplier)`: warm up, then `reps` repetitions that each call `f`
/// in steps of a tenth of the warm-up count until `rep_time` has passed; the rate of a
/// repetition is `multiplier * calls / seconds`. Prints `name per second X +- Y`.
fn timeit(t: &Timing, name: &'static str, multiplier: f64, mut f: impl FnMut()) -> Outcome {
    std::thread::sleep(t.settle);
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < t.warmup {
        f();
        count += 1;
    }
    let step = count / 10 + 1;
    let mut rates = Vec::with_capacity(t.reps);
    for _ in 0..t.reps {
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < t.rep_time {
            for _ in 0..step {
                f();
            }
            count += step;
        }
        rates.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    let std = var.sqrt();
    println!("{name} per second {mean:.2} +- {std:.2}");
    Outcome { name, mean, std }
}

fn main() -> anyhow::Result<()> {
    // The node's log, as `ferry` prints it: `FERRY_LOG=ferry=debug` shows spills and mappings.
    ferry::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    const USAGE: &str = "usage: ferry-bench [--quick] [store | cluster | TEST...]\n\
                         (a TEST is a name or part of one, like Ray's TESTS_TO_RUN)";
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    if let Some(bad) = args.iter().find(|a| a.starts_with('-') && *a != "--quick") {
        anyhow::bail!("unknown option {bad}; {USAGE}");
    }
    let only: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    // The store suite needs a few GiB of memory and a minute: only when asked for.
    if only.contains(&"store") {
        return store::run(GUEST, quick);
    }
    // Two nodes over QUIC: also only when asked for.
    if only.contains(&"cluster") {
        return cluster::run(GUEST, quick);
    }
    let timing = if quick {
        Timing::quick()
    } else {
        Timing::full()
    };
    let dir = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    let result = ray_suite(&dir, &timing, &only);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Ray's `ray microbenchmark` tests (all but the actor, placement-group and Ray Client ones:
/// ferry has none of those yet), in Ray's order.
fn ray_suite(dir: &std::path::Path, timing: &Timing, only: &[&str]) -> anyhow::Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o));
    // A user's driver: async code on a tokio runtime of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Room for the 800 MiB array and for ten `do_put` calls' 80 MiB arrays at once (each is
    // freed when its ref drops, as in Ray); Ray's store on this machine is ~7 GiB.
    let config = NodeConfig {
        store_capacity: 4 << 30,
        cache_dir: Some(dir.join("cache")),
        spill_dir: Some(dir.join("spill")),
        ..NodeConfig::default()
    };
    let client = Client::embedded_with(config).context("starting the embedded node")?;
    store::warm(&client)?;
    let module = client.load(GUEST).context("loading the benchmark guest")?;
    let small_value = module.function(small_value::REMOTE)?;
    let do_put_small = module.function(do_put_small::REMOTE)?;
    let do_put = module.function(do_put::REMOTE)?;
    let create_object_containing_ref = module.function(create_object_containing_ref::REMOTE)?;
    let small_value_batch = module.function(small_value_batch::REMOTE)?;
    let mut results = Vec::new();
    let mut run = |name: &'static str, multiplier: f64, f: &mut dyn FnMut()| {
        if wanted(name) {
            results.push(timeit(timing, name, multiplier, f));
        }
    };

    let value = client.put(&0u64)?;
    run("single_client_get_calls", 1.0, &mut || {
        let v: u64 = rt.block_on(client.get(&value)).expect("get");
        std::hint::black_box(v);
    });
    run("single_client_put_calls", 1.0, &mut || {
        drop(client.put(&0u64).expect("put"));
    });
    run("multi_client_put_calls", 1000.0, &mut || {
        let refs: Vec<ObjectRef<()>> = (0..10)
            .map(|_| do_put_small.call(()).expect("call"))
            .collect();
        rt.block_on(client.get_many(&refs)).expect("get");
    });
    // `np.zeros(100 * 1024 * 1024, dtype=np.int64)`: 800 MiB, counted as 0.8 GB like Ray.
    let arr = Buffer::new(vec![0i64; 100 * 1024 * 1024]);
    run("single_client_put_gigabytes", 0.8, &mut || {
        drop(client.put(&arr).expect("put"));
    });
    drop(arr);
    run("single_client_tasks_and_get_batch", 1.0, &mut || {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..1000)
            .map(|_| small_value.call(()).expect("call"))
            .collect();
        rt.block_on(client.get_many(&refs)).expect("get");
    });
    // Ten tasks, each putting ten 80 MiB arrays: 8 GB per round, like Ray.
    run("multi_client_put_gigabytes", 8.0, &mut || {
        let refs: Vec<ObjectRef<()>> = (0..10).map(|_| do_put.call(()).expect("call")).collect();
        rt.block_on(client.get_many(&refs)).expect("get");
    });
    let containing = create_object_containing_ref.call(())?;
    run(
        "single_client_get_object_containing_10k_refs",
        1.0,
        &mut || {
            let refs = rt.block_on(client.get(&containing)).expect("get");
            assert_eq!(refs.len(), 10_000);
        },
    );
    run("single_client_wait_1k_refs", 1.0, &mut || {
        let mut not_ready: Vec<ObjectRef<Vec<u8>>> = (0..1000)
            .map(|_| small_value.call(()).expect("call"))
            .collect();
        for _ in 0..1000 {
            let (_ready, rest) = rt.block_on(client.wait(not_ready, 1, None));
            not_ready = rest;
        }
    });
    run("single_client_tasks_sync", 1.0, &mut || {
        let r = small_value.call(()).expect("call");
        rt.block_on(client.get(&r)).expect("get");
    });
    run("single_client_tasks_async", 1000.0, &mut || {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..1000)
            .map(|_| small_value.call(()).expect("call"))
            .collect();
        rt.block_on(client.get_many(&refs)).expect("get");
    });
    // Ray: four actors, each submitting 10,000 `small_value` tasks and getting them. Here the
    // clients are four guest calls that submit nested calls.
    run("multi_client_tasks_async", 40_000.0, &mut || {
        let refs: Vec<ObjectRef<()>> = (0..4)
            .map(|_| small_value_batch.call((10_000,)).expect("call"))
            .collect();
        rt.block_on(client.get_many(&refs)).expect("get");
    });
    // The baseline: `small_value` called straight through wasmtime, one fresh instance per call.
    let direct = direct::Direct::new(GUEST)?;
    run("wasmtime_direct_small_value", 1.0, &mut || {
        direct.call_fresh_instance("small_value");
    });

    let find = |name: &str| results.iter().find(|r| r.name == name);
    println!();
    println!("{:<46} {:>14} {:>12}", "test", "per second", "+-");
    for r in &results {
        println!("{:<46} {:>14.2} {:>12.2}", r.name, r.mean, r.std);
    }
    if let Some(direct) = find("wasmtime_direct_small_value") {
        if let Some(sync) = find("single_client_tasks_sync") {
            println!(
                "\na synchronous ferry call costs {:.1} us; a fresh wasmtime instance plus the \
                 call, {:.1} us (ferry's overhead over raw wasmtime: {:.1}x)",
                1e6 / sync.mean,
                1e6 / direct.mean,
                direct.mean / sync.mean
            );
        }
        if let Some(asynch) = find("single_client_tasks_async") {
            println!(
                "with 1,000 calls in flight ferry reaches {:.2}x the single-threaded raw wasmtime rate",
                asynch.mean / direct.mean
            );
        }
    }
    drop(client);
    Ok(())
}
