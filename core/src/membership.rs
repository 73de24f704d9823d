//! Who is in the cluster and who is alive.
//!
//! The head keeps the node table. A node joins with `Hello` and reports its load with a
//! `Heartbeat`; the head answers both with the table. The head alone declares deaths, from
//! `now`: a member it has not heard from for `dead_after` is dead, and dead is final for that
//! node id (a restarted node is a new incarnation, a new id). Other nodes learn deaths from
//! the table. Who a member is comes from its verified certificate ([`Identity`]): only a node
//! certificate joins as a worker, an id must carry its sender's certificate number, and no
//! message from anyone but the head changes a node's membership.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ids::{NodeId, Role, Sender};

/// Rows the head keeps at most (live members and dead nodes); a `Hello` beyond is refused.
pub const MAX_MEMBERS: usize = 4096;
use crate::message::{Load, Member, Message, NodeInfo};

/// Why a peer's message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The id it speaks as is not its certificate's.
    NotItsId,
    /// A client certificate asked to run calls.
    ClientAsWorker,
    /// It is not a member (it must join first), or it was declared dead.
    NotAMember,
    /// Only the head sends the node table.
    NotTheHead,
    /// This node is not the head.
    NotHead,
    /// The message is not allowed for the sender's role or relation to the object.
    Forbidden(&'static str),
}

#[derive(Debug)]
struct Row {
    member: Member,
    last_heard: Instant,
}

/// A node's view of the cluster's membership.
#[derive(Debug)]
pub struct Membership {
    me: NodeInfo,
    /// The head (`None`: this node is the head).
    head: Option<NodeId>,
    rows: BTreeMap<NodeId, Row>,
    /// Whether the head lists this node (always true on the head).
    joined: bool,
    next_report: Option<Instant>,
    heartbeat: Duration,
    dead_after: Duration,
    load: Load,
    /// Counts changes of the table (joins, reports, tables received, deaths), so a driver
    /// copies the table only when it changed.
    version: u64,
}

/// What a membership change means for the rest of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The node.
    pub node: NodeId,
    /// Why it is considered dead.
    pub reason: String,
}

impl Membership {
    /// This node's membership; `head` is `None` on the head itself.
    pub fn new(
        me: NodeInfo,
        head: Option<NodeId>,
        heartbeat: Duration,
        dead_after: Duration,
    ) -> Self {
        Self {
            me,
            head,
            rows: BTreeMap::new(),
            joined: head.is_none(),
            next_report: None,
            heartbeat,
            dead_after,
            load: Load::default(),
            version: 0,
        }
    }

    /// Grows whenever the table may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// Whether this node is the head.
    pub fn is_head(&self) -> bool {
        self.head.is_none()
    }

    /// The head's id (this node's own on the head).
    pub fn head(&self) -> NodeId {
        self.head.unwrap_or(self.me.id)
    }

    /// Whether the head lists this node.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Records this node's load for its next report.
    pub fn set_load(&mut self, load: Load) {
        self.load = load;
    }

    /// The node table: the head's own, elsewhere the head's last answer.
    pub fn members(&self) -> Vec<Member> {
        // A dead driver is left out: to the other nodes it has left.
        let mut all: Vec<Member> = self
            .rows
            .values()
            .filter(|r| r.member.alive || r.member.info.worker)
            .map(|r| r.member.clone())
            .collect();
        if self.is_head() {
            all.push(Member {
                info: self.me.clone(),
                load: self.load,
                alive: true,
                reason: None,
            });
            all.sort_by_key(|m| m.info.id);
        }
        all
    }

    /// Whether `id` is a live member (this node counts).
    pub fn alive(&self, id: NodeId) -> bool {
        id == self.me.id || self.rows.get(&id).is_some_and(|r| r.member.alive)
    }

    /// Why `id` is dead, if it is known to be.
    pub fn dead(&self, id: NodeId) -> Option<&str> {
        self.rows
            .get(&id)
            .filter(|r| !r.member.alive)
            .map(|r| r.member.reason.as_deref().unwrap_or("dead"))
    }

    /// Live members that run calls, other than this node.
    pub fn workers(&self) -> impl Iterator<Item = &Member> {
        let me = self.me.id;
        self.rows
            .values()
            .map(|r| &r.member)
            .filter(move |m| m.alive && m.info.worker && m.info.id != me)
    }

    /// Checks that `from` may speak as its id at all.
    pub fn check_sender(&self, from: &Sender) -> Result<(), Refusal> {
        if !from.identity.may_use(from.node) {
            return Err(Refusal::NotItsId);
        }
        Ok(())
    }

    /// Notes that a live member was heard from.
    pub fn heard(&mut self, now: Instant, from: NodeId) {
        if let Some(r) = self.rows.get_mut(&from)
            && r.member.alive
        {
            r.last_heard = now;
        }
    }

