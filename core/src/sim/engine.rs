//! The simulator's engine: steps, the stand-in driver of each core, the workload's
//! operations and the invariant checks.

use super::*;

/// A packet in a trace line.
pub(super) fn brief(p: &Packet) -> String {
    let m = match &p.msg {
        None => "ack".to_owned(),
        Some(Message::Hello(i)) => format!("Hello(worker {})", i.worker),
        Some(Message::Heartbeat(_)) => "Heartbeat".into(),
        Some(Message::Members(m)) => format!(
            "Members({})",
            m.iter()
                .map(|m| format!("{}{}", m.info.id, if m.alive { "" } else { " dead" }))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Message::Run(s)) => {
            format!("Run({}, args {:?})", s.result, s.refs().collect::<Vec<_>>())
        }
        Some(m) => format!("{m:?}"),
    };
    format!("#{} ack {} {m}", p.seq, p.ack)
}

impl Sim {
    pub(super) fn node_mut(&mut self, slot: usize) -> &mut SimNode {
        self.nodes[slot].as_mut().expect("a live node")
    }

    // ---- time ----

    /// Runs the next event or timer. Returns false when nothing is scheduled.
    pub fn step(&mut self) -> Result<bool, Failed> {
        let timer = (0..self.nodes.len())
            .filter_map(|s| Some((self.node(s)?.core.poll_timeout()?, s)))
            .min();
        let event = self.events.keys().next().copied();
        match (timer, event) {
            (None, None) => return Ok(false),
            (Some((t, slot)), e) if e.is_none_or(|(et, _)| t < et) => {
                self.now = self.now.max(t);
                let now = self.now;
                self.node_mut(slot).core.handle_timeout(now);
                self.drain(slot)?;
            }
            (_, Some(key)) => {
                self.now = self.now.max(key.0);
                let e = self.events.remove(&key).expect("the key was just read");
                self.event(e)?;
            }
            (Some(_), None) => unreachable!("handled by the first arm"),
        }
        self.check()?;
        Ok(true)
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), Failed> {
        let until = self.now + d;
        loop {
            let timer = (0..self.nodes.len())
                .filter_map(|s| self.node(s)?.core.poll_timeout())
                .min();
            let event = self.events.keys().next().map(|k| k.0);
            let next = match (timer, event) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.step()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    fn event(&mut self, e: Event) -> Result<(), Failed> {
        match e {
            Event::Deliver(f) => self.deliver(f),
            Event::TaskDone { node, result } => match self.slot_of(node) {
                Some(slot) => self.task_done(slot, result),
                None => Ok(()),
            },
            Event::FetchDone { node, id, from } => {
                let Some(slot) = self.slot_of(node) else {
                    return Ok(());
                };
                let found = self.slot_of(from).and_then(|h| {
                    if self.is_cut(slot, h) {
                        return None;
                    }
                    match self.node(h)?.table.get(id) {
                        Some(e) => match &e.state {
                            State::Ready { .. } => Some(e.contained.clone()),
                            _ => None,
                        },
                        None => None,
                    }
                });
                let result = match found {
                    Some(contained) => {
                        self.node_mut(slot).fetched.insert(id, contained);
                        Ok(())
                    }
                    None => Err("unreachable, or it does not have the object".to_owned()),
                };
                self.note(format!("{node} fetched {id} from {from}: {result:?}"));
                let now = self.now;
                let n = self.node_mut(slot);
                n.core
                    .handle_local(now, LocalEvent::Fetched { id, from, result }, &n.table);
                self.drain(slot)
            }
        }
    }

    fn deliver(&mut self, f: Flight) -> Result<(), Failed> {
        let Some(slot) = self.slot_of(f.to) else {
            return Ok(());
        };
        if self.is_cut(f.from_slot, slot) {
            return Ok(());
        }
        self.note(format!("{} -> {}: {}", f.from.node, f.to, brief(&f.packet)));
        if let Some((id, len)) = f.attach {
            self.node_mut(slot).attachments.insert(id, len);
        }
        let now = self.now;
        let n = self.node_mut(slot);
        n.core.handle_packet(now, f.from, f.packet, &n.table);
        let r = self.drain(slot);
        // Bytes that came with a message the link holds back for ordering wait for it; bytes
        // nobody expects go.
        if let Some(n) = self.nodes[slot].as_mut() {
            let core = &n.core;
            n.attachments
                .retain(|id, _| core.tasks().spec(*id).is_some());
        }
        r
    }

    // ---- the stand-in driver ----

    /// Carries out what the core of `slot` asks, feeding the table's events back, until both
    /// are quiet.
    pub(super) fn drain(&mut self, slot: usize) -> Result<(), Failed> {
        loop {
            let Some(n) = self.nodes[slot].as_mut() else {
                return Ok(());
            };
            if !n.table.events.is_empty() {
                let events = std::mem::take(&mut n.table.events);
                let now = self.now;
                for e in events {
                    let n = self.node_mut(slot);
                    n.core.handle_local(now, e, &n.table);
                }
                continue;
            }
            let Some(o) = n.core.poll_output() else {
                return Ok(());
            };
            self.output(slot, o)?;
        }
    }

    pub(super) fn broken(&self, b: Broken) -> Failed {
        self.fail(b.0)
    }

    fn output(&mut self, slot: usize, o: Output) -> Result<(), Failed> {
        let me = self.ids[slot];
        match o {
            Output::Send { to, packet, attach } => {
                let attach = attach.and_then(|id| match self.node(slot)?.table.get(id)?.state {
                    State::Ready { len } => Some((id, len)),
                    _ => None,
                });
                let from = Sender {
                    node: me,
                    identity: Identity {
                        cert: me.cert(),
                        role: self.roles[slot],
                    },
                };
                self.send(slot, from, to, packet, attach);
            }
            Output::Run { spec, owner } => {
                self.note(format!("{me} runs {} for {owner}", spec.result));
                let result = spec.result;
                let refs: Vec<ObjectId> = spec.refs().collect();
                let n = self.node_mut(slot);
                // Held twice for the cluster: by the call until it ends, and by its owner.
                n.table
                    .insert(result, State::Pending, 0, 2, Vec::new())
                    .map_err(|b| self.broken(b))?;
                for r in refs {
                    let n = self.node_mut(slot);
                    n.table.retain(r).map_err(|b| self.broken(b))?;
                }
                self.start_task(slot, spec, owner)?;
            }
            Output::Complete { id, completion } => {
                self.note(format!("{me} completes {id}: {completion:?}"));
                let n = self.node_mut(slot);
                let (state, contained) = match completion {
                    Completion::Inline => match n.attachments.remove(&id) {
                        Some(len) => (State::Ready { len }, Vec::new()),
                        None => {
                            return Err(self
                                .fail(format!("{me}: inline result {id} came without its bytes")));
                        }
                    },
                    Completion::Held { contained, .. } => (State::Elsewhere, contained),
                    Completion::Failed(f) => (State::Failed(f), Vec::new()),
                };
                self.complete(slot, id, state, contained)?;
                let n = self.node_mut(slot);
                let mut release = n.submitted.remove(&id).unwrap_or_default();
                release.push(id);
                n.table.release(&release);
            }
            Output::Fetch { id, from } => {
                let at = self.now + self.latency() + self.latency();
                self.schedule(at, Event::FetchDone { node: me, id, from });
            }
            Output::Resolved { id, resolution } => {
                let n = self.node_mut(slot);
                let waiters = n.remote_waiters.remove(&id).unwrap_or_default();
                let contained = n.fetched.remove(&id).unwrap_or_default();
                for w in waiters {
                    let r = match &resolution {
                        Resolution::Ready => Ok(contained.clone()),
                        Resolution::Failed(f) => Err(f.clone()),
                    };
                    self.finish_wait(slot, w, r)?;
                }
            }
            Output::WatchLocal(id) => {
                // Outputs are applied after the input that made them: it may be complete
                // already.
                let n = self.node_mut(slot);
                match n.table.get(id).map(|e| &e.state) {
                    Some(State::Pending) => {
                        n.watched.insert(id);
                    }
                    _ => n.table.events.push(LocalEvent::Completed(id)),
                }
            }
            Output::Hold(id) => {
                let n = self.node_mut(slot);
                n.table.hold(id).map_err(|b| self.broken(b))?;
            }
            Output::Unhold(id) => self.node_mut(slot).table.unhold(id),
            Output::Lost { id, failure } => self.node_mut(slot).table.lose(id, failure),
            Output::NodeDead { node, reason } => {
                self.note(format!("{me} hears {node} is dead: {reason}"));
                if node == me {
                    // Evicted: a real node stops here.
                    self.crash(slot);
                    return Ok(());
                }
                if slot == 0 {
                    self.deaths.push(node);
                    let victim = node.cert().checked_sub(1).map(|s| s as usize);
                    let legit = victim.is_some_and(|v| {
                        self.ids.get(v) != Some(&node)
                            || self.nodes[v].is_none()
                            || self.disturbed[v].is_some_and(|t| {
                                t + self.dead_after + Duration::from_secs(1) >= self.now
                            })
                            || self.is_cut(0, v)
                            || self.roles[v] == Role::Client && self.nodes[v].is_none()
                    });
                    if !legit {
                        return Err(self.fail(format!(
                            "the head declared {node} dead, which neither crashed nor was cut off"
                        )));
                    }
                }
            }
            Output::Refused { from, what, reason } => {
                self.note(format!(
                    "{me} refused {what} from {}: {reason:?}",
                    from.node
                ));
                *self.refused.entry(what).or_default() += 1;
            }
        }
        Ok(())
    }

    pub(super) fn send(
        &mut self,
        from_slot: usize,
        from: Sender,
        to: NodeId,
        packet: Packet,
        attach: Option<(ObjectId, u64)>,
    ) {
        if self.rng.chance(self.faults.loss_per_mille) {
            return;
        }
        if let Some(to_slot) = self.slot_of(to)
            && self.is_cut(from_slot, to_slot)
        {
            return;
        }
        let at = self.now + self.latency();
        self.schedule(
            at,
            Event::Deliver(Flight {
                from,
                from_slot,
                to,
                packet,
                attach,
            }),
        );
    }

    fn complete(
        &mut self,
        slot: usize,
        id: ObjectId,
        state: State,
        contained: Vec<ObjectId>,
    ) -> Result<(), Failed> {
        let n = self.node_mut(slot);
        let kept = n
            .table
            .complete(id, state, contained)
            .map_err(|b| self.broken(b))?;
        let n = self.node_mut(slot);
        if kept && n.watched.remove(&id) {
            n.table.events.push(LocalEvent::Completed(id));
        }
        for w in n.local_waiters.remove(&id).unwrap_or_default() {
            self.wait(slot, id, w)?;
        }
        Ok(())
    }

    pub(super) fn start_task(
        &mut self,
        slot: usize,
        spec: TaskSpec,
        owner: NodeId,
    ) -> Result<(), Failed> {
        let result = spec.result;
        let tops: Vec<ObjectId> = spec
            .args
            .iter()
            .filter_map(|a| match a {
                CallArg::Object(id) => Some(*id),
                CallArg::Value { .. } => None,
            })
            .collect();
        self.node_mut(slot).tasks.insert(
            result,
            Task {
                spec,
                owner,
                waiting: tops.len(),
                failed: None,
            },
        );
        for id in &tops {
            self.wait(slot, *id, Waiter::Arg(result))?;
        }
        self.maybe_run(slot, result);
        Ok(())
    }

    fn maybe_run(&mut self, slot: usize, result: ObjectId) {
        let me = self.ids[slot];
        let ready = self
            .node(slot)
            .and_then(|n| n.tasks.get(&result))
            .is_some_and(|t| t.waiting == 0);
        if ready {
            let at = self.now + Duration::from_millis(1 + self.rng.below(30));
            self.schedule(at, Event::TaskDone { node: me, result });
        }
    }

    fn task_done(&mut self, slot: usize, result: ObjectId) -> Result<(), Failed> {
        let me = self.ids[slot];
        let Some(task) = self.node_mut(slot).tasks.remove(&result) else {
            return Ok(());
        };
        let panics = self.rng.chance(30);
        let args: Vec<ObjectId> = task.spec.refs().collect();
        let (state, contained, finished) =
            match task.failed.or(panics.then(|| "panicked".to_owned())) {
                Some(why) => {
                    let f = Failure::Task(why.clone().into_bytes());
                    (
                        State::Failed(f),
                        Vec::new(),
                        Finished::Failed(why.into_bytes()),
                    )
                }
                None => {
                    let mut contained: Vec<ObjectId> = args
                        .iter()
                        .copied()
                        .filter(|_| self.rng.chance(400))
                        .collect();
                    contained.sort();
                    contained.dedup();
                    let mut fresh = None;
                    if self.rng.chance(250) {
                        // The guest puts an object and returns a ref to it.
                        let n = self.node_mut(slot);
                        let id = ObjectId::new(me.0, n.next_object);
                        n.next_object += 1;
                        n.table
                            .insert(id, State::Ready { len: 100 }, 1, 0, Vec::new())
                            .map_err(|b| self.broken(b))?;
                        contained.push(id);
                        fresh = Some(id);
                    }
                    let len = if self.rng.chance(300) {
                        1 << 20
                    } else {
                        1 + self.rng.below(4096)
                    };
                    let _ = fresh;
                    (
                        State::Ready { len },
                        contained.clone(),
                        Finished::Value { len, contained },
                    )
                }
            };
        self.note(format!(
            "{me} finished {result} for {}: {finished:?}",
            task.owner
        ));
        let fresh: Vec<ObjectId> = contained
            .iter()
            .copied()
            .filter(|c| c.owner() == me.0 && !args.contains(c))
            .collect();
        self.complete(slot, result, state, contained)?;
        let n = self.node_mut(slot);
        n.table.release(&fresh);
        if task.owner != me {
            n.table.release(&args);
            n.table.unhold(result);
            n.table
                .events
                .push(LocalEvent::TaskFinished { result, finished });
        } else {
            let mut release = n.submitted.remove(&result).unwrap_or_default();
            release.push(result);
            n.table.release(&release);
        }
        self.drain(slot)
    }

    /// Waits for `id` on `slot` for `w`: at once if it is here and complete, else when it
    /// completes here or arrives.
    pub(super) fn wait(&mut self, slot: usize, id: ObjectId, w: Waiter) -> Result<(), Failed> {
        let now = self.now;
        let n = self.node_mut(slot);
        let state = n
            .table
            .get(id)
            .map(|e| (e.state.clone(), e.contained.clone()));
        match state {
            Some((State::Ready { .. }, contained)) => self.finish_wait(slot, w, Ok(contained)),
            Some((State::Failed(f), _)) => self.finish_wait(slot, w, Err(f)),
            Some((State::Pending, _)) => {
                n.local_waiters.entry(id).or_default().push(w);
                Ok(())
            }
            Some((State::Elsewhere, _)) => {
                n.remote_waiters.entry(id).or_default().push(w);
                n.core
                    .handle_local(now, LocalEvent::Want { id, fetch: true }, &n.table);
                self.drain(slot)
            }
            None => Err(self.fail(format!(
                "{}: waits for {id}, which it holds no reference to",
                self.ids[slot]
            ))),
        }
    }

    fn finish_wait(
        &mut self,
        slot: usize,
        w: Waiter,
        r: Result<Vec<ObjectId>, Failure>,
    ) -> Result<(), Failed> {
        match w {
            Waiter::Get(g) => {
                // The get held its own reference while it ran.
                let id = self.gets.get(&g).map(|g| g.id);
                if let Ok(contained) = &r {
                    // Decoding the value gives the reader refs to what it contains.
                    for c in contained.clone() {
                        let n = self.node_mut(slot);
                        if let Err(b) = n.table.retain(c) {
                            return Err(self.broken(b));
                        }
                        self.node_mut(slot).handles.push(c);
                    }
                }
                if let Some(g) = self.gets.get_mut(&g) {
                    g.result = Some(r.map(|_| ()));
                }
                if let Some(id) = id {
                    self.node_mut(slot).table.release(&[id]);
                }
                self.drain(slot)
            }
            Waiter::Arg(result) => {
                let n = self.node_mut(slot);
                if let Some(t) = n.tasks.get_mut(&result) {
                    t.waiting -= 1;
                    if let Err(f) = r {
                        t.failed.get_or_insert(format!("an argument failed: {f:?}"));
                    }
                }
                self.maybe_run(slot, result);
                Ok(())
            }
        }
    }
}
