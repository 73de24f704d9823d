//! Reference counts across nodes (Ray's ownership with borrowers).
//!
//! The node-local table counts every reference on its node. This module counts what crosses
//! nodes:
//! - **Borrows at owners.** A node holding references to another node's object registers one
//!   borrow at the owner (`Borrow`) when its local count leaves zero and gives it back
//!   (`Release`) when it returns to zero. The owner counts borrows *per holder*, so a release
//!   from a node that holds no borrow frees nothing, and a holder's death gives back exactly
//!   what it held. While any node borrows an object, the owner's table holds one count for
//!   them ([`Effect::Hold`]).
//! - **Copies kept for owners.** A call run for another node may leave its result here
//!   (held); the copy keeps one local count for the owner until the owner's `FreeCopy` or the
//!   owner's death.
//! - **Borrow before release.** A `Release`, `FreeCopy` or `Done` is sent only once every
//!   `Borrow` this node sent before it has been acknowledged by its owner. So a node that
//!   borrows a ref found inside another object is registered before its release of the outer
//!   object can free the inner one, whichever nodes the two messages go to. This is the one
//!   place that rule lives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_abi::ObjectId;

use crate::ids::NodeId;
use crate::membership::Refusal;
use crate::message::Message;

/// What the local table must do for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Add one count on the object, held for other nodes.
    Hold(ObjectId),
    /// Remove that count.
    Unhold(ObjectId),
}

/// A message to send once the borrows sent before it are acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered {
    /// Where.
    pub to: NodeId,
    /// What.
    pub msg: Message,
    /// The object whose bytes go with it.
    pub attach: Option<ObjectId>,
}

/// The cross-node reference state of one node.
#[derive(Debug, Default)]
pub struct Refs {
    /// Owner side: borrows of this node's objects, per holder.
    borrowers: BTreeMap<ObjectId, BTreeMap<NodeId, u32>>,
    /// Holder side: other nodes' objects this node has registered a borrow for.
    borrowed: BTreeSet<ObjectId>,
    /// Copies of other nodes' objects kept here for their owners.
    hosted: BTreeSet<ObjectId>,
    /// Borrows sent and not yet acknowledged, by the order they were sent in.
    unacked: BTreeMap<u64, (NodeId, ObjectId)>,
    next_order: u64,
    /// Messages waiting for earlier borrows: (the order they wait behind, the message).
    waiting: VecDeque<(u64, Ordered)>,
}

impl Refs {
    // ---- holder side ----

    /// The local table started holding `id`, which `owner` owns. Returns the `Borrow` to send
    /// now, if this node had not registered one.
    pub fn hold_foreign(&mut self, id: ObjectId, owner: NodeId) -> Option<(NodeId, Message)> {
        if !self.borrowed.insert(id) {
            return None;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.unacked.insert(order, (owner, id));
        Some((owner, Message::Borrow(id)))
    }

    /// The local table holds no more references to `id`: its borrow goes back (after the
    /// borrows sent before).
    pub fn drop_foreign(&mut self, id: ObjectId, owner: NodeId) {
        if self.borrowed.remove(&id) {
            self.send_ordered(Ordered {
                to: owner,
                msg: Message::Release(id),
                attach: None,
            });
        }
    }

    /// The owner acknowledged a borrow.
    pub fn borrow_acked(&mut self, owner: NodeId, id: ObjectId) {
        if let Some(order) = self
            .unacked
            .iter()
            .find(|(_, v)| **v == (owner, id))
            .map(|(k, _)| *k)
        {
            self.unacked.remove(&order);
        }
    }

    /// Queues a message behind every borrow sent so far.
    pub fn send_ordered(&mut self, m: Ordered) {
        self.waiting.push_back((self.next_order, m));
    }

    /// Messages whose earlier borrows are all acknowledged, in order.
    pub fn ready(&mut self) -> Vec<Ordered> {
        let oldest = self.unacked.keys().next().copied().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|(after, _)| *after <= oldest)
        {
            if let Some((_, m)) = self.waiting.pop_front() {
                out.push(m);
            }
        }
        out
    }

    /// Keeps a copy of `id` for its owner.
    pub fn host(&mut self, id: ObjectId) {
        self.hosted.insert(id);
    }

    /// The owner (`from`) freed `id`: the copy kept for it goes, once.
    pub fn free_copy(&mut self, from: NodeId, id: ObjectId) -> Result<Option<Effect>, Refusal> {
        if id.owner() != from.0 {
            return Err(Refusal::Forbidden(
                "only an object's owner frees its copies",
            ));
        }
        Ok(self.hosted.remove(&id).then_some(Effect::Unhold(id)))
    }

    // ---- owner side ----

