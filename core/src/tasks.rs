//! The task lifecycle across nodes: calls this node placed elsewhere (their specs kept, so
//! that a lost call can be run again), calls other nodes placed here, and the rule for where
//! a result goes when its call ends.

use std::collections::BTreeMap;

use ferry_abi::ObjectId;

use crate::ids::NodeId;
use crate::message::TaskSpec;

/// Results at most this large, holding no refs, go back to the owner with `Done` instead of
/// staying on the node that made them (Ray inlines small results the same way).
pub const INLINE_MAX: u64 = 64 << 10;

/// Where a finished call's result goes.
pub fn inline(len: u64, contained: &[ObjectId]) -> bool {
    len <= INLINE_MAX && contained.is_empty()
}

/// A call this node placed on another node.
#[derive(Debug, Clone)]
pub struct RemoteTask {
    /// What runs (kept for lineage: everything needed to run it again).
    pub spec: TaskSpec,
    /// Where.
    pub at: NodeId,
}

/// The calls of one node.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Calls placed on other nodes, by result id.
    placed: BTreeMap<ObjectId, RemoteTask>,
    /// Calls placed on each node and not finished.
    inflight: BTreeMap<NodeId, u64>,
    /// Calls run here for other nodes: result id to owner.
    for_peers: BTreeMap<ObjectId, NodeId>,
    /// Inline results sent and not yet acknowledged (the copy stays until then).
    inline_sent: BTreeMap<ObjectId, NodeId>,
}

impl Tasks {
    /// Records a call placed on `at`.
    pub fn placed(&mut self, spec: TaskSpec, at: NodeId) {
        *self.inflight.entry(at).or_default() += 1;
        self.placed.insert(spec.result, RemoteTask { spec, at });
    }

    /// Calls placed on `node` and not finished.
    pub fn inflight(&self, node: NodeId) -> u64 {
        self.inflight.get(&node).copied().unwrap_or(0)
    }

    /// A call placed on `from` ended: its record, if `from` is where it ran.
    pub fn finished(&mut self, from: NodeId, result: ObjectId) -> Option<RemoteTask> {
        if self.placed.get(&result).is_none_or(|t| t.at != from) {
            return None;
        }
        let t = self.placed.remove(&result)?;
        if let Some(n) = self.inflight.get_mut(&t.at) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inflight.remove(&t.at);
            }
        }
        Some(t)
    }

    /// The calls placed on `dead`, which will not finish.
    pub fn lost_with(&mut self, dead: NodeId) -> Vec<RemoteTask> {
        let ids: Vec<ObjectId> = self
            .placed
            .iter()
            .filter(|(_, t)| t.at == dead)
            .map(|(id, _)| *id)
            .collect();
        self.inflight.remove(&dead);
        ids.into_iter()
            .filter_map(|id| self.placed.remove(&id))
            .collect()
    }

    /// The spec of a call placed elsewhere and still running.
    pub fn spec(&self, result: ObjectId) -> Option<&TaskSpec> {
        self.placed.get(&result).map(|t| &t.spec)
    }

    /// Accepts a call from `owner`; false if its result id is already in use here.
    pub fn accept(&mut self, owner: NodeId, result: ObjectId) -> bool {
        if self.for_peers.contains_key(&result) || self.inline_sent.contains_key(&result) {
            return false;
        }
        self.for_peers.insert(result, owner);
        true
    }

    /// A call run for a peer ended: its owner.
    pub fn ran(&mut self, result: ObjectId) -> Option<NodeId> {
        self.for_peers.remove(&result)
    }

    /// Calls run here for `dead`, which no longer needs them.
    /// Returns the inline results sent to it and not acknowledged: their copies may go.
    pub fn owner_died(&mut self, dead: NodeId) -> Vec<ObjectId> {
        // Results of calls still running are dropped when the calls end (`ran` finds no owner).
        self.for_peers.retain(|_, o| *o != dead);
        let unacked: Vec<ObjectId> = self
            .inline_sent
            .iter()
            .filter(|(_, o)| **o == dead)
            .map(|(id, _)| *id)
            .collect();
        for id in &unacked {
            self.inline_sent.remove(id);
        }
        unacked
    }

    /// Records an inline result sent to `owner`, kept until the owner acknowledges it.
    pub fn inline_sent(&mut self, result: ObjectId, owner: NodeId) {
        self.inline_sent.insert(result, owner);
    }

    /// The owner acknowledged an inline result: the copy may go.
    pub fn inline_acked(&mut self, result: ObjectId) -> bool {
        self.inline_sent.remove(&result).is_some()
    }

    /// Figures: (placed elsewhere, running for peers, inline results unacknowledged).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.placed.len(),
            self.for_peers.len(),
            self.inline_sent.len(),
        )
    }
}
