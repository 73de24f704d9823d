//! A real cluster: three `ferry start` processes on 127.0.0.1 with their own certificates,
//! and a driver in this process connected over QUIC with mutual TLS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry::{Blob, Client, GetError, ObjectLocation, ObjectRef, TaskErrorKind};
use ferry_tests::{store_dir, test_config, testguest_path, testguest_wasm};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(FERRY).args(args).output().unwrap()
}

fn certs(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    let out = ferry(&["cert", "ca", "--dir", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for name in ["head", "n1", "n2"] {
        issue(&ca, &dir.join(name), name, false);
    }
    issue(&ca, &dir.join("driver"), "driver", true);
    ca
}

fn issue(ca: &Path, out: &Path, name: &str, client: bool) {
    let mut args = vec![
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--name",
        name,
    ];
    if client {
        args.push("--client");
    }
    let o = ferry(&args);
    assert!(o.status.success(), "{o:?}");
}

/// A running `ferry start` process; killed (by its pid) when dropped.
struct NodeProc {
    child: Child,
    id: String,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, join: Option<SocketAddr>) -> Result<NodeProc, String> {
    let store = store_dir(&dir.join(format!("{name}-store")));
    std::fs::create_dir_all(&store).unwrap();
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(FERRY);
    cmd.arg("start");
    match join {
        None => cmd.arg("--head"),
        Some(h) => cmd.args(["--join", &h.to_string()]),
    };
    cmd.args(["--listen", "127.0.0.1:0", "--certs"])
        .arg(dir.join(name))
        .args(["--store-size", "96M", "--store-dir"])
        .arg(&store)
        .arg("--spill-dir")
        .arg(dir.join(format!("{name}-spill")))
        .arg("--cache-dir")
        .arg(dir.join(format!("{name}-cache")))
        .args([
            "--workers",
            "2",
            "--time-limit",
            "4s",
            "--idle-timeout",
            "2s",
        ])
        .env("FERRY_LOG", "ferry=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "ferry head <id> listening on <addr>"
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() != 6 {
        let _ = child.kill();
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "{name} did not start ({status}, said {line:?}): {log}"
        ));
    }
    Ok(NodeProc {
        id: words[2].to_owned(),
        addr: words[5].parse().unwrap(),
        child,
        log,
    })
}

struct TestCluster {
    dir: tempfile::TempDir,
    nodes: Vec<NodeProc>,
}

impl TestCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        certs(dir.path());
        let head = start(dir.path(), "head", None).unwrap();
        let addr = head.addr;
        let mut nodes = vec![head];
        for n in ["n1", "n2"] {
            nodes.push(start(dir.path(), n, Some(addr)).unwrap());
        }
        let c = Self { dir, nodes };
        // Wait until the head lists all three (joining is quick; heartbeats carry the table).
        let driver = c.driver();
        for _ in 0..100 {
            let alive = driver
                .members()
                .unwrap()
                .iter()
                .filter(|m| m.info.worker && m.alive)
                .count();
            if alive == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The other nodes learn the table from their next heartbeats.
        c.fresh_workers(&driver);
        c
    }

    fn head(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    fn driver(&self) -> Client {
        let creds = ferry::Credentials::load(&self.dir.path().join("driver")).unwrap();
        let d = self.dir.path().join(format!("driver-{}", ferry_ids()));
        std::fs::create_dir_all(&d).unwrap();
        Client::connect(self.head(), creds, test_config(&d)).unwrap()
    }

    fn workers(&self, client: &Client) -> Vec<ferry::Member> {
        client
            .members()
            .unwrap()
            .into_iter()
            .filter(|m| m.info.worker)
            .collect()
    }

    /// The live workers, with loads each node measured after this was called: loads reach the
    /// head with heartbeats, and the second report after now was surely taken after now.
    fn fresh_workers(&self, client: &Client) -> Vec<ferry::Member> {
        let seen: Vec<(u64, u64)> = self
            .workers(client)
            .iter()
            .filter(|m| m.alive)
            .map(|m| (m.info.id, m.load.reports))
            .collect();
        for _ in 0..600 {
            let now = self.workers(client);
            let fresh = seen.iter().all(|(id, r)| {
                now.iter()
                    .any(|m| m.info.id == *id && m.load.reports >= r + 2)
            });
            if fresh {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the nodes sent no load reports for 30 s; {}", self.logs());
    }

    /// The nodes' logs, for failure messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                format!("\n--- node {} ---\n{log}", n.id)
            })
            .collect()
    }
}