    /// `from` borrows `id`, which this node owns and has (`exists`).
    pub fn borrow(
        &mut self,
        me: NodeId,
        from: NodeId,
        id: ObjectId,
        exists: bool,
    ) -> Result<Option<Effect>, Refusal> {
        if id.owner() != me.0 {
            return Err(Refusal::Forbidden("a borrow goes to the object's owner"));
        }
        if !exists {
            return Err(Refusal::Forbidden("no such object (freed, or never made)"));
        }
        let holders = self.borrowers.entry(id).or_default();
        let first = holders.is_empty();
        let n = holders.entry(from).or_default();
        *n = n.saturating_add(1);
        Ok(first.then_some(Effect::Hold(id)))
    }

    /// `from` gives back a borrow of `id`. A node holding none frees nothing.
    pub fn release(&mut self, from: NodeId, id: ObjectId) -> Result<Option<Effect>, Refusal> {
        let Some(holders) = self.borrowers.get_mut(&id) else {
            return Err(Refusal::Forbidden(
                "release of an object the sender does not borrow",
            ));
        };
        let Some(n) = holders.get_mut(&from) else {
            return Err(Refusal::Forbidden(
                "release of an object the sender does not borrow",
            ));
        };
        *n -= 1;
        if *n == 0 {
            holders.remove(&from);
        }
        if holders.is_empty() {
            self.borrowers.remove(&id);
            return Ok(Some(Effect::Unhold(id)));
        }
        Ok(None)
    }

    /// Whether `node` borrows `id` (it may then read it).
    pub fn is_borrower(&self, id: ObjectId, node: NodeId) -> bool {
        self.borrowers
            .get(&id)
            .is_some_and(|h| h.contains_key(&node))
    }

    // ---- deaths ----

    /// `dead` died. Its borrows are given back, copies kept for it go, borrows this node sent
    /// it will never be acknowledged, and messages for it are dropped. Returns the effects,
    /// and the objects it owned that this node borrowed (now lost).
    pub fn node_died(&mut self, dead: NodeId, effects: &mut Vec<Effect>) -> Vec<ObjectId> {
        self.borrowers.retain(|id, holders| {
            holders.remove(&dead);
            if holders.is_empty() {
                effects.push(Effect::Unhold(*id));
                false
            } else {
                true
            }
        });
        self.hosted.retain(|id| {
            if id.owner() == dead.0 {
                effects.push(Effect::Unhold(*id));
                false
            } else {
                true
            }
        });
        self.unacked.retain(|_, (owner, _)| *owner != dead);
        self.waiting.retain(|(_, m)| m.to != dead);
        let lost: Vec<ObjectId> = self
            .borrowed
            .iter()
            .filter(|id| id.owner() == dead.0)
            .copied()
            .collect();
        for id in &lost {
            self.borrowed.remove(id);
        }
        lost
    }

    /// Figures, for tests and diagnostics: (objects borrowed by others, objects this node
    /// borrows, copies kept for owners, messages waiting).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.borrowers.len(),
            self.borrowed.len(),
            self.hosted.len(),
            self.waiting.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn id(owner: NodeId, n: u64) -> ObjectId {
        ObjectId::new(owner.0, n)
    }

    #[test]
    fn borrows_are_counted_per_holder_and_strangers_free_nothing() {
        let mut r = Refs::default();
        let x = id(ME, 1);
        assert_eq!(r.borrow(ME, B, x, true), Ok(Some(Effect::Hold(x))));
        assert_eq!(r.borrow(ME, C, x, true), Ok(None));
        assert!(r.release(NodeId(9), x).is_err());
        assert_eq!(r.release(B, x), Ok(None));
        assert!(
            r.release(B, x).is_err(),
            "B gave its one borrow back already"
        );
        assert_eq!(r.release(C, x), Ok(Some(Effect::Unhold(x))));
    }

    #[test]
    fn a_dead_holder_gives_its_borrows_back() {
        let mut r = Refs::default();
        let x = id(ME, 1);
        r.borrow(ME, B, x, true).unwrap();
        let mut fx = Vec::new();
        r.node_died(B, &mut fx);
        assert_eq!(fx, vec![Effect::Unhold(x)]);
    }

    #[test]
    fn releases_wait_for_earlier_borrows_to_any_node() {
        let mut r = Refs::default();
        let inner = id(B, 1);
        let outer = id(C, 1);
        assert!(r.hold_foreign(outer, C).is_some());
        r.borrow_acked(C, outer);
        assert!(r.hold_foreign(inner, B).is_some());
        r.drop_foreign(outer, C);
        assert!(
            r.ready().is_empty(),
            "the release of outer waits for the borrow of inner"
        );
        r.borrow_acked(B, inner);
        assert_eq!(r.ready().len(), 1);
    }

    #[test]
    fn only_the_owner_frees_a_copy() {
        let mut r = Refs::default();
        let x = id(B, 1);
        r.host(x);
        assert!(r.free_copy(C, x).is_err());
        assert_eq!(r.free_copy(B, x), Ok(Some(Effect::Unhold(x))));
        assert_eq!(r.free_copy(B, x), Ok(None));
    }
}
