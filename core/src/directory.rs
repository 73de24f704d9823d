//! Where objects are: the owner's view of its objects whose bytes are not (only) in its own
//! store, the answers to other nodes' `Locate`s, and this node's pulls of objects stored
//! elsewhere.
//!
//! The node-local table knows what is in this node's store ([`LocalView`]); the directory
//! knows the rest. A `Locate` is answered once the object is complete (no polling); pulls of
//! one object are shared; a failed transfer tries the next holder.

use std::collections::BTreeMap;

use ferry_abi::ObjectId;

use crate::ids::NodeId;
use crate::message::{Failure, Location};

/// What the node-local table says about an object (the core's only view of local storage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalState {
    /// Its task has not finished.
    Pending,
    /// In this node's store (in memory or spilled), `len` bytes.
    Ready {
        /// Its length.
        len: u64,
    },
    /// It has no value.
    Failed(Failure),
    /// Its bytes are elsewhere; the directory knows where.
    Elsewhere,
}

/// The core's window on the node-local table: read-only, answered from memory, no IO.
pub trait LocalView {
    /// What the table has for `id` (`None`: no entry).
    fn local(&self, id: ObjectId) -> Option<LocalState>;
}

/// Where an owned object's bytes are, when not in the owner's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Its task runs on `at`.
    Running {
        /// The node.
        at: NodeId,
    },
    /// `at` holds it (the result of a call that ran there).
    Held {
        /// The node.
        at: NodeId,
        /// Its length.
        len: u64,
    },
    /// It was only on a node that died.
    Lost {
        /// The node.
        node: NodeId,
        /// What was noticed.
        detail: String,
    },
}

/// One pull in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Waiting for the owner's answer (or, for an owned object, for its task).
    Locating,
    /// Fetching from `from`; `rest` are the holders to try after it.
    Fetching { from: NodeId, rest: Vec<NodeId> },
}

#[derive(Debug)]
struct Pull {
    stage: Stage,
    /// Whether the bytes are wanted (false: only completion).
    fetch: bool,
}

/// How a want ends, for the local waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The object is complete (a watch) or its bytes are now in the store (a fetch).
    Ready,
    /// It has no value.
    Failed(Failure),
}

/// What the directory asks of the rest of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask `owner` where `id` is.
    Locate { id: ObjectId, owner: NodeId },
    /// Fetch the bytes of `id` from `from`.
    Fetch { id: ObjectId, from: NodeId },
    /// The want of `id` ended.
    Resolved {
        id: ObjectId,
        resolution: Resolution,
    },
    /// Tell `to` where `id` is.
    Answer {
        to: NodeId,
        id: ObjectId,
        location: Location,
    },
    /// Report when the local object `id` completes (a peer waits for it).
    WatchLocal(ObjectId),
}

/// The directory of one node.
#[derive(Debug, Default)]
pub struct Directory {
    places: BTreeMap<ObjectId, Place>,
    /// Peers waiting for an owned object to complete.
    watchers: BTreeMap<ObjectId, Vec<NodeId>>,
    pulls: BTreeMap<ObjectId, Pull>,
}

impl Directory {
    /// Where an owned object is, if not (only) here.
    pub fn place(&self, id: ObjectId) -> Option<&Place> {
        self.places.get(&id)
    }

    /// Records where an owned object is.
    pub fn set_place(&mut self, id: ObjectId, place: Place) {
        self.places.insert(id, place);
    }

    /// Forgets an owned object; returns where it was.
    pub fn remove(&mut self, id: ObjectId) -> Option<Place> {
        self.places.remove(&id)
    }

    /// Whether the directory knows `id`.
    pub fn knows(&self, id: ObjectId) -> bool {
        self.places.contains_key(&id)
    }

    /// The owner's answer for `id` now, or `None` if it is not complete yet.
    pub fn location(&self, me: NodeId, id: ObjectId, view: &dyn LocalView) -> Option<Location> {
        match self.places.get(&id) {
            Some(Place::Running { .. }) => return None,
            Some(Place::Held { at, .. }) => return Some(Location::At(vec![*at])),
            Some(Place::Lost { node, detail }) => {
                return Some(Location::Failed(Failure::NodeDied {
                    node: *node,
                    detail: detail.clone(),
                }));
            }
            None => {}
        }
        match view.local(id) {
            Some(LocalState::Pending) => None,
            Some(LocalState::Ready { .. }) => Some(Location::At(vec![me])),
            Some(LocalState::Failed(f)) => Some(Location::Failed(f)),
            Some(LocalState::Elsewhere) | None => Some(Location::Failed(Failure::Gone)),
        }
    }

    /// A peer asks where an owned object is: answered now, or once it completes.
    pub fn locate(
        &mut self,
        me: NodeId,
        from: NodeId,
        id: ObjectId,
        view: &dyn LocalView,
        steps: &mut Vec<Step>,
    ) {
        match self.location(me, id, view) {
            Some(location) => steps.push(Step::Answer {
                to: from,
                id,
                location,
            }),
            None => {
                let w = self.watchers.entry(id).or_default();
                if w.is_empty() && !self.places.contains_key(&id) {
                    steps.push(Step::WatchLocal(id));
                }
                if !w.contains(&from) {
                    w.push(from);
                }
            }
        }
    }

