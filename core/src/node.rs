//! [`NodeCore`]: one node's whole distributed state, fed by `handle_*` calls and drained by
//! `poll_*` calls, in the style of quinn-proto's `Connection` and raft-rs's `RawNode`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ferry_abi::ObjectId;
use ferry_abi::abi::CallArg;

use crate::directory::{Directory, LocalState, LocalView, Place, Resolution, Step};
use crate::ids::{Identity, NodeId, Role, Sender};
use crate::link::Link;
use crate::membership::{Death, Membership, Refusal};
use crate::message::{
    Failure, Load, Location, Member, Message, NodeInfo, Outcome, Packet, TaskSpec,
};
use crate::placement::{self, Candidate};
use crate::refs::{Effect, Ordered, Refs};
use crate::tasks::{self, Tasks};

/// Most refs a `Done` may name as contained in a result.
pub const MAX_CONTAINED: usize = 1 << 20;

/// How a node's core is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node as it presents itself.
    pub me: NodeInfo,
    /// Its own verified identity (from its certificate).
    pub identity: Identity,
    /// The head's id (`None`: this node is the head).
    pub head: Option<NodeId>,
    /// How often a node reports to the head. Default: 500 ms.
    pub heartbeat: Duration,
    /// A member the head has not heard from for this long is dead. Default: 5 s.
    pub dead_after: Duration,
    /// The first wait before a message is sent again. Default: 1 s.
    pub retransmit: Duration,
    /// Largest call (in-band arguments) sent to another node. Default: 16 MiB less 4 KiB.
    pub max_call: usize,
    /// Seeds the tie-breaks of placement.
    pub seed: u64,
}

impl Config {
    /// A configuration with the defaults.
    pub fn new(me: NodeInfo, identity: Identity, head: Option<NodeId>) -> Self {
        Self {
            me,
            identity,
            head,
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_secs(5),
            retransmit: Duration::from_secs(1),
            max_call: (16 << 20) - 4096,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Something that happened on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    /// This node's load, for its next report.
    Load(Load),
    /// The local table took its first reference to another node's object.
    Hold(ObjectId),
    /// The local table dropped its last reference to another node's object.
    Drop(ObjectId),
    /// The local table freed an object this node owns.
    Freed(ObjectId),
    /// A call run here for another node ended (after the table completed its result).
    TaskFinished {
        /// The result.
        result: ObjectId,
        /// How it ended.
        finished: Finished,
    },
    /// A local object named by [`Output::WatchLocal`] completed.
    Completed(ObjectId),
    /// A fetch asked for by [`Output::Fetch`] ended (`Ok`: the bytes are in the store).
    Fetched {
        /// The object.
        id: ObjectId,
        /// The node it came from.
        from: NodeId,
        /// What went wrong, if anything.
        result: Result<(), String>,
    },
    /// This node needs an object it does not store: its bytes (`fetch`), or only to know
    /// that it is complete. Answered by [`Output::Resolved`].
    Want {
        /// The object.
        id: ObjectId,
        /// Whether to fetch its bytes.
        fetch: bool,
    },
}

/// How a call run for another node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// It produced a value of `len` bytes holding `contained`.
    Value {
        /// Its length.
        len: u64,
        /// The refs it contains.
        contained: Vec<ObjectId>,
    },
    /// It failed; the error as the runtime encodes it.
    Failed(Vec<u8>),
}

/// How a call this node placed elsewhere ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The value came with the packet (the transport attached its bytes).
    Inline,
    /// The value stays on `at`.
    Held {
        /// The node holding it.
        at: NodeId,
        /// Its length.
        len: u64,
        /// The refs it contains.
        contained: Vec<ObjectId>,
    },
    /// It has no value.
    Failed(Failure),
}

/// Where a submitted call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Here: the caller runs it.
    Here,
    /// There: the core has sent it.
    There(NodeId),
}

