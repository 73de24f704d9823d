//! Two-node benchmarks (`ferry-bench cluster`): a worker node and a driver, each with its own
//! store and QUIC endpoint, on 127.0.0.1 with mutual TLS, in one process.
//!
//! - no-op calls across the nodes (round trip, and throughput with 1,000 in flight), against
//!   the same calls on the worker's own node (no network) in the same run;
//! - object transfer: the driver puts a `Blob` of 1 MiB, 64 MiB or 1 GiB and calls `blob_len`
//!   on the worker, which pulls the bytes over QUIC straight into its store; against a plain
//!   TCP socket on loopback copying the same number of bytes into a warm buffer.

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::Context;
use bench_guest::{blob_len, small_value};
use ferry::{Blob, Client, ClusterOptions, Credentials, NodeConfig, ObjectRef};

use crate::store::{in_temp_dir, label, stats, warm};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

pub fn run(guest: &[u8], quick: bool) -> anyhow::Result<()> {
    in_temp_dir("cluster", |dir| run_in(dir, guest, quick))
}

fn config(dir: &std::path::Path, name: &str, capacity: u64) -> NodeConfig {
    NodeConfig {
        store_capacity: capacity,
        cache_dir: Some(dir.join("cache")),
        spill_dir: Some(dir.join(format!("{name}-spill"))),
        memory_limit: 3 << 30,
        workers: 2,
        ..NodeConfig::default()
    }
}

fn run_in(dir: &std::path::Path, guest: &[u8], quick: bool) -> anyhow::Result<()> {
    let ca = dir.join("ca");
    ferry::create_ca(&ca)?;
    ferry::issue_cert(&ca, &dir.join("worker"), "worker", ferry::CertRole::Node)?;
    ferry::issue_cert(&ca, &dir.join("driver"), "driver", ferry::CertRole::Client)?;

    let mut opts = ClusterOptions::new(Credentials::load(&dir.join("worker"))?);
    opts.listen = Some("127.0.0.1:0".parse()?);
    let worker = Client::start_node(config(dir, "worker", 5 << 29), opts)
        .context("starting the worker node")?;
    let head = worker.listen_addr().context("the worker listens")?;
    let driver = Client::connect(
        head,
        Credentials::load(&dir.join("driver"))?,
        config(dir, "driver", 5 << 29),
    )
    .context("connecting the driver")?;
    warm(&worker)?;
    warm(&driver)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    println!("# two nodes on 127.0.0.1 (QUIC, mutual TLS), 2 worker threads on the worker");
    let local = worker.load(guest)?;
    let remote = driver.load(guest)?;
    let n_sync = if quick { 300 } else { 2_000 };
    let n_async = if quick { 2_000 } else { 20_000 };
    for (name, module) in [("same node", &local), ("across nodes", &remote)] {
        let f = module.function(small_value::REMOTE)?;
        let client = module.client();
        // Warm up (module fetched and compiled on the worker, connections made).
        let warmup: Vec<ObjectRef<Vec<u8>>> = (0..200).map(|_| f.call(()).expect("call")).collect();
        rt.block_on(client.get_many(&warmup))?;
        let t = Instant::now();
        for _ in 0..n_sync {
            let r = f.call(())?;
            std::hint::black_box(rt.block_on(client.get(&r))?);
        }
        let rtt = t.elapsed().as_secs_f64() / n_sync as f64;
        let t = Instant::now();
        let mut done = 0;
        while done < n_async {
            let refs: Vec<ObjectRef<Vec<u8>>> =
                (0..1000).map(|_| f.call(()).expect("call")).collect();
            rt.block_on(client.get_many(&refs))?;
            done += 1000;
        }
        let rate = done as f64 / t.elapsed().as_secs_f64();
        println!(
            "no-op call, {name:<12}  round trip {:>7.1} us   throughput {:>8.0} calls/s (1,000 in flight)",
            rtt * 1e6,
            rate
        );
    }

    let f = remote.function(blob_len::REMOTE)?;
    for size in [MIB, 64 * MIB, GIB] {
        let reps = match (size, quick) {
            (s, _) if s >= GIB => 3,
            (s, true) if s >= 64 * MIB => 3,
            (s, false) if s >= 64 * MIB => 10,
            (_, true) => 20,
            (_, false) => 200,
        };
        let blob = driver.put(&Blob::from(pattern(size)))?;
        let mut ferry_s = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let r = f.call((&blob,))?;
            let len = rt.block_on(driver.get(&r))?;
            ferry_s.push(t.elapsed().as_secs_f64());
            assert_eq!(len, size as u64);
        }
        drop(blob);
        let tcp_s = tcp_copy(size, reps)?;
        let (fm, fsd) = stats(&ferry_s);
        let (tm, tsd) = stats(&tcp_s);
        let gb = |s: f64| size as f64 / s / 1e9;
        println!(
            "transfer {:>5}: ferry {:>6.2} GB/s (+- {:.2})   tcp socket {:>6.2} GB/s (+- {:.2})   ferry/tcp {:.2}x",
            label(size),
            gb(fm),
            gb(fm) - gb(fm + fsd),
            gb(tm),
            gb(tm) - gb(tm + tsd),
            tm / fm
        );
    }
    Ok(())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Seconds to copy `size` bytes over a loopback TCP connection into a warm buffer, `reps`
/// times (a new connection each time, as a pull opens a new stream).
fn tcp_copy(size: usize, reps: usize) -> anyhow::Result<Vec<f64>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let data = pattern(size);
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..reps {
            let (mut s, _) = listener.accept()?;
            s.write_all(&data)?;
        }
        Ok(())
    });
    let mut buf = vec![1u8; size];
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr)?;
        s.read_exact(&mut buf)?;
        out.push(t.elapsed().as_secs_f64());
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP server panicked"))??;
    std::hint::black_box(&buf);
    Ok(out)
}