    /// An owned object completed (its task ended, here or elsewhere, or it was freed) and is
    /// now at `location`: answer whoever waits for it, here and on other nodes.
    pub fn settled(&mut self, me: NodeId, id: ObjectId, location: Location, steps: &mut Vec<Step>) {
        for to in self.watchers.remove(&id).unwrap_or_default() {
            steps.push(Step::Answer {
                to,
                id,
                location: location.clone(),
            });
        }
        if let Some(p) = self.pulls.get(&id)
            && p.stage == Stage::Locating
        {
            self.on_location(me, id, location, steps);
        }
    }

    /// This node wants `id`, which is not in its store: its bytes (`fetch`) or only to know
    /// when it is complete.
    pub fn want(
        &mut self,
        me: NodeId,
        id: ObjectId,
        fetch: bool,
        view: &dyn LocalView,
        owner_dead: Option<&str>,
        steps: &mut Vec<Step>,
    ) {
        if let Some(p) = self.pulls.get_mut(&id) {
            p.fetch |= fetch;
            return;
        }
        let owner = NodeId(id.owner());
        if let Some(detail) = owner_dead {
            steps.push(Step::Resolved {
                id,
                resolution: Resolution::Failed(Failure::NodeDied {
                    node: owner,
                    detail: detail.to_owned(),
                }),
            });
            return;
        }
        self.pulls.insert(
            id,
            Pull {
                stage: Stage::Locating,
                fetch,
            },
        );
        if owner == me {
            // If its task still runs elsewhere, `settled` continues when it ends.
            if let Some(location) = self.location(me, id, view) {
                self.on_location(me, id, location, steps);
            }
        } else {
            steps.push(Step::Locate { id, owner });
        }
    }

    /// The owner answered where `id` is.
    pub fn on_location(
        &mut self,
        me: NodeId,
        id: ObjectId,
        location: Location,
        steps: &mut Vec<Step>,
    ) {
        let Some(p) = self.pulls.get_mut(&id) else {
            return;
        };
        if p.stage != Stage::Locating {
            return;
        }
        match location {
            Location::Failed(f) => {
                self.pulls.remove(&id);
                steps.push(Step::Resolved {
                    id,
                    resolution: Resolution::Failed(f),
                });
            }
            Location::At(_) if !p.fetch => {
                self.pulls.remove(&id);
                steps.push(Step::Resolved {
                    id,
                    resolution: Resolution::Ready,
                });
            }
            Location::At(holders) => {
                let mut holders: Vec<NodeId> = holders.into_iter().filter(|h| *h != me).collect();
                if holders.is_empty() {
                    self.pulls.remove(&id);
                    steps.push(Step::Resolved {
                        id,
                        resolution: Resolution::Failed(Failure::Gone),
                    });
                    return;
                }
                let from = holders.remove(0);
                p.stage = Stage::Fetching {
                    from,
                    rest: holders,
                };
                steps.push(Step::Fetch { id, from });
            }
        }
    }

    /// A fetch ended; on failure the next holder is tried.
    pub fn fetched(
        &mut self,
        id: ObjectId,
        from: NodeId,
        result: Result<(), Failure>,
        steps: &mut Vec<Step>,
    ) {
        let Some(p) = self.pulls.get_mut(&id) else {
            return;
        };
        let Stage::Fetching { from: at, rest } = &mut p.stage else {
            return;
        };
        if *at != from {
            return;
        }
        match result {
            Ok(()) => {
                self.pulls.remove(&id);
                steps.push(Step::Resolved {
                    id,
                    resolution: Resolution::Ready,
                });
            }
            Err(f) => {
                if rest.is_empty() {
                    self.pulls.remove(&id);
                    steps.push(Step::Resolved {
                        id,
                        resolution: Resolution::Failed(f),
                    });
                } else {
                    let next = rest.remove(0);
                    *at = next;
                    steps.push(Step::Fetch { id, from: next });
                }
            }
        }
    }

    /// `dead` died: what only it held is lost, peers' waits on it go, pulls from it try the
    /// next holder, and wants of objects it owned fail.
    pub fn node_died(&mut self, me: NodeId, dead: NodeId, reason: &str, steps: &mut Vec<Step>) {
        let died = || Failure::NodeDied {
            node: dead,
            detail: reason.to_owned(),
        };
        for place in self.places.values_mut() {
            match place {
                Place::Held { at, .. } | Place::Running { at } if *at == dead => {
                    *place = Place::Lost {
                        node: dead,
                        detail: reason.to_owned(),
                    };
                }
                _ => {}
            }
        }
        for w in self.watchers.values_mut() {
            w.retain(|n| *n != dead);
        }
        self.watchers.retain(|_, w| !w.is_empty());
        let ids: Vec<ObjectId> = self.pulls.keys().copied().collect();
        for id in ids {
            let Some(p) = self.pulls.get(&id) else {
                continue;
            };
            match &p.stage {
                Stage::Locating if id.owner() == dead.0 && dead != me => {
                    self.pulls.remove(&id);
                    steps.push(Step::Resolved {
                        id,
                        resolution: Resolution::Failed(died()),
                    });
                }
                Stage::Fetching { from, .. } if *from == dead => {
                    self.fetched(id, dead, Err(died()), steps);
                }
                _ => {}
            }
        }
    }

    /// Pulls in progress and peers waiting, for tests and diagnostics.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.places.len(), self.watchers.len(), self.pulls.len())
    }
}