/// Why a call could not be submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// No live node of the cluster runs calls.
    NoNode,
    /// Its in-band arguments are larger than a call to another node may carry.
    TooLarge {
        /// Their size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a packet to `to`, with the bytes of `attach` after it.
    Send {
        /// The peer.
        to: NodeId,
        /// The packet.
        packet: Packet,
        /// The object whose bytes follow.
        attach: Option<ObjectId>,
    },
    /// Run a call for `owner`. The result's entry starts with two counts: the task's, and one
    /// held for the owner (given back by an [`Output::Unhold`]).
    Run {
        /// The call.
        spec: TaskSpec,
        /// Its owner.
        owner: NodeId,
    },
    /// A call placed elsewhere ended; complete its result.
    Complete {
        /// The result.
        id: ObjectId,
        /// How.
        completion: Completion,
    },
    /// Fetch the bytes of `id` from `from`, then report [`LocalEvent::Fetched`].
    Fetch {
        /// The object.
        id: ObjectId,
        /// The node.
        from: NodeId,
    },
    /// A [`LocalEvent::Want`] ended.
    Resolved {
        /// The object.
        id: ObjectId,
        /// How.
        resolution: Resolution,
    },
    /// Report [`LocalEvent::Completed`] when this local object completes.
    WatchLocal(ObjectId),
    /// Add one count on the object, held for other nodes.
    Hold(ObjectId),
    /// Remove that count.
    Unhold(ObjectId),
    /// Another node's object this node holds references to is gone with its owner: reads
    /// of it fail, unless its bytes are here (a copy, or a call computing it here).
    Lost {
        /// The object.
        id: ObjectId,
        /// Why.
        failure: Failure,
    },
    /// A node died.
    NodeDead {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A peer's message was refused (to log).
    Refused {
        /// The sender.
        from: Sender,
        /// What it sent, in short.
        what: &'static str,
        /// Why.
        reason: Refusal,
    },
}

/// One node's distributed state.
#[derive(Debug)]
pub struct NodeCore {
    me: NodeId,
    identity: Identity,
    config: Config,
    membership: Membership,
    refs: Refs,
    directory: Directory,
    tasks: Tasks,
    links: BTreeMap<NodeId, Link>,
    out: VecDeque<Output>,
    /// Counts to give back at the end of the current input (see `effect`).
    unholds: Vec<ObjectId>,
    rng: u64,
}

fn kind(msg: &Message) -> &'static str {
    match msg {
        Message::Hello(_) => "Hello",
        Message::Heartbeat(_) => "Heartbeat",
        Message::Members(_) => "Members",
        Message::Run(_) => "Run",
        Message::Done { .. } => "Done",
        Message::Locate(_) => "Locate",
        Message::Location { .. } => "Location",
        Message::Borrow(_) => "Borrow",
        Message::Release(_) => "Release",
        Message::FreeCopy(_) => "FreeCopy",
    }
}

