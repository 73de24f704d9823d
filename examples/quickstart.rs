//! The quickstart: load a guest module on an embedded single-node cluster, call functions by
//! typed handle and by name, pass refs by value and by reference, start nested tasks, and see
//! a guest error come back.
//!
//! Run it with `cargo run -p ferry-examples --example quickstart`. The guest functions are in
//! `examples/guests/quickstart/src/lib.rs`.

use std::time::Duration;

use ferry::{Client, ObjectRef};
use ferry_examples::{QUICKSTART_WASM, config};
use quickstart_guest as guest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An embedded single-node cluster: an object store in shared memory and Wasm workers.
    let client = Client::embedded_with(config())?;

    // Ship the module by value. It is known by the hash of its bytes and compiled once.
    let module = client.load(QUICKSTART_WASM)?;
    println!("loaded module {}", module.id());
    for f in module.functions() {
        println!("  {}{}", f.name, f.display_signature());
    }

    // A typed handle: the compiler checks the argument types. `call` returns a ref at once.
    let add = module.function(guest::add::REMOTE)?;
    let three = add.call((1, 2))?;
    println!("add(1, 2) = {}", client.get(&three).await?);

    // Objects: `put` stores a value and returns a ref. A ref passed as a top-level argument is
    // resolved to its value before the function runs, so `add` sees plain numbers.
    let x = client.put(&20i64)?;
    let sum = add.call((&x, 22))?;
    println!("add(<ref to 20>, 22) = {}", client.get(&sum).await?);
    // Results are refs too, and can feed the next call before they are ready.
    let chained = add.call((&sum, &three))?;
    println!("add(<result>, <result>) = {}", client.get(&chained).await?);

    // Refs nested inside an argument stay refs: the guest gets them itself.
    let parts: Vec<ObjectRef<i64>> = (1..=5).map(|i| client.put(&i)).collect::<Result<_, _>>()?;
    let total = module.function(guest::sum::REMOTE)?.call((parts,))?;
    println!("sum(<5 refs>) = {}", client.get(&total).await?);

    // Guests call other functions as nested tasks.
    let squares = module.function(guest::sum_of_squares::REMOTE)?;
    let r = squares.call((vec![1, 2, 3, 4],))?;
    println!("sum_of_squares([1, 2, 3, 4]) = {}", client.get(&r).await?);

    // Calling by name with a tuple works too (checked against the manifest at run time).
    let by_name: ObjectRef<i64> = module.call("square", (12i64,))?;
    println!("square(12) by name = {}", client.get(&by_name).await?);

    // `wait` splits refs into ready and pending, like `ray.wait`.
    let refs: Vec<_> = (0..4).map(|i| add.call((i, i))).collect::<Result<_, _>>()?;
    let (ready, pending) = client.wait(refs, 4, Some(Duration::from_secs(10))).await;
    println!("wait: {} ready, {} pending", ready.len(), pending.len());

    // A guest error comes back as a typed error naming the function, with its cause.
    let divide = module.function(guest::divide::REMOTE)?;
    match client.get(&divide.call((1, 0))?).await {
        Ok(v) => println!("1 / 0 = {v}?!"),
        Err(e) => {
            let cause: Option<String> = e.task_error().and_then(|t| t.cause());
            println!("divide(1, 0) failed: {e}");
            println!("  cause: {cause:?}");
        }
    }

    let stats = client.stats();
    println!(
        "node {}: {} calls, {} live objects, {} of {} store bytes in use",
        stats.node,
        stats.tasks_submitted,
        stats.objects.objects,
        stats.store.used,
        stats.store.capacity
    );
    Ok(())
}