    /// A membership message. Returns the answer to send back to `from`, if any, and the
    /// deaths it reveals.
    pub fn handle(
        &mut self,
        now: Instant,
        from: &Sender,
        msg: Message,
        deaths: &mut Vec<Death>,
    ) -> Result<Option<Message>, Refusal> {
        self.check_sender(from)?;
        self.version += 1;
        match msg {
            Message::Hello(info) => {
                if !self.is_head() {
                    return Err(Refusal::NotHead);
                }
                if info.id != from.node {
                    return Err(Refusal::NotItsId);
                }
                if info.worker && from.identity.role != Role::Node {
                    return Err(Refusal::ClientAsWorker);
                }
                let full = self.rows.len() >= MAX_MEMBERS;
                match self.rows.get_mut(&info.id) {
                    Some(r) if !r.member.alive => return Err(Refusal::NotAMember),
                    Some(r) => r.last_heard = now,
                    None if full => {
                        return Err(Refusal::Forbidden("the node table is full"));
                    }
                    None => {
                        self.rows.insert(
                            info.id,
                            Row {
                                member: Member {
                                    info,
                                    load: Load::default(),
                                    alive: true,
                                    reason: None,
                                },
                                last_heard: now,
                            },
                        );
                    }
                }
                Ok(Some(Message::Members(self.members())))
            }
            Message::Heartbeat(load) => {
                if !self.is_head() {
                    return Err(Refusal::NotHead);
                }
                if !self.rows.contains_key(&from.node) {
                    // Not (or no longer) listed: the table tells it so, and it stops.
                    return Ok(Some(Message::Members(self.members())));
                }
                let Some(r) = self.rows.get_mut(&from.node) else {
                    return Err(Refusal::NotAMember);
                };
                if !r.member.alive {
                    // Tell it, so that it stops.
                    return Ok(Some(Message::Members(self.members())));
                }
                r.member.load = load;
                r.last_heard = now;
                Ok(Some(Message::Members(self.members())))
            }
            Message::Members(list) => {
                if Some(from.node) != self.head || from.identity.role != Role::Node {
                    return Err(Refusal::NotTheHead);
                }
                self.apply_table(now, list, deaths);
                Ok(None)
            }
            _ => Err(Refusal::Forbidden("not a membership message")),
        }
    }

    fn apply_table(&mut self, now: Instant, list: Vec<Member>, deaths: &mut Vec<Death>) {
        let was_joined = self.joined;
        self.joined = list.iter().any(|m| m.info.id == self.me.id && m.alive);
        if let Some(m) = list.iter().find(|m| m.info.id == self.me.id && !m.alive) {
            // The head declared this node dead: the cluster has given up on what it held.
            deaths.push(Death {
                node: self.me.id,
                reason: m.reason.clone().unwrap_or_else(|| "dead".into()),
            });
        } else if was_joined && !self.joined {
            // Dropped from the table (a driver declared dead is no longer listed).
            deaths.push(Death {
                node: self.me.id,
                reason: "the head no longer lists this node".into(),
            });
        }
        let listed: std::collections::BTreeSet<NodeId> = list.iter().map(|m| m.info.id).collect();
        for m in list {
            let id = m.info.id;
            if id == self.me.id {
                // Its own row: kept for the table it shows (its death is noticed above).
                self.rows.insert(
                    id,
                    Row {
                        member: m,
                        last_heard: now,
                    },
                );
                continue;
            }
            match self.rows.get_mut(&id) {
                Some(r) if !r.member.alive => {}
                Some(r) => {
                    if !m.alive {
                        deaths.push(Death {
                            node: id,
                            reason: m.reason.clone().unwrap_or_else(|| "dead".into()),
                        });
                    }
                    r.member = m;
                    r.last_heard = now;
                }
                None => {
                    if !m.alive {
                        deaths.push(Death {
                            node: id,
                            reason: m.reason.clone().unwrap_or_else(|| "dead".into()),
                        });
                    }
                    self.rows.insert(
                        id,
                        Row {
                            member: m,
                            last_heard: now,
                        },
                    );
                }
            }
        }
        // A member the head no longer lists has left (drivers leave that way); its row goes.
        let me = self.me.id;
        self.rows.retain(|id, r| {
            if listed.contains(id) || *id == me {
                return true;
            }
            if r.member.alive {
                deaths.push(Death {
                    node: *id,
                    reason: "left the cluster".into(),
                });
            }
            false
        });
    }

    /// When membership next needs attention.
    pub fn timeout(&self) -> Option<Instant> {
        let report = self.next_report;
        let death = if self.is_head() {
            self.rows
                .values()
                .filter(|r| r.member.alive)
                .map(|r| r.last_heard + self.dead_after)
                .min()
        } else {
            None
        };
        match (report, death) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Timers: the head declares silent members dead; other nodes say hello or report.
    /// Returns the message to send to the head, if any.
    pub fn on_timeout(&mut self, now: Instant, deaths: &mut Vec<Death>) -> Option<Message> {
        if self.is_head() {
            let before = deaths.len();
            for (id, r) in self.rows.iter_mut() {
                if r.member.alive && r.last_heard + self.dead_after <= now {
                    let reason = format!(
                        "no word from it for {} ms",
                        now.saturating_duration_since(r.last_heard).as_millis()
                    );
                    r.member.alive = false;
                    r.member.reason = Some(reason.clone());
                    deaths.push(Death { node: *id, reason });
                }
            }
            // Dead drivers are forgotten once reported; dead nodes stay listed as dead.
            self.rows
                .retain(|_, r| r.member.alive || r.member.info.worker);
            if deaths.len() > before {
                self.version += 1;
            }
            return None;
        }
        match self.next_report {
            Some(t) if t > now => None,
            _ => {
                self.next_report = Some(now + self.heartbeat);
                Some(if self.joined {
                    Message::Heartbeat(self.load)
                } else {
                    Message::Hello(self.me.clone())
                })
            }
        }
    }

    /// Starts reporting (called once when the core starts).
    pub fn start(&mut self, now: Instant) {
        if !self.is_head() {
            self.next_report = Some(now);
        }
    }
}