impl NodeCore {
    /// A core for the node `config` describes, started at `now`.
    pub fn new(now: Instant, config: Config) -> Self {
        let mut membership = Membership::new(
            config.me.clone(),
            config.head,
            config.heartbeat,
            config.dead_after,
        );
        membership.start(now);
        Self {
            me: config.me.id,
            identity: config.identity,
            rng: config.seed | 1,
            membership,
            refs: Refs::default(),
            directory: Directory::default(),
            tasks: Tasks::default(),
            links: BTreeMap::new(),
            out: VecDeque::new(),
            unholds: Vec::new(),
            config,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The membership view.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The node table as this node knows it.
    pub fn members(&self) -> Vec<Member> {
        self.membership.members()
    }

    /// The cross-node reference counts.
    pub fn refs(&self) -> &Refs {
        &self.refs
    }

    /// The directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The calls across nodes.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = self.links.values().filter_map(Link::timeout).min();
        match (self.membership.timeout(), links) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: only for tie-breaks.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn send(&mut self, now: Instant, to: NodeId, msg: Message, attach: Option<ObjectId>) {
        if to == self.me || self.membership.dead(to).is_some() {
            return;
        }
        let rto = self.config.retransmit;
        let o = self
            .links
            .entry(to)
            .or_insert_with(|| Link::new(rto))
            .send(now, msg, attach);
        self.out.push_back(Output::Send {
            to,
            packet: o.packet,
            attach: o.attach,
        });
    }

    fn flush_ordered(&mut self, now: Instant) {
        for Ordered { to, msg, attach } in self.refs.ready() {
            self.send(now, to, msg, attach);
        }
    }

    /// Counts held for the cluster. A count given back is only output at the end of the
    /// input that gave it back, and a new one taken in the same input cancels it: the
    /// driver applies outputs after the input, so the table, which the core reads through
    /// [`LocalView`] while it handles the input, must not free an object the core still
    /// treats as there (a `Release` and a `Borrow` of one object in one batch).
    fn effect(&mut self, e: Effect) {
        match e {
            Effect::Hold(id) => match self.unholds.iter().position(|u| *u == id) {
                Some(i) => {
                    self.unholds.swap_remove(i);
                }
                None => self.out.push_back(Output::Hold(id)),
            },
            Effect::Unhold(id) => self.unholds.push(id),
        }
    }

    /// Ends an input: ordered messages that may go now, then the counts given back.
    fn end_input(&mut self, now: Instant) {
        self.flush_ordered(now);
        for id in std::mem::take(&mut self.unholds) {
            self.out.push_back(Output::Unhold(id));
        }
    }

    fn steps(&mut self, now: Instant, steps: Vec<Step>) {
        for s in steps {
            match s {
                Step::Locate { id, owner } => self.send(now, owner, Message::Locate(id), None),
                Step::Fetch { id, from } => self.out.push_back(Output::Fetch { id, from }),
                Step::Resolved { id, resolution } => {
                    self.out.push_back(Output::Resolved { id, resolution })
                }
                Step::Answer { to, id, location } => {
                    self.send(now, to, Message::Location { id, location }, None)
                }
                Step::WatchLocal(id) => self.out.push_back(Output::WatchLocal(id)),
            }
        }
    }

    fn refuse(&mut self, from: Sender, what: &'static str, reason: Refusal) {
        self.out.push_back(Output::Refused { from, what, reason });
    }

    // ---- calls ----

    /// Places a call this node submits (it owns the result): here, or on another node, to
    /// which the core sends it. `running` and `queued` are this node's own calls now.
    pub fn submit(
        &mut self,
        now: Instant,
        spec: TaskSpec,
        running: u64,
        queued: u64,
        view: &dyn LocalView,
    ) -> Result<Placed, SubmitError> {
        let mut bytes: BTreeMap<NodeId, u64> = BTreeMap::new();
        for a in &spec.args {
            if let CallArg::Object(id) = a {
                let (at, len) = match (self.directory.place(*id), view.local(*id)) {
                    (Some(Place::Held { at, len }), _) => (*at, *len),
                    (_, Some(LocalState::Ready { len })) => (self.me, len),
                    _ => continue,
                };
                // Lengths come from peers (`Held`): saturate, never overflow.
                let sum = bytes.entry(at).or_default();
                *sum = sum.saturating_add(len);
            }
        }
        let held = |id: NodeId| bytes.get(&id).copied().unwrap_or(0);
        let mut candidates = Vec::new();
        if self.config.me.worker {
            candidates.push(Candidate {
                id: self.me,
                busy: running.saturating_add(queued),
                queued,
                cores: self.config.me.cores,
                bytes: held(self.me),
            });
        }
        for m in self.membership.workers() {
            let sent = self.tasks.inflight(m.info.id);
            candidates.push(Candidate {
                id: m.info.id,
                // A peer's report: saturate, never overflow.
                busy: m.load.running.saturating_add(m.load.queued).max(sent),
                queued: m.load.queued.max(sent),
                cores: m.info.cores,
                bytes: held(m.info.id),
            });
        }
        let tie = self.random();
        let at = placement::choose(self.me, &candidates, tie).ok_or(SubmitError::NoNode)?;
        if at == self.me {
            return Ok(Placed::Here);
        }
        let len = spec.wire_len();
        if len > self.config.max_call {
            return Err(SubmitError::TooLarge {
                len,
                max: self.config.max_call,
            });
        }
        self.directory.set_place(spec.result, Place::Running { at });
        self.tasks.placed(spec.clone(), at);
        self.send(now, at, Message::Run(spec), None);
        Ok(Placed::There(at))
    }

    // ---- inputs ----

    /// A packet from a peer whose certificate the transport verified.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: Sender,
        packet: Packet,
        view: &dyn LocalView,
    ) {
        if let Err(reason) = self.membership.check_sender(&from) {
            let what = packet.msg.as_ref().map_or("Ack", kind);
            self.refuse(from, what, reason);
            return;
        }
        if self.membership.dead(from.node).is_some() {
            // Only a dead node's report gets an answer (the table that tells it so).
            if let Some(m @ Message::Heartbeat(_)) = packet.msg {
                self.dispatch(now, from, m, view);
            }
            return;
        }
        // Calls, counts and acknowledgements come only from members: no link (and nothing it
        // keeps) for anyone the head does not list. A node that has just joined is listed
        // here at the next table; its messages are repeated until then.
        let periodic = packet.msg.as_ref().is_some_and(|m| !m.reliable());
        if !periodic && !self.membership.alive(from.node) {
            let what = packet.msg.as_ref().map_or("Ack", kind);
            self.refuse(from, what, Refusal::NotAMember);
            return;
        }
        let rto = self.config.retransmit;
        let link = self
            .links
            .entry(from.node)
            .or_insert_with(|| Link::new(rto));
        let (deliver, acked) = link.receive(now, packet);
        self.membership.heard(now, from.node);
        for m in acked {
            match m {
                Message::Borrow(id) => self.refs.borrow_acked(from.node, id),
                Message::Done {
                    result,
                    outcome: Outcome::Inline { .. },
                } if self.tasks.inline_acked(result) => self.effect(Effect::Unhold(result)),
                _ => {}
            }
        }
        for m in deliver {
            self.dispatch(now, from, m, view);
            if self.membership.dead(from.node).is_some() {
                break;
            }
        }
        self.end_input(now);
    }

    fn dispatch(&mut self, now: Instant, from: Sender, msg: Message, view: &dyn LocalView) {
        let what = kind(&msg);
        let me = self.me;
        match msg {
            m @ (Message::Hello(_) | Message::Heartbeat(_) | Message::Members(_)) => {
                let mut deaths = Vec::new();
                match self.membership.handle(now, &from, m, &mut deaths) {
                    Ok(Some(reply)) if self.membership.dead(from.node).is_some() => {
                        // The table that tells a dead node it is dead; no link is kept for it.
                        self.out.push_back(Output::Send {
                            to: from.node,
                            packet: Packet {
                                seq: 0,
                                ack: 0,
                                msg: Some(reply),
                            },
                            attach: None,
                        });
                    }
                    Ok(Some(reply)) => self.send(now, from.node, reply, None),
                    Ok(None) => {}
                    Err(r) => self.refuse(from, what, r),
                }
                self.deaths(now, deaths);
            }
            Message::Run(spec) => {
                let refusal = if !self.config.me.worker || self.identity.role != Role::Node {
                    Some(Refusal::Forbidden("this node does not run calls"))
                } else if spec.result.owner() != from.node.0 {
                    Some(Refusal::Forbidden(
                        "a call's result must be owned by its sender",
                    ))
                } else if !self.tasks.accept(from.node, spec.result) {
                    Some(Refusal::Forbidden("the result id is already in use here"))
                } else {
                    None
                };
                match refusal {
                    Some(r) => {
                        let detail = format!("{r:?}");
                        self.refuse(from, what, r);
                        // Say so, so that the caller does not wait forever.
                        self.send(
                            now,
                            from.node,
                            Message::Done {
                                result: spec.result,
                                outcome: Outcome::Failed(Failure::Refused(detail)),
                            },
                            None,
                        );
                    }
                    None => self.out.push_back(Output::Run {
                        spec,
                        owner: from.node,
                    }),
                }
            }
            Message::Done { result, outcome } => {
                let Some(_task) = self.tasks.finished(from.node, result) else {
                    self.refuse(
                        from,
                        what,
                        Refusal::Forbidden("no such call runs on the sender"),
                    );
                    return;
                };
                self.directory.remove(result);
                let (completion, location) = match outcome {
                    Outcome::Inline { len } if len <= tasks::INLINE_MAX => {
                        (Completion::Inline, Location::At(vec![me]))
                    }
                    Outcome::Inline { len } => {
                        let f = Failure::Refused(format!(
                            "node {} sent a {len}-byte result inline (at most {})",
                            from.node,
                            tasks::INLINE_MAX
                        ));
                        (Completion::Failed(f.clone()), Location::Failed(f))
                    }
                    Outcome::Held { len, contained } if contained.len() <= MAX_CONTAINED => {
                        self.directory
                            .set_place(result, Place::Held { at: from.node, len });
                        (
                            Completion::Held {
                                at: from.node,
                                len,
                                contained,
                            },
                            Location::At(vec![from.node]),
                        )
                    }
                    Outcome::Held { .. } => {
                        let f = Failure::Refused("a result naming too many refs".into());
                        (Completion::Failed(f.clone()), Location::Failed(f))
                    }
                    Outcome::Failed(f) => (Completion::Failed(f.clone()), Location::Failed(f)),
                };
                self.out.push_back(Output::Complete {
                    id: result,
                    completion,
                });
                let mut steps = Vec::new();
                self.directory.settled(me, result, location, &mut steps);
                self.steps(now, steps);
            }
            Message::Locate(id) => {
                if id.owner() != me.0 {
                    self.refuse(
                        from,
                        what,
                        Refusal::Forbidden("only an object's owner locates it"),
                    );
                    self.send(
                        now,
                        from.node,
                        Message::Location {
                            id,
                            location: Location::Failed(Failure::Gone),
                        },
                        None,
                    );
                    return;
                }
                let mut steps = Vec::new();
                self.directory.locate(me, from.node, id, view, &mut steps);
                self.steps(now, steps);
            }
            Message::Location { id, location } => {
                if id.owner() != from.node.0 {
                    self.refuse(
                        from,
                        what,
                        Refusal::Forbidden("only an object's owner says where it is"),
                    );
                    return;
                }
                let mut steps = Vec::new();
                self.directory.on_location(me, id, location, &mut steps);
                self.steps(now, steps);
            }
            Message::Borrow(id) => {
                let exists = self.directory.knows(id) || view.local(id).is_some();
                match self.refs.borrow(me, from.node, id, exists) {
                    Ok(Some(e)) => self.effect(e),
                    Ok(None) => {}
                    Err(r) => self.refuse(from, what, r),
                }
            }
            Message::Release(id) => match self.refs.release(from.node, id) {
                Ok(Some(e)) => self.effect(e),
                Ok(None) => {}
                Err(r) => self.refuse(from, what, r),
            },
            Message::FreeCopy(id) => match self.refs.free_copy(from.node, id) {
                Ok(Some(e)) => self.effect(e),
                Ok(None) => {}
                Err(r) => self.refuse(from, what, r),
            },
        }
    }

    /// Something happened on this node.
    pub fn handle_local(&mut self, now: Instant, event: LocalEvent, view: &dyn LocalView) {
        let me = self.me;
        match event {
            LocalEvent::Load(load) => self.membership.set_load(load),
            LocalEvent::Hold(id) => {
                let owner = NodeId(id.owner());
                if owner == me {
                    return;
                }
                if let Some(reason) = self.membership.dead(owner) {
                    let failure = Failure::NodeDied {
                        node: owner,
                        detail: reason.to_owned(),
                    };
                    self.out.push_back(Output::Lost { id, failure });
                    return;
                }
                if let Some((to, msg)) = self.refs.hold_foreign(id, owner) {
                    self.send(now, to, msg, None);
                }
            }
            LocalEvent::Drop(id) => {
                let owner = NodeId(id.owner());
                if owner != me {
                    self.refs.drop_foreign(id, owner);
                }
            }
            LocalEvent::Freed(id) => {
                if let Some(Place::Held { at, .. }) = self.directory.remove(id) {
                    self.refs.send_ordered(Ordered {
                        to: at,
                        msg: Message::FreeCopy(id),
                        attach: None,
                    });
                }
            }
            LocalEvent::TaskFinished { result, finished } => match self.tasks.ran(result) {
                // Its owner died meanwhile: nobody will free the copy kept for it.
                None => self.effect(Effect::Unhold(result)),
                Some(owner) => {
                    let (outcome, attach) = match finished {
                        Finished::Value { len, contained } if tasks::inline(len, &contained) => {
                            self.tasks.inline_sent(result, owner);
                            (Outcome::Inline { len }, Some(result))
                        }
                        Finished::Value { len, contained } => {
                            self.refs.host(result);
                            (Outcome::Held { len, contained }, None)
                        }
                        Finished::Failed(e) => {
                            self.effect(Effect::Unhold(result));
                            (Outcome::Failed(Failure::Task(e)), None)
                        }
                    };
                    // After the borrows of what the call's result holds.
                    self.refs.send_ordered(Ordered {
                        to: owner,
                        msg: Message::Done { result, outcome },
                        attach,
                    });
                }
            },
            LocalEvent::Completed(id) => {
                if let Some(location) = self.directory.location(me, id, view) {
                    let mut steps = Vec::new();
                    self.directory.settled(me, id, location, &mut steps);
                    self.steps(now, steps);
                }
            }
            LocalEvent::Fetched { id, from, result } => {
                let mut steps = Vec::new();
                let result = result.map_err(|detail| Failure::NodeDied {
                    node: from,
                    detail: format!("the transfer failed: {detail}"),
                });
                self.directory.fetched(id, from, result, &mut steps);
                self.steps(now, steps);
            }
            LocalEvent::Want { id, fetch } => {
                let owner = NodeId(id.owner());
                let dead = self.membership.dead(owner).map(str::to_owned);
                let mut steps = Vec::new();
                self.directory
                    .want(me, id, fetch, view, dead.as_deref(), &mut steps);
                self.steps(now, steps);
            }
        }
        self.end_input(now);
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut deaths = Vec::new();
        if let Some(msg) = self.membership.on_timeout(now, &mut deaths) {
            let head = self.membership.head();
            self.send(now, head, msg, None);
        }
        self.deaths(now, deaths);
        let mut sends = Vec::new();
        for (to, link) in self.links.iter_mut() {
            if link.timeout().is_some_and(|t| t <= now) {
                let mut out = Vec::new();
                link.on_timeout(now, &mut out);
                sends.extend(out.into_iter().map(|o| (*to, o)));
            }
        }
        sends.sort_by_key(|(to, o)| (*to, o.packet.seq));
        for (to, o) in sends {
            self.out.push_back(Output::Send {
                to,
                packet: o.packet,
                attach: o.attach,
            });
        }
        self.end_input(now);
    }

    fn deaths(&mut self, now: Instant, deaths: Vec<Death>) {
        let me = self.me;
        for Death { node, reason } in deaths {
            self.out.push_back(Output::NodeDead {
                node,
                reason: reason.clone(),
            });
            if node == me {
                // The driver stops this node; nothing else matters now.
                return;
            }
            self.links.remove(&node);
            let died = Failure::NodeDied {
                node,
                detail: reason.clone(),
            };
            let mut steps = Vec::new();
            for t in self.tasks.lost_with(node) {
                let id = t.spec.result;
                self.directory.remove(id);
                self.out.push_back(Output::Complete {
                    id,
                    completion: Completion::Failed(died.clone()),
                });
                self.directory
                    .settled(me, id, Location::Failed(died.clone()), &mut steps);
            }
            for id in self.tasks.owner_died(node) {
                self.effect(Effect::Unhold(id));
            }
            let mut effects = Vec::new();
            for id in self.refs.node_died(node, &mut effects) {
                self.out.push_back(Output::Lost {
                    id,
                    failure: died.clone(),
                });
            }
            for e in effects {
                self.effect(e);
            }
            self.directory.node_died(me, node, &reason, &mut steps);
            self.steps(now, steps);
        }
        self.flush_ordered(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::LocalState;

    struct Has(ObjectId);
    impl LocalView for Has {
        fn local(&self, id: ObjectId) -> Option<LocalState> {
            (id == self.0).then_some(LocalState::Ready { len: 8 })
        }
    }

    fn core(me: NodeId) -> NodeCore {
        let info = NodeInfo {
            id: me,
            addr: None,
            worker: true,
            cores: 2,
        };
        let identity = Identity {
            cert: me.cert(),
            role: Role::Node,
        };
        NodeCore::new(Instant::now(), Config::new(info, identity, None))
    }

    fn outputs(c: &mut NodeCore) -> Vec<Output> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    #[test]
    fn a_release_and_a_borrow_in_one_batch_never_free_the_object() {
        let (a, b) = (NodeId::new(1, 1), NodeId::new(2, 1));
        let mut owner = core(a);
        let x = ObjectId::new(a.0, 1);
        let view = Has(x);
        let from = Sender {
            node: b,
            identity: Identity {
                cert: 2,
                role: Role::Node,
            },
        };
        let mut link = Link::new(Duration::from_secs(1));
        let now = Instant::now();
        // B joins (only members' counts are taken).
        let hello = Packet {
            seq: 0,
            ack: 0,
            msg: Some(Message::Hello(NodeInfo {
                id: b,
                addr: None,
                worker: true,
                cores: 1,
            })),
        };
        owner.handle_packet(now, from, hello, &view);
        let borrow = link.send(now, Message::Borrow(x), None).packet;
        owner.handle_packet(now, from, borrow, &view);
        assert!(outputs(&mut owner).contains(&Output::Hold(x)));
        // B gives its borrow back and takes it again; the second packet overtakes the
        // first, so both are delivered in one input.
        let release = link.send(now, Message::Release(x), None).packet;
        let again = link.send(now, Message::Borrow(x), None).packet;
        owner.handle_packet(now, from, again, &view);
        owner.handle_packet(now, from, release, &view);
        let out = outputs(&mut owner);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Hold(_) | Output::Unhold(_))),
            "the hold stands: {out:?}"
        );
        assert!(owner.refs().is_borrower(x, b));
    }

