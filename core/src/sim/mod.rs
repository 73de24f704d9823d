//! The deterministic cluster simulator.
//!
//! N [`NodeCore`]s run in one thread, in simulated time, from one seed: messages take a random
//! latency (so they reorder), may be lost, and are dropped across partitions; nodes crash and
//! restart as new incarnations. Task execution, the object table and object transfers are
//! stand-ins ([`table::Table`]). After every step the simulator checks the invariants:
//!
//! 1. no object is freed while a live node still references it, and a held copy exists
//!    wherever its owner says it is;
//! 2. a result is set at most once ([`table::Table::complete`]);
//! 3. only verified identities change membership: no client is ever a worker, no member has
//!    an id nobody was given, and the head declares a node dead only after it crashed or
//!    was cut off from the head;
//!
//! and, once the cluster is quiet ([`Sim::finish`]), that every `get` ended and that nothing
//! leaked: every live node's table and core are empty once nobody holds a reference.
//!
//! A failing check returns the seed and the recent trace, so that the run can be repeated
//! exactly: the simulator's only source of randomness is its seeded generator, and the core
//! iterates only ordered maps.

pub mod table;
#[cfg(test)]
mod tests;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ferry_abi::abi::CallArg;
use ferry_abi::{ModuleId, ObjectId};

use crate::directory::Resolution;
use crate::ids::{Identity, NodeId, Role, Sender};
use crate::link::Link;
use crate::message::{Failure, Message, NodeInfo, Packet, TaskSpec};
use crate::node::{
    Completion, Config, Finished, LocalEvent, NodeCore, Output, Placed, SubmitError,
};
use table::{Broken, State, Table};

/// SplitMix64: the simulator's one source of randomness (its own, so that a seed means the
/// same run whatever crate versions are in the lock file).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// What the network does to messages.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Messages lost, per thousand.
    pub loss_per_mille: u32,
    /// Fastest delivery.
    pub min_latency: Duration,
    /// Slowest delivery (messages in between reorder).
    pub max_latency: Duration,
}

impl Faults {
    /// No loss, 1-5 ms latency.
    pub fn none() -> Self {
        Self {
            loss_per_mille: 0,
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(5),
        }
    }

    /// 2% loss, 1-40 ms latency (heavy reordering).
    pub fn rough() -> Self {
        Self {
            loss_per_mille: 20,
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(40),
        }
    }
}

/// The shape of a simulated cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Worker nodes, the head (slot 0) included.
    pub workers: usize,
    /// Drivers (client certificates, no calls run).
    pub drivers: usize,
    /// A peer with a valid client certificate that sends hostile messages.
    pub hostile: bool,
}

#[derive(Debug, Clone)]
struct Flight {
    from: Sender,
    from_slot: usize,
    to: NodeId,
    packet: Packet,
    /// An attached object: its id and length.
    attach: Option<(ObjectId, u64)>,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver(Flight),
    TaskDone {
        node: NodeId,
        result: ObjectId,
    },
    FetchDone {
        node: NodeId,
        id: ObjectId,
        from: NodeId,
    },
}

/// Who waits for an object on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Waiter {
    Get(u64),
    Arg(ObjectId),
}

#[derive(Debug)]
struct Task {
    spec: TaskSpec,
    owner: NodeId,
    waiting: usize,
    failed: Option<String>,
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its core.
    pub core: NodeCore,
    /// Its stand-in object table.
    pub table: Table,
    /// Its workload's references.
    pub handles: Vec<ObjectId>,
    next_object: u64,
    tasks: BTreeMap<ObjectId, Task>,
    /// Argument refs each call this node submitted holds (released when it completes).
    submitted: BTreeMap<ObjectId, Vec<ObjectId>>,
    local_waiters: BTreeMap<ObjectId, Vec<Waiter>>,
    remote_waiters: BTreeMap<ObjectId, Vec<Waiter>>,
    watched: BTreeSet<ObjectId>,
    attachments: BTreeMap<ObjectId, u64>,
    /// Refs contained in objects fetched and not yet handed to a waiter.
    fetched: BTreeMap<ObjectId, Vec<ObjectId>>,
}

/// A `get` made by a workload.
#[derive(Debug, Clone)]
pub struct Get {
    /// The node.
    pub node: NodeId,
    /// The object.
    pub id: ObjectId,
    /// How it ended.
    pub result: Option<Result<(), Failure>>,
}

/// A simulated cluster.
#[derive(Debug)]
pub struct Sim {
    /// The seed of this run.
    pub seed: u64,
    /// The generator.
    pub rng: Rng,
    base: Instant,
    now: Instant,
    /// The nodes by slot (`None`: crashed and not restarted).
    nodes: Vec<Option<SimNode>>,
    /// Each slot's current (or last) id.
    ids: Vec<NodeId>,
    roles: Vec<Role>,
    events: BTreeMap<(Instant, u64), Event>,
    order: u64,
    cuts: BTreeSet<(usize, usize)>,
    /// When each slot was last crashed or cut off from the head.
    disturbed: Vec<Option<Instant>>,
    /// The network's faults.
    pub faults: Faults,
    /// The gets made so far.
    pub gets: BTreeMap<u64, Get>,
    next_get: u64,
    trace: VecDeque<String>,
    hostile: Option<Hostile>,
    dead_after: Duration,
    /// Messages refused by some core, by kind.
    pub refused: BTreeMap<&'static str, u64>,
    /// Node deaths the head declared.
    pub deaths: Vec<NodeId>,
}

