//! Object store benchmarks (`ferry-bench store`): large `put`s against `memcpy`, host `get`
//! across sizes, guest reads mapped against copied, spilling against plain file I/O. Each
//! figure is printed with its baseline, measured in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferry::{Blob, Client, NodeConfig, ObjectRef};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

pub(crate) fn label(size: usize) -> String {
    if size >= GIB {
        format!("{}GiB", size / GIB)
    } else if size >= MIB {
        format!("{}MiB", size / MIB)
    } else {
        format!("{}KiB", size / 1024)
    }
}

/// Repetitions for a size: enough to move ~2 GiB, at least 3, at most 200.
fn reps(size: usize, quick: bool) -> usize {
    let r = ((2 * GIB) / size).clamp(3, 200);
    if quick { r.clamp(2, 5) } else { r }
}

/// Mean and standard deviation of `samples` (seconds).
pub(crate) fn stats(samples: &[f64]) -> (f64, f64) {
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / samples.len() as f64;
    (mean, var.sqrt())
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn node(dir: &std::path::Path, capacity: u64, map_threshold: u64) -> anyhow::Result<Client> {
    let config = NodeConfig {
        store_capacity: capacity,
        cache_dir: Some(dir.join("cache")),
        spill_dir: Some(dir.join("spill")),
        memory_limit: 3 << 30,
        map_threshold,
        workers: 2,
        ..NodeConfig::default()
    };
    Client::embedded_with(config).context("starting a benchmark node")
}

/// Waits for the background prefault of a fresh store (so it does not compete with the
/// measurements) by putting and freeing one object the size of the store's free space.
pub(crate) fn warm(client: &Client) -> anyhow::Result<()> {
    let free = client.stats().store.largest_free as usize;
    let r = client.put(&Blob::from(vec![1u8; free - 64 * 1024]))?;
    drop(r);
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

pub fn run(guest: &[u8], quick: bool) -> anyhow::Result<()> {
    in_temp_dir("store", |dir| run_in(dir, guest, quick))
}

/// Runs `f` in a fresh directory `$TMPDIR/ferry-bench-NAME-PID`, removed afterwards.
pub(crate) fn in_temp_dir(
    name: &str,
    f: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ferry-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = f(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &std::path::Path, guest: &[u8], quick: bool) -> anyhow::Result<()> {
    let big = if quick { 256 * MIB } else { GIB };
    let sizes = [MIB, 64 * MIB, big];
    let client = node(dir, (big + 256 * MIB) as u64 * 2, 64 << 10)?;
    warm(&client)?;

    println!("\n== put of a Blob (one copy into the store) against memcpy into warm memory ==");
    println!(
        "{:<22} {:>12} {:>10} {:>14} {:>8}",
        "size", "put GB/s", "+-", "memcpy GB/s", "ratio"
    );
    for &size in &sizes {
        let src = Blob::from(vec![7u8; size]);
        let mut dst = vec![0u8; size];
        // Fault the destination in first: the baseline is a copy into warm memory.
        dst.fill(1);
        let n = reps(size, quick);
        let mut put = Vec::with_capacity(n);
        let mut copy = Vec::with_capacity(n);
        for _ in 0..n {
            copy.push(timed(|| dst.copy_from_slice(&src)));
            std::hint::black_box(&dst);
            let mut r = None;
            put.push(timed(|| r = Some(client.put(&src).expect("put"))));
            drop(r);
        }
        let (p, ps) = stats(&put);
        let (c, _) = stats(&copy);
        println!(
            "{:<22} {:>12.2} {:>10.2} {:>14.2} {:>7.2}x",
            format!("put_blob_{}", label(size)),
            gbps(size, p),
            gbps(size, p) - gbps(size, p + ps),
            gbps(size, c),
            c / p
        );
    }

    println!("\n== host get of a Blob (a view into the store, no copy) ==");
    println!("{:<22} {:>14} {:>10}", "size", "us per get", "+-");
    let mut get_sizes = vec![4 * 1024, MIB, 64 * MIB];
    get_sizes.push(big);
    for size in get_sizes {
        let r: ObjectRef<Blob> = client.put(&Blob::from(vec![3u8; size]))?;
        let mut t = Vec::new();
        for _ in 0..if quick { 200 } else { 2000 } {
            t.push(timed(|| {
                let b: Blob = client.get_blocking(&r).expect("get");
                std::hint::black_box(b.len());
            }));
        }
        let (m, s) = stats(&t);
        println!(
            "{:<22} {:>14.2} {:>10.2}",
            format!("get_blob_{}", label(size)),
            m * 1e6,
            s * 1e6
        );
    }
    drop(client);

    println!("\n== a guest reading a Blob argument: mapped copy-on-write against copied ==");
    println!("(get: the guest takes the argument and returns its length; get+touch: it also");
    println!(" reads one byte per page, paying the page faults of first access either way)");
    println!(
        "{:<22} {:>11} {:>11} {:>9} {:>13} {:>13}",
        "size", "mapped ms", "copied ms", "speed-up", "mapped+touch", "copied+touch"
    );
    let capacity = (big + 256 * MIB) as u64;
    let mapped = node(&dir.join("mapped"), capacity, 64 << 10)?;
    let copied = node(&dir.join("copied"), capacity, u64::MAX)?;
    let mut guest_sizes = vec![MIB, 16 * MIB, 64 * MIB, 256 * MIB];
    if !quick {
        guest_sizes.push(GIB);
    }
    let mut mods = Vec::new();
    for c in [&mapped, &copied] {
        let m = c.load(guest)?;
        mods.push((
            m.function(bench_guest::blob_len::REMOTE)?,
            m.function(bench_guest::touch_blob::REMOTE)?,
        ));
    }
    for size in guest_sizes {
        let mut ms = Vec::new();
        for touch in [false, true] {
            for (c, (len_fn, touch_fn)) in [&mapped, &copied].into_iter().zip(&mods) {
                let r = c.put(&Blob::from(vec![1u8; size]))?;
                let n = if size >= GIB { 3 } else { 10 };
                let mut t = Vec::new();
                for _ in 0..n {
                    t.push(timed(|| {
                        if touch {
                            let out = touch_fn.call((r.clone(),)).expect("call");
                            c.get_blocking(&out).expect("guest ran");
                        } else {
                            let out = len_fn.call((r.clone(),)).expect("call");
                            c.get_blocking(&out).expect("guest ran");
                        }
                    }));
                }
                ms.push(stats(&t).0 * 1e3);
            }
        }
        println!(
            "{:<22} {:>11.2} {:>11.2} {:>8.1}x {:>13.2} {:>13.2}",
            format!("guest_get_{}", label(size)),
            ms[0],
            ms[1],
            ms[1] / ms[0],
            ms[2],
            ms[3]
        );
    }
    drop((mapped, copied));

    println!("\n== spilling (64 MiB objects) against plain file I/O in the same directory ==");
    let size = 64 * MIB;
    let spill = node(&dir.join("spilling"), 4 * size as u64, 64 << 10)?;
    warm(&spill)?;
    let file = dir.join("plain-file");
    let data = vec![5u8; size];
    let blob = Blob::from(data.clone());
    let mut back = vec![0u8; size];
    let (mut spill_put, mut restore, mut write, mut read) = (vec![], vec![], vec![], vec![]);
    for i in 0..if quick { 2 } else { 6 } {
        // Three objects fill most of the store; a fourth spills the oldest.
        let a = spill.put(&Blob::from(vec![i as u8; size]))?;
        let b = spill.put(&Blob::from(vec![2u8; size]))?;
        let c = spill.put(&Blob::from(vec![3u8; size]))?;
        let mut d = None;
        spill_put.push(timed(|| d = Some(spill.put(&blob).expect("put"))));
        anyhow::ensure!(
            spill.location(&a) == Some(ferry::ObjectLocation::Disk),
            "the benchmark expected the oldest object to be spilled"
        );
        drop(d);
        // Room again: reading `a` back needs no further spilling.
        restore.push(timed(|| {
            let got: Blob = spill.get_blocking(&a).expect("restore");
            std::hint::black_box(got.len());
        }));
        drop((a, b, c));
        let _ = std::fs::remove_file(&file);
        write.push(timed(|| std::fs::write(&file, &data).expect("write")));
        read.push(timed(|| {
            use std::io::Read;
            let mut f = std::fs::File::open(&file).expect("open");
            f.read_exact(&mut back).expect("read");
        }));
    }
    let mut copy = Vec::new();
    for _ in 0..5 {
        copy.push(timed(|| back.copy_from_slice(&data)));
    }
    let (sp, _) = stats(&spill_put);
    let (re, _) = stats(&restore);
    let (wr, _) = stats(&write);
    let (rd, _) = stats(&read);
    let (cp, _) = stats(&copy);
    println!(
        "put that spills another 64 MiB object: {:.2} GB/s; file write + memcpy: {:.2} GB/s ({:.2}x)",
        gbps(size, sp),
        gbps(size, wr + cp),
        (wr + cp) / sp
    );
    println!(
        "get that restores a 64 MiB object:     {:.2} GB/s; file read:            {:.2} GB/s ({:.2}x)",
        gbps(size, re),
        gbps(size, rd),
        rd / re
    );
    let _ = std::fs::remove_file(&file);
    Ok(())
}
