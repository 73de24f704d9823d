//! Monte Carlo estimate of pi over many tasks: each task throws darts from its own random
//! stream; the driver collects results as they finish with `wait`, like `ray.wait`.
//!
//! Run it with `cargo run --release -p ferry-examples --example pi [TASKS] [DARTS_PER_TASK]`.

use std::time::{Duration, Instant};

use ferry::Client;
use ferry_examples::{PI_WASM, config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("TASKS must be a number, got {s}"))?,
        None => 200,
    };
    let darts: u64 = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("DARTS_PER_TASK must be a number, got {s}"))?,
        None => 1_000_000,
    };
    let client = Client::embedded_with(config())?;
    let module = client.load(PI_WASM)?;
    let sample = module.function(pi_guest::sample::REMOTE)?;

    let start = Instant::now();
    let mut pending: Vec<_> = (0..tasks)
        .map(|seed| sample.call((seed, darts)))
        .collect::<Result<_, _>>()?;
    let mut inside = 0u64;
    let mut done = 0u64;
    while !pending.is_empty() {
        let n = pending.len().min(25);
        let (ready, rest) = client.wait(pending, n, Some(Duration::from_secs(60))).await;
        for r in &ready {
            inside += client.get(r).await?;
        }
        done += ready.len() as u64;
        pending = rest;
        let estimate = 4.0 * inside as f64 / (done * darts) as f64;
        println!("{done:>5}/{tasks} tasks: pi ~ {estimate:.6}");
    }
    let estimate = 4.0 * inside as f64 / (tasks * darts) as f64;
    let elapsed = start.elapsed();
    println!(
        "pi ~ {estimate:.6} (error {:.2e}) from {} darts in {:.2?} ({:.0} Mdarts/s)",
        (estimate - std::f64::consts::PI).abs(),
        tasks * darts,
        elapsed,
        (tasks * darts) as f64 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}
