//! The `ferry` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ferry::json::{args_from_json, cause_to_json, result_to_json};
use ferry::{Client, GetError, NodeConfig, ObjectRef};

/// ferry: ship functions by value as WebAssembly modules and run them.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a function of a module on an embedded node and print its result as JSON.
    ///
    /// Each argument is one JSON value, converted to the function's parameter type with the
    /// module's manifest: `ferry run guest.wasm add 1 2`, `ferry run guest.wasm greet '"ada"'`,
    /// `ferry run guest.wasm area '{"Circle":{"center":{"x":0,"y":0},"radius":1}}'`.
    Run(RunArgs),
    /// List a module's functions and their signatures.
    Inspect(InspectArgs),
    /// Start a host node: the head of a new cluster (`--head`) or a node joining one
    /// (`--join HEAD_ADDR`). Runs until Ctrl-C or SIGTERM.
    Start(StartArgs),
    /// Show every node of a cluster: address, cores, store, calls, alive or dead.
    Status(StatusArgs),
    /// Make the cluster's certificates: a CA, then a certificate per node and per client.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// Reaching a cluster.
#[derive(Debug, Args)]
struct ClusterArgs {
    /// Credentials directory (ca.pem, cert.pem, key.pem) made by `ferry cert issue`.
    #[arg(long)]
    certs: PathBuf,
    /// A peer silent this long is considered dead (e.g. 5s).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    idle_timeout: Duration,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Start a new cluster with this node as its head.
    #[arg(long, conflicts_with = "join", required_unless_present = "join")]
    head: bool,
    /// Join the cluster whose head listens at this address.
    #[arg(long, value_name = "HEAD_ADDR")]
    join: Option<std::net::SocketAddr>,
    /// Where to accept connections (UDP; port 0 picks a free port, printed at start-up).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: std::net::SocketAddr,
    /// The address other nodes use to reach this one, if not the --listen address (required
    /// when listening on a wildcard such as 0.0.0.0:7700).
    #[arg(long)]
    advertise: Option<std::net::SocketAddr>,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The head's address.
    #[arg(long)]
    cluster: std::net::SocketAddr,
    /// Credentials directory (a client certificate is enough).
    #[arg(long)]
    certs: PathBuf,
    /// Print the node table as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Create a cluster CA in DIR (ca.pem, ca-key.pem). Keep ca-key.pem private.
    Ca {
        /// Directory to create it in.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA into OUT (ca.pem, cert.pem, key.pem).
    Issue {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the credentials.
        #[arg(long)]
        out: PathBuf,
        /// The certificate's common name (for logs).
        #[arg(long)]
        name: String,
        /// A client certificate (drivers, `ferry status`) instead of a node certificate.
        #[arg(long)]
        client: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The module (.wasm) to load.
    module: PathBuf,
    /// The function to call.
    function: String,
    /// The arguments, one JSON value each (negative numbers are fine: `-1`).
    #[arg(allow_negative_numbers = true)]
    args: Vec<String>,
    /// Print the result indented.
    #[arg(long)]
    pretty: bool,
    /// After the result, print the node's figures (object store, spilling, tasks) as JSON on
    /// standard error.
    #[arg(long)]
    stats: bool,
    /// Run on the cluster whose head listens at this address instead of an embedded node.
    #[arg(long, value_name = "HEAD_ADDR", requires = "certs")]
    cluster: Option<std::net::SocketAddr>,
    /// Credentials for `--cluster`.
    #[arg(long)]
    certs: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The module (.wasm) to inspect.
    module: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    node: NodeArgs,
}

/// Settings of the embedded node.
#[derive(Debug, Args)]
struct NodeArgs {
    /// Object store size (bytes; K, M, G suffixes allowed).
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    store_size: u64,
    /// Directory of the object store file [default: /dev/shm].
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// Directory for compiled modules [default: $FERRY_CACHE_DIR or ~/.cache/ferry].
    #[arg(long, conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled modules on disk.
    #[arg(long)]
    no_cache: bool,
    /// Time limit of a call's guest code (e.g. 500ms, 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    time_limit: Duration,
    /// Memory limit of a guest instance (bytes; K, M, G suffixes allowed).
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    memory_limit: u64,
    /// Directory to spill objects to when the store is full [default: $TMPDIR/ferry-spill].
    #[arg(long, conflicts_with = "no_spill")]
    spill_dir: Option<PathBuf>,
    /// Most bytes spilled at once (K, M, G suffixes allowed) [default: no limit].
    #[arg(long, value_parser = parse_size)]
    spill_size: Option<u64>,
    /// Never spill: a full store fails puts at once.
    #[arg(long)]
    no_spill: bool,
    /// Buffers at least this large are mapped into guests instead of copied (K, M, G).
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    map_threshold: u64,
    /// Threads running guest code, 1 to 1024 [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

impl NodeArgs {
    fn config(&self) -> NodeConfig {
        let mut c = NodeConfig {
            store_capacity: self.store_size,
            time_limit: self.time_limit,
            memory_limit: self.memory_limit,
            spill_capacity: self.spill_size,
            map_threshold: self.map_threshold,
            ..NodeConfig::default()
        };
        if self.no_spill {
            c.spill_dir = None;
        } else if let Some(d) = &self.spill_dir {
            c.spill_dir = Some(d.clone());
        }
        if let Some(d) = &self.store_dir {
            c.store_dir = d.clone();
        }
        if self.no_cache {
            c.cache_dir = None;
        } else if let Some(d) = &self.cache_dir {
            c.cache_dir = Some(d.clone());
        }
        if let Some(w) = self.workers {
            c.workers = usize::from(w);
        }
        c
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 4096, 64K, 256M, 2G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 30s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn main() -> ExitCode {
    ferry::init_logging();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Start(_)) {
        // Output piped into `head` and the like ends quietly, as other command-line tools do,
        // instead of panicking in `println!`. (Not for `ferry start`, a server.)
        // SAFETY: resetting SIGPIPE to its default action takes no pointers, and no other
        // thread exists yet to race with the change.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Inspect(a) => inspect(a),
        Command::Start(a) => start_node(a),
        Command::Status(a) => status(a),
        Command::Cert(c) => cert(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                // Some errors print their source in their own message already.
                let cause = cause.to_string();
                if !msg.ends_with(&cause) {
                    msg.push_str(&format!(": {cause}"));
                }
            }
            // One line, whatever the causes contain (wasmtime's messages span lines).
            let line: Vec<&str> = msg.split_whitespace().collect();
            eprintln!("{}", line.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn start(node: &NodeArgs) -> anyhow::Result<Client> {
    Client::embedded_with(node.config()).context("could not start the embedded node")
}

fn credentials(dir: &std::path::Path) -> anyhow::Result<ferry::Credentials> {
    ferry::Credentials::load(dir).context("could not read the credentials")
}

fn start_node(a: StartArgs) -> anyhow::Result<()> {
    let mut opts = ferry::ClusterOptions::new(credentials(&a.cluster.certs)?);
    opts.listen = Some(a.listen);
    opts.advertise = a.advertise;
    opts.head = a.join;
    opts.idle_timeout = a.cluster.idle_timeout;
    let client = Client::start_node(a.node.config(), opts).context("could not start the node")?;
    let addr = client
        .listen_addr()
        .map_or_else(|| a.listen.to_string(), |x| x.to_string());
    let role = if a.head { "head" } else { "node" };
    println!("ferry {role} {} listening on {addr}", client.node_id());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
    .context("could not wait for signals")?;
    eprintln!("ferry {role} {}: stopping", client.node_id());
    drop(client);
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let config = NodeConfig {
        store_capacity: 16 << 20,
        prefault: false,
        spill_dir: None,
        ..NodeConfig::default()
    };
    let client = Client::connect(a.cluster, credentials(&a.certs)?, config)
        .with_context(|| format!("could not reach the cluster at {}", a.cluster))?;
    let members: Vec<ferry::Member> = client
        .members()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.info.worker)
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    println!(
        "{:<16}  {:<21}  {:>5}  {:>21}  {:>7}  {:>6}  STATE",
        "NODE", "ADDRESS", "CORES", "STORE USED/CAPACITY", "RUNNING", "QUEUED"
    );
    for m in &members {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let state = if m.alive {
            "alive".to_owned()
        } else {
            format!(
                "dead ({})",
                m.reason.as_deref().unwrap_or("no reason given")
            )
        };
        println!(
            "{:<16}  {:<21}  {:>5}  {:>21}  {:>7}  {:>6}  {state}",
            ferry::NodeId(m.info.id).to_string(),
            m.info.addr.map_or("-".into(), |x| x.to_string()),
            m.info.cores,
            format!(
                "{:.1}/{:.1} MiB",
                mib(m.load.store_used),
                mib(m.load.store_capacity)
            ),
            m.load.running,
            m.load.queued,
        );
    }
    Ok(())
}

fn cert(c: CertCommand) -> anyhow::Result<()> {
    match c {
        CertCommand::Ca { dir } => {
            ferry::create_ca(&dir)?;
            println!("created a cluster CA in {}", dir.display());
        }
        CertCommand::Issue {
            ca,
            out,
            name,
            client,
        } => {
            let role = if client {
                ferry::CertRole::Client
            } else {
                ferry::CertRole::Node
            };
            ferry::issue_cert(&ca, &out, &name, role)?;
            let number = ferry::Credentials::load(&out)?.identity().cert;
            let kind = if client { "client" } else { "node" };
            println!(
                "issued {kind} certificate number {number} ({name}) into {}",
                out.display()
            );
        }
    }
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let client = match (a.cluster, &a.certs) {
        (Some(head), Some(certs)) => Client::connect(head, credentials(certs)?, a.node.config())
            .with_context(|| format!("could not reach the cluster at {head}"))?,
        _ => start(&a.node)?,
    };
    let module = client
        .load_file(&a.module)
        .with_context(|| format!("could not load {}", a.module.display()))?;
    let Some(sig) = module.signature(&a.function) else {
        let names: Vec<&str> = module.functions().map(|f| f.name.as_str()).collect();
        bail!(
            "{} has no function `{}` (it has: {})",
            a.module.display(),
            a.function,
            names.join(", ")
        );
    };
    let sig = sig.clone();
    // Arguments holding buffers are stored as objects and passed by ref (the function sees
    // the value); `held` keeps them alive until the call has taken its own counts.
    let mut held = Vec::new();
    let mut args = Vec::new();
    for encoded in args_from_json(&sig, &a.args)? {
        if encoded.buffers.is_empty() {
            args.push(ferry::CallArg::Value {
                bytes: encoded.meta,
                refs: Vec::new(),
            });
        } else {
            let r = client.put_encoded(&encoded)?;
            args.push(ferry::CallArg::Object(r.id()));
            held.push(r);
        }
    }
    let r: ObjectRef<()> = module.call_encoded(&a.function, args)?;
    drop(held);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the driver runtime")?;
    let bytes = match rt.block_on(client.get_encoded(&r)) {
        Ok(b) => b,
        Err(GetError::Task(e)) => {
            let mut msg = e.to_string();
            if let ferry::TaskErrorKind::Failed { cause, .. } = &e.kind
                && let Some(v) = cause_to_json(&sig, cause)
            {
                msg.push_str(&format!(" (cause: {v})"));
            }
            bail!(msg);
        }
        Err(e) => return Err(e.into()),
    };
    let value = result_to_json(&sig, &bytes)?;
    let text = if a.pretty {
        serde_json::to_string_pretty(&value)?
    } else {
        serde_json::to_string(&value)?
    };
    println!("{text}");
    if a.stats {
        drop((r, bytes));
        eprintln!("{}", serde_json::to_string_pretty(&client.stats())?);
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let client = start(&a.node)?;
    let module = client
        .load_file(&a.module)
        .with_context(|| format!("could not load {}", a.module.display()))?;
    if a.json {
        let functions: Vec<serde_json::Value> = module
            .functions()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "signature": f.display_signature(),
                    "params": f.params.iter().map(|p| serde_json::json!({
                        "name": p.name, "type": p.ty.rust,
                    })).collect::<Vec<_>>(),
                    "result": f.result.rust,
                    "error": f.error.as_ref().map(|e| e.rust.clone()),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "module": module.id().to_string(),
            "abi_version": ferry_abi_version(),
            "functions": functions,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("module {}", module.id());
    println!("ferry ABI version {}", ferry_abi_version());
    println!("functions:");
    for f in module.functions() {
        println!("  {}{}", f.name, f.display_signature());
    }
    Ok(())
}

fn ferry_abi_version() -> u32 {
    ferry::ABI_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12X").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