    #[test]
    fn a_client_certificate_cannot_join_as_a_worker_or_speak_for_a_node() {
        let head = NodeId::new(1, 1);
        let mut c = core(head);
        let view = Has(ObjectId::new(head.0, 1));
        let client = Identity {
            cert: 9,
            role: Role::Client,
        };
        let hello = |id: NodeId, worker: bool| Packet {
            seq: 0,
            ack: 0,
            msg: Some(Message::Hello(NodeInfo {
                id,
                addr: None,
                worker,
                cores: 1,
            })),
        };
        let now = Instant::now();
        // Another node's id.
        let victim = NodeId::new(2, 1);
        let from = Sender {
            node: victim,
            identity: client,
        };
        c.handle_packet(now, from, hello(victim, false), &view);
        // Its own id, as a worker.
        let me = NodeId::new(9, 1);
        let from = Sender {
            node: me,
            identity: client,
        };
        c.handle_packet(now, from, hello(me, true), &view);
        let refusals: Vec<Refusal> = outputs(&mut c)
            .into_iter()
            .filter_map(|o| match o {
                Output::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(refusals, vec![Refusal::NotItsId, Refusal::ClientAsWorker]);
        assert_eq!(c.members().len(), 1, "only the head itself");
        // As a driver it may join.
        c.handle_packet(now, from, hello(me, false), &view);
        assert_eq!(c.members().len(), 2);
        assert!(!c.members()[1].info.worker);
    }

    /// Figures from peers are summed with saturation: a node reporting a load of `u64::MAX`
    /// calls, or arguments of `u64::MAX` bytes, cannot make placement overflow.
    #[test]
    fn placement_survives_huge_figures() {
        let (a, b) = (NodeId::new(1, 1), NodeId::new(2, 1));
        let mut head = core(a);
        struct Huge;
        impl LocalView for Huge {
            fn local(&self, _id: ObjectId) -> Option<LocalState> {
                Some(LocalState::Ready { len: u64::MAX })
            }
        }
        let from = Sender {
            node: b,
            identity: Identity {
                cert: 2,
                role: Role::Node,
            },
        };
        let now = Instant::now();
        let packet = |msg| Packet {
            seq: 0,
            ack: 0,
            msg: Some(msg),
        };
        let hello = Message::Hello(NodeInfo {
            id: b,
            addr: None,
            worker: true,
            cores: 1,
        });
        head.handle_packet(now, from, packet(hello), &Huge);
        let load = Load {
            running: u64::MAX,
            queued: u64::MAX,
            ..Load::default()
        };
        head.handle_packet(now, from, packet(Message::Heartbeat(load)), &Huge);
        let spec = TaskSpec {
            module: ferry_abi::ModuleId([0; 32]),
            function: "f".into(),
            args: vec![
                CallArg::Object(ObjectId::new(a.0, 1)),
                CallArg::Object(ObjectId::new(a.0, 2)),
            ],
            result: ObjectId::new(a.0, 3),
        };
        let placed = head.submit(now, spec, u64::MAX, u64::MAX, &Huge);
        assert!(placed.is_ok(), "{placed:?}");
    }
}
