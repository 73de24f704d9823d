//! What a workload does on a simulated node, what the simulator does to the cluster, and
//! the invariant checks.

use super::*;

impl Sim {
    // ---- the workload ----

    /// `slot` puts an object of `len` bytes containing refs it holds; returns the new ref
    /// (held by `slot`'s workload).
    pub fn put(
        &mut self,
        slot: usize,
        len: u64,
        contained: &[ObjectId],
    ) -> Result<ObjectId, Failed> {
        let me = self.ids[slot];
        let n = self.node_mut(slot);
        let id = ObjectId::new(me.0, n.next_object);
        n.next_object += 1;
        n.table
            .insert(id, State::Ready { len }, 1, 0, contained.to_vec())
            .map_err(|b| self.broken(b))?;
        self.node_mut(slot).handles.push(id);
        self.note(format!(
            "{me} puts {id} ({len} bytes, holding {contained:?})"
        ));
        self.drain(slot)?;
        Ok(id)
    }

    /// `slot` calls a function with `args` (top-level refs and refs inside values, all held
    /// by `slot`); returns the result's ref.
    pub fn call(
        &mut self,
        slot: usize,
        args: Vec<CallArg>,
    ) -> Result<Result<ObjectId, SubmitError>, Failed> {
        let me = self.ids[slot];
        let n = self.node_mut(slot);
        let result = ObjectId::new(me.0, n.next_object);
        n.next_object += 1;
        let spec = TaskSpec {
            module: MODULE,
            function: "f".into(),
            args,
            result,
        };
        let refs: Vec<ObjectId> = spec.refs().collect();
        for r in &refs {
            let n = self.node_mut(slot);
            n.table.retain(*r).map_err(|b| self.broken(b))?;
        }
        let now = self.now;
        let n = self.node_mut(slot);
        let running = n.tasks.len() as u64;
        let placed = n.core.submit(now, spec.clone(), running, 0, &n.table);
        let placed = match placed {
            Ok(p) => p,
            Err(e) => {
                n.table.release(&refs);
                self.drain(slot)?;
                return Ok(Err(e));
            }
        };
        n.table
            .insert(result, State::Pending, 2, 0, Vec::new())
            .map_err(|b| self.broken(b))?;
        let n = self.node_mut(slot);
        n.handles.push(result);
        n.submitted.insert(result, refs);
        self.note(format!("{me} calls {result}: {placed:?}"));
        if placed == Placed::Here {
            self.start_task(slot, spec, me)?;
        }
        self.drain(slot)?;
        Ok(Ok(result))
    }

    /// `slot` reads `id`, which it holds a ref to; returns the get's number.
    pub fn get(&mut self, slot: usize, id: ObjectId) -> Result<u64, Failed> {
        let g = self.next_get;
        self.next_get += 1;
        self.gets.insert(
            g,
            Get {
                node: self.ids[slot],
                id,
                result: None,
            },
        );
        // A get holds a reference to what it reads until it ends (a driver's `get` borrows
        // the handle; a guest's `get` holds a grant).
        let n = self.node_mut(slot);
        n.table.retain(id).map_err(|b| self.broken(b))?;
        self.wait(slot, id, Waiter::Get(g))?;
        Ok(g)
    }

    /// `slot`'s workload drops one ref to `id`.
    pub fn drop_ref(&mut self, slot: usize, id: ObjectId) -> Result<(), Failed> {
        let n = self.node_mut(slot);
        if let Some(i) = n.handles.iter().position(|h| *h == id) {
            n.handles.swap_remove(i);
            n.table.release(&[id]);
        }
        self.drain(slot)
    }

    /// The refs `slot`'s workload holds.
    pub fn handles(&self, slot: usize) -> Vec<ObjectId> {
        self.node(slot)
            .map(|n| n.handles.clone())
            .unwrap_or_default()
    }

    // ---- faults ----

    /// Crashes the node in `slot`: everything it held is gone.
    pub fn crash(&mut self, slot: usize) {
        if self.nodes[slot].take().is_some() {
            self.note(format!("{} crashes", self.ids[slot]));
            self.disturbed[slot] = Some(self.now);
        }
    }

    /// Starts the node in `slot` again, as a new incarnation.
    pub fn restart(&mut self, slot: usize) {
        if self.nodes[slot].is_some() {
            return;
        }
        let old = self.ids[slot];
        self.ids[slot] = NodeId::new(old.cert(), old.incarnation() + 1);
        self.note(format!("{old} restarts as {}", self.ids[slot]));
        self.boot(slot);
    }