/// Polls `check` every 100 ms until it holds, for at most 30 s (asynchronous effects such as
/// frees and death detection take a moment; the bound only stops a broken build hanging).
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn ferry_ids() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_three_node_cluster_runs_calls_ships_code_and_moves_objects() {
    let c = TestCluster::start();
    let client = c.driver();
    let rt = rt();
    assert_eq!(c.workers(&client).len(), 3);
    let module = client.load(&testguest_wasm()).unwrap();

    // Remote calls and results; nested calls from guests are placed on the cluster too.
    let sums: Vec<ObjectRef<i64>> = (0..24)
        .map(|i| module.call("add", (i, 100i64)).unwrap())
        .collect();
    let got = rt.block_on(client.get_many(&sums)).unwrap();
    assert_eq!(got, (0..24).map(|i| i + 100).collect::<Vec<i64>>());
    let fib: ObjectRef<u64> = module.call("fib", (12u32,)).unwrap();
    assert_eq!(rt.block_on(client.get(&fib)).unwrap(), 144);

    // Every node ran calls, and fetched the module once.
    let members = c.fresh_workers(&client);
    for m in &members {
        assert!(
            m.load.calls_finished > 0,
            "node {} ran nothing: {m:?}",
            m.info.id
        );
        assert_eq!(m.load.modules_fetched, 1, "{m:?}");
    }
    // A later round finds it cached: no more fetches.
    let more: Vec<ObjectRef<i64>> = (0..12)
        .map(|i| module.call("echo", (i,)).unwrap())
        .collect();
    rt.block_on(client.get_many(&more)).unwrap();
    for m in c.fresh_workers(&client) {
        assert_eq!(m.load.modules_fetched, 1, "{m:?}");
        assert!(m.load.modules_compiled <= 1, "{m:?}");
    }

    // An object the driver put, pulled by the node that runs the call: same bytes.
    let data = pattern(6 << 20);
    let expected: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let blob = client.put(&Blob::new(data.clone())).unwrap();
    let sum: ObjectRef<(u64, bool)> = module.call("blob_sum", (&blob,)).unwrap();
    assert_eq!(rt.block_on(client.get(&sum)).unwrap().0, expected);
    // A nested ref, read by a guest on a node from the driver that owns it.
    let nested: ObjectRef<(u64, bool)> =
        module.call("get_blob_sum", (vec![blob.clone()],)).unwrap();
    assert_eq!(rt.block_on(client.get(&nested)).unwrap().0, expected);

    // A large result stays where it was made until the driver reads it; then identical bytes.
    let big: ObjectRef<Vec<u8>> = module.call("make_bytes", (3u32 << 20, 9u8)).unwrap();
    rt.block_on(client.wait(vec![big.clone()], 1, None));
    let holder = match client.location(&big) {
        Some(ObjectLocation::Node(n)) => n,
        other => panic!("a 3 MiB result should stay on its node, found {other:?}"),
    };
    assert!(c.nodes.iter().any(|n| n.id == holder.to_string()));

    // Locality: a call taking that result runs where it is, so nothing is pulled.
    let pulled_before: u64 = c
        .fresh_workers(&client)
        .iter()
        .map(|m| m.load.bytes_pulled)
        .sum();
    let lens: Vec<ObjectRef<u64>> = (0..4)
        .map(|_| module.call("bytes_len", (&big,)).unwrap())
        .collect();
    for l in rt.block_on(client.get_many(&lens)).unwrap() {
        assert_eq!(l, 3 << 20);
    }
    let pulled_after: u64 = c
        .fresh_workers(&client)
        .iter()
        .map(|m| m.load.bytes_pulled)
        .sum();
    assert!(
        pulled_after - pulled_before < 1 << 20,
        "the argument was pulled: {} bytes",
        pulled_after - pulled_before
    );
    // The driver pulls it: identical bytes.
    assert_eq!(rt.block_on(client.get(&big)).unwrap(), vec![9u8; 3 << 20]);

    // A guest waits on a ref the driver owns: it returns only once the owner has it done.
    let slow: ObjectRef<i64> = module.call("spin_forever", ()).unwrap();
    let w: ObjectRef<(u32, u32)> = module
        .call("wait_first", (vec![slow.clone()], 1u32))
        .unwrap();
    assert_eq!(rt.block_on(client.get(&w)).unwrap(), (1, 0));
    assert_eq!(client.location(&slow), Some(ObjectLocation::Failed));

    // A small result holding a ref to an object made on the node that ran the call: the ref
    // stays good (the result is held there, keeping what it refers to alive).
    let outer: ObjectRef<ObjectRef<i64>> = module.call("spawn_add", (20i64, 22i64)).unwrap();
    let inner = rt.block_on(client.get(&outer)).unwrap();
    assert_eq!(rt.block_on(client.get(&inner)).unwrap(), 42);
    // The driver holds the inner object (owned by the node that made it) after dropping the
    // outer one. No pause is needed: the driver's borrow of the inner object reaches its owner
    // before the outer object's free can (the borrow-before-release rule), whatever the timing;
    // the simulator checks that in every interleaving
    // (`an_outer_object_freed_right_after_reading_keeps_its_inner_ref_alive`).
    drop(outer);
    assert_eq!(rt.block_on(client.get(&inner)).unwrap(), 42);
    drop(inner);

    // A driver can connect from inside an async runtime too.
    let second = rt.block_on(async { c.driver() });
    let m2 = second.load(&testguest_wasm()).unwrap();
    let r: ObjectRef<i64> = m2.call("add", (1i64, 1i64)).unwrap();
    assert_eq!(rt.block_on(second.get(&r)).unwrap(), 2);

    // Errors cross the wire typed, naming their node.
    let bad: ObjectRef<i64> = module.call("divide", (1i64, 0i64)).unwrap();
    let e = rt.block_on(client.get(&bad)).unwrap_err();
    let task = e.task_error().expect("a task error");
    assert!(matches!(task.kind, TaskErrorKind::Failed { .. }), "{e}");
    assert!(c.nodes.iter().any(|n| n.id == task.node.to_string()), "{e}");

    // In-band arguments larger than a frame are refused by the caller, not lost in transit.
    let huge: ObjectRef<u64> = module.call("bytes_len", (vec![7u8; 20 << 20],)).unwrap();
    let e = rt.block_on(client.get(&huge)).unwrap_err();
    assert!(
        matches!(
            e.task_error().map(|t| &t.kind),
            Some(TaskErrorKind::Host { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("larger than the limit"), "{e}");

    // A node whose store is full of results it keeps for the driver makes room for an
    // argument it pulls by spilling them to disk, off its network thread (the nodes are debug
    // builds, which assert that the network thread never does disk I/O).
    let kept: Vec<ObjectRef<Vec<u8>>> = (0..10)
        .map(|_| module.call("make_bytes", (30u32 << 20, 5u8)).unwrap())
        .collect();
    rt.block_on(client.wait(kept.clone(), kept.len(), None));
    let arg = client.put(&vec![3u8; 40 << 20]).unwrap();
    let pulled: Vec<ObjectRef<u64>> = (0..3)
        .map(|_| module.call("bytes_len", (arg.clone(),)).unwrap())
        .collect();
    for r in &pulled {
        assert_eq!(
            rt.block_on(client.get(r)).unwrap(),
            40 << 20,
            "{}",
            c.logs()
        );
    }
    drop((kept, arg, pulled));

    // `ferry run --cluster` works too.
    let out = ferry(&[
        "run",
        "--cluster",
        &c.head().to_string(),
        "--certs",
        c.dir.path().join("driver").to_str().unwrap(),
        "--no-cache",
        "--store-size",
        "16M",
        testguest_path().to_str().unwrap(),
        "add",
        "20",
        "22",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // And `ferry status` lists the nodes.
    let out = ferry(&[
        "status",
        "--cluster",
        &c.head().to_string(),
        "--certs",
        c.dir.path().join("driver").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for n in &c.nodes {
        assert!(text.contains(&n.id), "{text}");
    }
    assert_eq!(text.matches("alive").count(), 3, "{text}");

    // Every object the driver dropped is freed on every node: nothing leaks across nodes.
    drop((
        sums, fib, more, blob, sum, nested, big, lens, slow, w, bad, r, m2, second, huge,
    ));
    drop(module);
    let mut left = Vec::new();
    eventually(|| {
        left = c
            .fresh_workers(&client)
            .iter()
            .map(|m| m.load.objects)
            .collect::<Vec<u64>>();
        left.iter().all(|&n| n == 0)
    });
    assert!(
        left.iter().all(|&n| n == 0),
        "objects left on the nodes: {left:?}; {}",
        c.logs()
    );
}

#[test]
fn peers_without_a_valid_certificate_are_refused() {
    let c = TestCluster::start();
    // Credentials from another CA, trusting the real CA (so it is the node that refuses).
    let other = c.dir.path().join("other-ca");
    assert!(
        ferry(&["cert", "ca", "--dir", other.to_str().unwrap()])
            .status
            .success()
    );
    for (name, client) in [("rogue-driver", true), ("rogue-node", false)] {
        let out = c.dir.path().join(name);
        issue(&other, &out, name, client);
        std::fs::remove_file(out.join("ca.pem")).unwrap();
        std::fs::copy(c.dir.path().join("ca/ca.pem"), out.join("ca.pem")).unwrap();
    }
    let creds = ferry::Credentials::load(&c.dir.path().join("rogue-driver")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let err = Client::connect(c.head(), creds, test_config(d.path())).unwrap_err();
    assert!(err.to_string().contains("connection"), "{err}");

    let e = start(c.dir.path(), "rogue-node", Some(c.head()))
        .err()
        .expect("a node with a foreign certificate cannot join");
    assert!(e.contains("could not start the node"), "{e}");

    // The head says why, and only the three real nodes are members.
    let mut log = String::new();
    eventually(|| {
        log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
        log.contains("refused a connection")
    });
    assert!(log.contains("refused a connection"), "{log}");
    assert!(log.contains("invalid peer certificate"), "{log}");
    let client = c.driver();
    assert_eq!(c.workers(&client).len(), 3);

    // A valid driver certificate can neither speak as a node nor join as a worker: the head
    // refuses both Hellos, so no connection is ever registered under the victim's id (whose
    // closing would have had the victim declared dead).
    let victim = u64::from_str_radix(&c.nodes[1].id, 16).unwrap();
    let driver_number = ferry::Credentials::load(&c.dir.path().join("driver"))
        .unwrap()
        .identity()
        .cert;
    let own_id = (u64::from(driver_number) << 32) | 7;
    for (id, worker, why) in [
        (
            victim,
            false,
            "does not carry the number of its certificate",
        ),
        (own_id, true, "cannot join as a node that runs calls"),
    ] {
        match raw_hello(&c, id, worker) {
            ferry::protocol::Response::Error(m) => assert!(m.contains(why), "{m}"),
            other => panic!("a forged Hello was accepted: {other:?}"),
        }
    }
    let rt = rt();
    let module = client.load(&testguest_wasm()).unwrap();
    let sums: Vec<ObjectRef<i64>> = (0..6)
        .map(|i| module.call("add", (i, 1i64)).unwrap())
        .collect();
    assert_eq!(
        rt.block_on(client.get_many(&sums)).unwrap(),
        vec![1, 2, 3, 4, 5, 6]
    );
    let alive = c.workers(&client);
    assert!(alive.iter().all(|m| m.alive), "{alive:?}");
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(log.contains("refused a Hello"), "{log}");
    assert!(!log.contains("is dead"), "{log}");
}

/// Opens a connection to the head with the driver's (valid) certificate and says Hello as
/// node `id`; returns the head's answer.
fn raw_hello(c: &TestCluster, id: u64, worker: bool) -> ferry::protocol::Response {
    let creds = ferry::Credentials::load(&c.dir.path().join("driver")).unwrap();
    let head = c.head();
    rt().block_on(async move {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(creds.client_config(Duration::from_secs(5)).unwrap());
        let conn = ep.connect(head, ferry::NODE_NAME).unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = ferry::protocol::Request::Hello(ferry::NodeInfo {
            id,
            addr: None,
            worker,
            cores: 64,
        });
        send.write_all(&ferry::protocol::encode_frame(&hello))
            .await
            .unwrap();
        send.finish().unwrap();
        let bytes = recv.read_to_end(1 << 20).await.unwrap();
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        ferry::protocol::decode_frame(&bytes).unwrap()
    })
}

#[test]
fn a_killed_node_is_reported_dead_and_its_calls_and_objects_fail_naming_it() {
    let mut c = TestCluster::start();
    let client = c.driver();
    let rt = rt();
    let module = client.load(&testguest_wasm()).unwrap();
    let victim = c.nodes.pop().unwrap();

    // An object held only by the victim.
    let mut on_victim = None;
    for _ in 0..60 {
        let r: ObjectRef<Vec<u8>> = module.call("make_bytes", (1u32 << 20, 1u8)).unwrap();
        rt.block_on(client.wait(vec![r.clone()], 1, None));
        if let Some(ObjectLocation::Node(n)) = client.location(&r)
            && n.to_string() == victim.id
        {
            on_victim = Some(r);
            break;
        }
    }
    let on_victim = on_victim.expect("placement never chose the victim");

    // Calls running everywhere (the victim gets some: placement spreads them).
    let spinning: Vec<ObjectRef<u64>> = (0..12)
        .map(|_| module.call("spin_forever", ()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let victim_id = victim.id.clone();
    drop(victim); // SIGKILL

    let mut died = 0;
    for r in &spinning {
        match rt.block_on(client.get(r)) {
            Err(GetError::Task(e)) => match &e.kind {
                TaskErrorKind::NodeDied { node, .. } => {
                    died += 1;
                    assert_eq!(node.to_string(), victim_id, "{e}");
                    assert!(e.to_string().contains(&victim_id), "{e}");
                }
                TaskErrorKind::TimedOut { .. } => {}
                other => panic!("unexpected failure {other:?}"),
            },
            other => panic!("a spinning call ended with {other:?}"),
        }
    }
    assert!(died > 0, "no call was running on the killed node");

    match rt.block_on(client.get(&on_victim)) {
        Err(GetError::NodeDied { node, .. }) => assert_eq!(node.to_string(), victim_id),
        other => panic!("expected the object to be lost with its node, got {other:?}"),
    }

    // The head reports it dead; the others keep serving.
    let mut dead: Vec<ferry::Member> = Vec::new();
    eventually(|| {
        dead = c
            .workers(&client)
            .into_iter()
            .filter(|m| !m.alive)
            .collect();
        !dead.is_empty()
    });
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(ferry::NodeId(dead[0].info.id).to_string(), victim_id);
    let r: ObjectRef<i64> = module.call("add", (1i64, 2i64)).unwrap();
    assert_eq!(rt.block_on(client.get(&r)).unwrap(), 3);
}
