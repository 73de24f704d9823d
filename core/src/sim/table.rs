//! A stand-in for the runtime's node-local object table: reference counts, states and
//! contained refs, and the events the real table gives the core (first and last references
//! to other nodes' objects, frees of owned objects).

use std::collections::BTreeMap;

use ferry_abi::ObjectId;

use crate::directory::{LocalState, LocalView};
use crate::ids::NodeId;
use crate::message::Failure;
use crate::node::LocalEvent;

/// One object in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// References held on this node.
    pub refs: u64,
    /// Counts held for the cluster (borrowers elsewhere, the copy kept for an owner, a call
    /// running for a peer): they keep the object here but are no reference of this node's,
    /// so they register no borrow.
    pub held: u64,
    /// What it is here.
    pub state: State,
    /// The refs it contains (each counted once by this entry).
    pub contained: Vec<ObjectId>,
}

/// An entry's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Its task has not finished.
    Pending,
    /// Stored here.
    Ready {
        /// Its length.
        len: u64,
    },
    /// No value.
    Failed(Failure),
    /// Stored elsewhere (another node's object, or an owned result held where it ran).
    Elsewhere,
}

/// Something the table did that breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

/// The stand-in table of one node.
#[derive(Debug)]
pub struct Table {
    me: NodeId,
    entries: BTreeMap<ObjectId, Entry>,
    /// Events for the core, in the order they happened.
    pub events: Vec<LocalEvent>,
    /// Owned objects freed, in order (for the invariants).
    pub freed: Vec<ObjectId>,
}

impl LocalView for Table {
    fn local(&self, id: ObjectId) -> Option<LocalState> {
        self.entries.get(&id).map(|e| match &e.state {
            State::Pending => LocalState::Pending,
            State::Ready { len } => LocalState::Ready { len: *len },
            State::Failed(f) => LocalState::Failed(f.clone()),
            State::Elsewhere => LocalState::Elsewhere,
        })
    }
}

impl Table {
    /// An empty table for node `me`.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            entries: BTreeMap::new(),
            events: Vec::new(),
            freed: Vec::new(),
        }
    }

    fn foreign(&self, id: ObjectId) -> bool {
        id.owner() != self.me.0
    }

    /// The entry of `id`.
    pub fn get(&self, id: ObjectId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectId, &Entry)> {
        self.entries.iter()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds an object with `refs` local references and `held` counts for the cluster; it
    /// retains what it contains.
    pub fn insert(
        &mut self,
        id: ObjectId,
        state: State,
        refs: u64,
        held: u64,
        contained: Vec<ObjectId>,
    ) -> Result<(), Broken> {
        if self
            .entries
            .get(&id)
            .is_some_and(|e| e.refs + e.held > 0 && e.state != State::Elsewhere)
        {
            return Err(Broken(format!("{}: object {id} inserted twice", self.me)));
        }
        for c in &contained {
            self.retain(*c)?;
        }
        match self.entries.get_mut(&id) {
            // A call's result arriving where this node already references it.
            Some(e) => {
                e.refs += refs;
                e.held += held;
                e.state = state;
                e.contained = contained;
            }
            None => {
                self.entries.insert(
                    id,
                    Entry {
                        refs,
                        held,
                        state,
                        contained,
                    },
                );
            }
        }
        Ok(())
    }

    /// One more count for the cluster on `id`, which must be here.
    pub fn hold(&mut self, id: ObjectId) -> Result<(), Broken> {
        match self.entries.get_mut(&id) {
            Some(e) => {
                e.held += 1;
                Ok(())
            }
            None => Err(Broken(format!(
                "{}: holds {id} for the cluster, but it is freed",
                self.me
            ))),
        }
    }

    /// One count less for the cluster on `id`.
    pub fn unhold(&mut self, id: ObjectId) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.held = e.held.saturating_sub(1);
        if e.refs + e.held == 0 {
            self.free(id);
        }
    }

    fn free(&mut self, id: ObjectId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        if !self.foreign(id) {
            self.freed.push(id);
            self.events.push(LocalEvent::Freed(id));
        }
        self.release(&e.contained);
    }

    /// One more reference to `id`. Another node's object gets an entry of its own (and the
    /// core hears of it); an owned object must exist.
    pub fn retain(&mut self, id: ObjectId) -> Result<(), Broken> {
        let foreign = self.foreign(id);
        if let Some(e) = self.entries.get_mut(&id) {
            e.refs += 1;
            // The first reference beyond the cluster's holds: this node now borrows it.
            if foreign && e.refs == 1 {
                self.events.push(LocalEvent::Hold(id));
            }
            return Ok(());
        }
        if foreign {
            self.entries.insert(
                id,
                Entry {
                    refs: 1,
                    held: 0,
                    state: State::Elsewhere,
                    contained: Vec::new(),
                },
            );
            self.events.push(LocalEvent::Hold(id));
            return Ok(());
        }
        Err(Broken(format!(
            "{}: a reference to its own object {id}, already freed",
            self.me
        )))
    }

    /// One reference less to each of `ids`; frees at zero, cascading to contained refs.
    pub fn release(&mut self, ids: &[ObjectId]) {
        for &id in ids {
            let foreign = self.foreign(id);
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.refs == 0 {
                continue;
            }
            e.refs -= 1;
            let gone = e.refs + e.held == 0;
            if foreign && e.refs == 0 {
                self.events.push(LocalEvent::Drop(id));
            }
            if gone {
                self.free(id);
            }
        }
    }

    /// Completes a pending object. Retains what the value contains; an object already
    /// complete breaks "a result is set once".
    pub fn complete(
        &mut self,
        id: ObjectId,
        state: State,
        contained: Vec<ObjectId>,
    ) -> Result<bool, Broken> {
        match self.entries.get(&id) {
            Some(e) if e.state == State::Pending => {}
            Some(e) => {
                return Err(Broken(format!(
                    "{}: result {id} set twice (was {:?}, now {state:?})",
                    self.me, e.state
                )));
            }
            // Nobody holds it any more: the value is dropped.
            None => return Ok(false),
        }
        for c in &contained {
            self.retain(*c)?;
        }
        if let Some(e) = self.entries.get_mut(&id) {
            e.state = state;
            e.contained = contained;
        }
        Ok(true)
    }

    /// Another node's object that this node references is gone with its owner: reads fail,
    /// unless its bytes are here (a copy, or a call computing it here).
    pub fn lose(&mut self, id: ObjectId, failure: Failure) {
        if let Some(e) = self.entries.get_mut(&id)
            && e.state == State::Elsewhere
        {
            e.state = State::Failed(failure);
        }
    }
}
