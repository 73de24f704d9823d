//! The placement rule: the core gathers each candidate's load and the argument bytes it
//! holds, and [`choose`] decides.

use crate::ids::NodeId;

/// Argument bytes on one node from which placement prefers that node.
pub const LOCALITY_MIN: u64 = 64 << 10;

/// Calls waiting per core at which a node's queue counts as full: locality gives way then.
pub const QUEUE_PER_CORE: u64 = 4;

/// How a node stands when a call is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Calls running or waiting there.
    pub busy: u64,
    /// Calls waiting there for an instance.
    pub queued: u64,
    /// Its worker threads.
    pub cores: u32,
    /// Bytes of the call's top-level arguments it already holds.
    pub bytes: u64,
}

impl Candidate {
    fn cores(&self) -> u64 {
        u64::from(self.cores.max(1))
    }

    fn full(&self) -> bool {
        self.queued >= QUEUE_PER_CORE * self.cores()
    }
}

/// Where a call runs, among `candidates`; `None` if there are none. `me` is the deciding
/// node, a candidate or not; `tie` is a random number.
///
/// 1. **Locality:** the candidate holding the most argument bytes, if that is at least
///    [`LOCALITY_MIN`] and its queue is not full.
/// 2. **Least loaded** otherwise, by calls per core: `me` wins a tie (no network hop), and
///    other ties are broken by `tie`, so that a driver's calls spread.
pub fn choose(me: NodeId, candidates: &[Candidate], tie: u64) -> Option<NodeId> {
    let most = candidates.iter().max_by_key(|c| (c.bytes, c.id == me))?;
    if most.bytes >= LOCALITY_MIN && !most.full() {
        return Some(most.id);
    }
    // Compare busy_a / cores_a with busy_b / cores_b exactly, by cross-multiplying.
    let lighter = |a: &Candidate, b: &Candidate| {
        (u128::from(a.busy) * u128::from(b.cores()))
            .cmp(&(u128::from(b.busy) * u128::from(a.cores())))
    };
    let least = candidates.iter().min_by(|a, b| lighter(a, b))?;
    let tied: Vec<NodeId> = candidates
        .iter()
        .filter(|c| lighter(c, least).is_eq())
        .map(|c| c.id)
        .collect();
    if tied.contains(&me) {
        return Some(me);
    }
    Some(tied[(tie % tied.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, busy: u64, queued: u64, cores: u32, bytes: u64) -> Candidate {
        Candidate {
            id: NodeId(id),
            busy,
            queued,
            cores,
            bytes,
        }
    }

    #[test]
    fn no_candidates_no_placement() {
        assert_eq!(choose(NodeId(1), &[], 0), None);
    }

    #[test]
    fn the_node_holding_most_argument_bytes_runs_the_call() {
        let c = [
            node(1, 0, 0, 2, 0),
            node(2, 6, 0, 2, 3 << 20),
            node(3, 1, 0, 2, 1 << 20),
        ];
        // Even though node 2 is the busiest.
        for tie in 0..4 {
            assert_eq!(choose(NodeId(1), &c, tie), Some(NodeId(2)));
        }
    }

    #[test]
    fn small_arguments_do_not_decide() {
        let c = [node(1, 4, 0, 2, LOCALITY_MIN - 1), node(2, 1, 0, 2, 0)];
        assert_eq!(choose(NodeId(1), &c, 0), Some(NodeId(2)));
        let c = [node(1, 4, 0, 2, LOCALITY_MIN), node(2, 1, 0, 2, 0)];
        assert_eq!(choose(NodeId(1), &c, 0), Some(NodeId(1)));
    }

    #[test]
    fn a_full_queue_hands_the_call_to_the_least_loaded_node() {
        // Node 2 holds the bytes but has 8 calls waiting on 2 cores.
        let c = [
            node(1, 3, 0, 2, 0),
            node(2, 10, 8, 2, 1 << 30),
            node(3, 1, 0, 2, 0),
        ];
        assert_eq!(choose(NodeId(1), &c, 0), Some(NodeId(3)));
        // Its own core count decides what full means: on 4 cores, 8 waiting is not full.
        let c = [node(1, 3, 0, 2, 0), node(2, 10, 8, 4, 1 << 30)];
        assert_eq!(choose(NodeId(1), &c, 0), Some(NodeId(2)));
    }

    #[test]
    fn load_is_per_core() {
        // 6 calls on 8 cores is lighter than 2 calls on 2 cores.
        let c = [node(1, 2, 0, 2, 0), node(2, 6, 0, 8, 0)];
        assert_eq!(choose(NodeId(1), &c, 0), Some(NodeId(2)));
    }

    #[test]
    fn the_deciding_node_wins_a_tie_and_other_ties_spread() {
        let c = [
            node(1, 1, 0, 2, 0),
            node(2, 1, 0, 2, 0),
            node(3, 1, 0, 2, 0),
        ];
        for tie in 0..6 {
            assert_eq!(choose(NodeId(1), &c, tie), Some(NodeId(1)));
        }
        // A driver (not a candidate) spreads its calls over the tied nodes.
        let picks: std::collections::BTreeSet<NodeId> = (0..6)
            .filter_map(|tie| choose(NodeId(9), &c, tie))
            .collect();
        assert_eq!(picks, [1, 2, 3].map(NodeId).into());
    }

    #[test]
    fn equal_bytes_prefer_the_deciding_node() {
        let c = [node(1, 5, 0, 2, 1 << 20), node(2, 0, 0, 2, 1 << 20)];
        assert_eq!(choose(NodeId(1), &c, 0), Some(NodeId(1)));
        assert_eq!(choose(NodeId(2), &c, 0), Some(NodeId(2)));
    }
}