#[derive(Debug)]
struct Hostile {
    slot: usize,
    /// Its links, by the id it claims and the target.
    links: BTreeMap<(NodeId, NodeId), Link>,
}

/// A failed check: what broke, with the seed and the recent trace.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The seed that reproduces it.
    pub seed: u64,
    /// What broke.
    pub what: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.what)?;
        writeln!(
            f,
            "reproduce: FERRY_SIM_SEED={} (see docs/simulator.md)",
            self.seed
        )?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

const TRACE: usize = 20_000;
const MODULE: ModuleId = ModuleId([7; 32]);

impl Sim {
    /// A cluster of `shape`, all started at time zero.
    pub fn new(seed: u64, shape: Shape, faults: Faults) -> Self {
        let base = Instant::now();
        let mut sim = Self {
            seed,
            rng: Rng::new(seed),
            base,
            now: base,
            nodes: Vec::new(),
            ids: Vec::new(),
            roles: Vec::new(),
            events: BTreeMap::new(),
            order: 0,
            cuts: BTreeSet::new(),
            disturbed: Vec::new(),
            faults,
            gets: BTreeMap::new(),
            next_get: 0,
            trace: VecDeque::new(),
            hostile: None,
            dead_after: Duration::from_secs(2),
            refused: BTreeMap::new(),
            deaths: Vec::new(),
        };
        for slot in 0..shape.workers + shape.drivers {
            let role = if slot < shape.workers {
                Role::Node
            } else {
                Role::Client
            };
            sim.roles.push(role);
            sim.ids.push(NodeId::new(slot as u32 + 1, 1));
            sim.disturbed.push(None);
            sim.nodes.push(None);
            sim.boot(slot);
        }
        if shape.hostile {
            let slot = sim.nodes.len();
            sim.roles.push(Role::Client);
            sim.ids.push(NodeId::new(slot as u32 + 1, 1));
            sim.disturbed.push(None);
            sim.nodes.push(None);
            sim.hostile = Some(Hostile {
                slot,
                links: BTreeMap::new(),
            });
        }
        sim
    }

    fn boot(&mut self, slot: usize) {
        let id = self.ids[slot];
        let role = self.roles[slot];
        let me = NodeInfo {
            id,
            addr: None,
            worker: role == Role::Node,
            cores: 2,
        };
        let identity = Identity {
            cert: id.cert(),
            role,
        };
        let head = (slot != 0).then_some(self.ids[0]);
        let mut config = Config::new(me, identity, head);
        config.heartbeat = Duration::from_millis(100);
        config.dead_after = self.dead_after;
        config.retransmit = Duration::from_millis(150);
        config.seed = self.seed ^ id.0;
        self.nodes[slot] = Some(SimNode {
            core: NodeCore::new(self.now, config),
            table: Table::new(id),
            handles: Vec::new(),
            next_object: 1,
            tasks: BTreeMap::new(),
            submitted: BTreeMap::new(),
            local_waiters: BTreeMap::new(),
            remote_waiters: BTreeMap::new(),
            watched: BTreeSet::new(),
            attachments: BTreeMap::new(),
            fetched: BTreeMap::new(),
        });
    }

    /// The current id of the node in `slot`.
    pub fn id(&self, slot: usize) -> NodeId {
        self.ids[slot]
    }

    /// The node in `slot`, if it is up.
    pub fn node(&self, slot: usize) -> Option<&SimNode> {
        self.nodes.get(slot).and_then(Option::as_ref)
    }

    /// Slots in use (crashed ones included).
    pub fn slots(&self) -> usize {
        self.nodes.len()
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    fn slot_of(&self, id: NodeId) -> Option<usize> {
        let slot = id.cert().checked_sub(1)? as usize;
        (self.ids.get(slot) == Some(&id) && self.nodes.get(slot)?.is_some()).then_some(slot)
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        let t = self.elapsed().as_millis();
        self.trace.push_back(format!("{t:>7} ms {line}"));
    }

    fn fail(&self, what: impl Into<String>) -> Failed {
        Failed {
            seed: self.seed,
            what: what.into(),
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn schedule(&mut self, at: Instant, e: Event) {
        self.order += 1;
        self.events.insert((at, self.order), e);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = (self.faults.min_latency, self.faults.max_latency);
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.rng.below(span + 1))
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cuts.contains(&(a.min(b), a.max(b)))
    }
}

mod engine;
mod ops;
