//! Map-reduce word count over many objects: the text is split into chunks stored as objects,
//! one `count_words` task maps each chunk (the chunk ref is resolved by value), and a tree of
//! `merge` tasks reduces the tables, each merge receiving refs and fetching them itself. The
//! result is checked against a count made in the driver.
//!
//! Run it with `cargo run -p ferry-examples --example wordcount [CHUNKS]`.

use std::collections::BTreeMap;

use ferry::{Client, ObjectRef};
use ferry_examples::{WORDCOUNT_WASM, config};
use wordcount_guest::{self as guest, Counts};

const WORDS: &[&str] = &[
    "ferry",
    "ships",
    "functions",
    "by",
    "value",
    "as",
    "webassembly",
    "modules",
    "to",
    "host",
    "nodes",
    "and",
    "runs",
    "them",
    "against",
    "a",
    "shared",
    "memory",
    "object",
    "store",
    "the",
    "river",
    "boat",
    "crossing",
    "water",
    "bank",
    "rope",
    "oar",
    "tide",
    "current",
];

/// A deterministic pseudo-random text of `words` words.
fn text(seed: u64, words: usize) -> String {
    let mut state = seed;
    let mut out = String::new();
    for i in 0..words {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Skew the distribution so that some words are clearly more common.
        let r = (state >> 33) as usize;
        let idx = (r % WORDS.len()).min((r >> 8) % WORDS.len());
        out.push_str(WORDS[idx]);
        out.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chunks: usize = match std::env::args().nth(1) {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("CHUNKS must be a number, got {s}"))?,
        None => 64,
    };
    let client = Client::embedded_with(config())?;
    let module = client.load(WORDCOUNT_WASM)?;
    let count = module.function(guest::count_words::REMOTE)?;
    let merge = module.function(guest::merge::REMOTE)?;

    // Map: one object and one task per chunk.
    let texts: Vec<String> = (0..chunks).map(|i| text(i as u64, 5_000)).collect();
    let mut level: Vec<ObjectRef<Counts>> = Vec::with_capacity(chunks);
    for t in &texts {
        let chunk = client.put(t)?;
        level.push(count.call((&chunk,))?);
    }

    // Reduce: merge eight tables at a time until one is left.
    while level.len() > 1 {
        let mut next = Vec::new();
        let mut rest = level.into_iter().peekable();
        while rest.peek().is_some() {
            let group: Vec<_> = rest.by_ref().take(8).collect();
            next.push(merge.call((group,))?);
        }
        level = next;
    }
    let counts: Counts = client.get(&level[0]).await?;

    // Check against a count made here.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for t in &texts {
        for w in t.split_whitespace() {
            *expected.entry(w.to_owned()).or_default() += 1;
        }
    }
    anyhow::ensure!(
        counts == expected,
        "the cluster's counts differ from the local count"
    );

    let mut top: Vec<_> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let total: u64 = counts.values().sum();
    println!(
        "{total} words in {chunks} chunks, {} distinct; top ten:",
        counts.len()
    );
    for (word, n) in top.into_iter().take(10) {
        println!("  {n:>8}  {word}");
    }
    println!("matches the local count");
    Ok(())
}