    /// Cuts the network between two slots.
    pub fn cut(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        self.note(format!("cut {} | {}", self.ids[a], self.ids[b]));
        self.cuts.insert((a.min(b), a.max(b)));
        for s in [a, b] {
            if a == 0 || b == 0 {
                self.disturbed[s] = Some(self.now);
            }
        }
    }

    /// Heals every cut.
    pub fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.cuts) {
            if a == 0 {
                self.disturbed[b] = Some(self.now);
            }
        }
        self.note("healed".into());
    }

    /// The hostile peer (if the shape has one) sends one forged message, chosen at random,
    /// through a proper link so that it reaches the core's checks.
    pub fn attack(&mut self) -> Result<(), Failed> {
        let Some(h) = self.hostile.as_ref() else {
            return Ok(());
        };
        let slot = h.slot;
        let me = self.ids[slot];
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|s| self.nodes[*s].is_some())
            .collect();
        if honest.is_empty() {
            return Ok(());
        }
        let victim = honest[self.rng.below(honest.len() as u64) as usize];
        let target = honest[self.rng.below(honest.len() as u64) as usize];
        let victim_id = self.ids[victim];
        let some_object = self
            .node(victim)
            .and_then(|n| n.table.entries().next().map(|(id, _)| *id))
            .unwrap_or(ObjectId::new(victim_id.0, 1));
        let (claim, msg) = match self.rng.below(8) {
            // Speak as another node.
            0 => (
                victim_id,
                Message::Hello(NodeInfo {
                    id: victim_id,
                    addr: None,
                    worker: true,
                    cores: 64,
                }),
            ),
            // Join as a worker with a client certificate.
            1 => (
                me,
                Message::Hello(NodeInfo {
                    id: me,
                    addr: None,
                    worker: true,
                    cores: 64,
                }),
            ),
            // Declare a node dead.
            2 => {
                let mut members = self.node(0).map(|n| n.core.members()).unwrap_or_default();
                for m in &mut members {
                    m.alive = false;
                    m.reason = Some("forged".into());
                }
                (me, Message::Members(members))
            }
            // Free what it was never given.
            3 => (me, Message::Release(some_object)),
            4 => (me, Message::FreeCopy(some_object)),
            // Finish a call it does not run.
            5 => (
                me,
                Message::Done {
                    result: some_object,
                    outcome: crate::message::Outcome::Failed(Failure::Gone),
                },
            ),
            // Make a node overwrite another owner's object.
            6 => {
                let spec = TaskSpec {
                    module: MODULE,
                    function: "f".into(),
                    args: Vec::new(),
                    result: some_object,
                };
                (me, Message::Run(spec))
            }
            _ => (victim_id, Message::Release(some_object)),
        };
        let target_id = self.ids[target];
        let from = Sender {
            node: claim,
            identity: Identity {
                cert: me.cert(),
                role: Role::Client,
            },
        };
        let now = self.now;
        let h = self.hostile.as_mut().expect("checked above");
        let o = h
            .links
            .entry((claim, target_id))
            .or_insert_with(|| Link::new(Duration::from_millis(150)))
            .send(now, msg, None);
        self.note(format!(
            "hostile {me} as {claim} -> {target_id}: {:?}",
            o.packet.msg
        ));
        self.send(slot, from, target_id, o.packet, None);
        Ok(())
    }

    // ---- invariants ----

    /// The invariants that hold after every step.
    pub fn check(&self) -> Result<(), Failed> {
        let hostile = self.hostile.as_ref().map(|h| self.ids[h.slot].cert());
        let head = self.node(0);
        for slot in 0..self.nodes.len() {
            let Some(n) = self.node(slot) else { continue };
            // A node the head has declared dead is fenced off: everyone who knows drops what
            // it sends, and it stops once it hears. What it references no longer counts.
            // (Or has dropped from its table: a dead driver's row goes.)
            let zombie = slot != 0
                && head.is_some_and(|h| {
                    let m = h.core.membership();
                    m.dead(self.ids[slot]).is_some()
                        || (!m.alive(self.ids[slot]) && n.core.membership().joined())
                });
            if zombie {
                continue;
            }
            // 1. Nothing this node references is gone at a live owner, and held copies exist.
            for (id, e) in n.table.entries() {
                let owner = NodeId(id.owner());
                if owner == self.ids[slot] || matches!(e.state, State::Failed(_)) {
                    continue;
                }
                // Counts held for the cluster (a copy kept for the owner) are no reference.
                if e.refs == 0 {
                    continue;
                }
                let Some(o) = self.slot_of(owner).and_then(|s| self.node(s)) else {
                    continue;
                };
                if o.table.get(*id).is_none() {
                    return Err(self.fail(format!(
                        "{} references {id}, which its owner {owner} has freed",
                        self.ids[slot]
                    )));
                }
            }
            for (id, e) in n.table.entries() {
                if e.state != State::Elsewhere || id.owner() != self.ids[slot].0 {
                    continue;
                }
                if let Some(crate::directory::Place::Held { at, .. }) =
                    n.core.directory().place(*id)
                    && let Some(h) = self.slot_of(*at).and_then(|s| self.node(s))
                    && h.table.get(*id).is_none()
                {
                    return Err(self.fail(format!(
                        "{at} dropped {id}, which its owner {} still counts on",
                        self.ids[slot]
                    )));
                }
            }
            // 3. Membership holds only verified identities.
            for m in n.core.members() {
                let given = m
                    .info
                    .id
                    .cert()
                    .checked_sub(1)
                    .map(|s| s as usize)
                    .and_then(|s| self.ids.get(s));
                if given.is_none_or(|g| m.info.id.incarnation() > g.incarnation())
                    || Some(m.info.id.cert()) == hostile
                {
                    return Err(self.fail(format!(
                        "{} lists {:?}, an id nobody was given",
                        self.ids[slot], m.info.id
                    )));
                }
                let role = self.roles[m.info.id.cert() as usize - 1];
                if m.info.worker && role != Role::Node {
                    return Err(self.fail(format!(
                        "{} lists client {} as a worker",
                        self.ids[slot], m.info.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Ends the run: heals the network, stops losing messages, drops every ref the workloads
    /// hold, lets the cluster go quiet, and checks that every get ended and nothing leaked.
    pub fn finish(&mut self) -> Result<(), Failed> {
        self.heal();
        self.faults.loss_per_mille = 0;
        // Long enough for deaths to be declared and every retransmission to land.
        let quiet = self.dead_after * 4 + crate::link::MAX_RTO * 2;
        // Gets still running hand their readers refs when they end: drop those too.
        for _ in 0..10 {
            let mut dropped = false;
            for slot in 0..self.nodes.len() {
                while let Some(&id) = self.node(slot).and_then(|n| n.handles.last()) {
                    self.drop_ref(slot, id)?;
                    dropped = true;
                }
            }
            if !dropped {
                break;
            }
            self.run_for(quiet)?;
        }
        for g in self.gets.values() {
            if g.result.is_none() && self.slot_of(g.node).is_some() {
                return Err(self.fail(format!("{}'s get of {} never ended", g.node, g.id)));
            }
        }
        for slot in 0..self.nodes.len() {
            let Some(n) = self.node(slot) else { continue };
            let me = self.ids[slot];
            if !n.table.is_empty() {
                let all: Vec<String> = n
                    .table
                    .entries()
                    .map(|(id, e)| format!("{id}: {e:?}"))
                    .collect();
                return Err(self.fail(format!("{me} leaks {}", all.join("; "))));
            }
            let (borrowed_here, borrows, hosted, waiting) = n.core.refs().counts();
            let (places, watchers, pulls) = n.core.directory().counts();
            let (placed, for_peers, inline) = n.core.tasks().counts();
            let all = [
                borrowed_here,
                borrows,
                hosted,
                waiting,
                places,
                watchers,
                pulls,
                placed,
                for_peers,
                inline,
            ];
            if all.iter().any(|c| *c != 0) {
                return Err(self.fail(format!(
                    "{me}'s core leaks: borrowed by others {borrowed_here}, borrows {borrows}, hosted {hosted}, \
                     waiting {waiting}, places {places}, watchers {watchers}, pulls {pulls}, placed {placed}, \
                     for peers {for_peers}, inline {inline}"
                )));
            }
            if !n.tasks.is_empty() {
                return Err(self.fail(format!("{me} still runs {} tasks", n.tasks.len())));
            }
        }
        Ok(())
    }
}
