//! ferry's distributed core: the cluster's logic as plain state machines that do no IO.
//!
//! A [`NodeCore`] holds one node's distributed state: who is in the cluster and alive
//! ([`membership`]), reference counts across nodes ([`refs`]), where objects are
//! ([`directory`]), calls placed on and run for other nodes ([`tasks`]), and the placement
//! rule ([`placement`]). Inputs arrive through `handle_*` methods, each given `now`; outputs
//! leave through [`NodeCore::poll_output`], and [`NodeCore::poll_timeout`] says when to call
//! [`NodeCore::handle_timeout`]. The core uses no sockets, runtime, clock, threads or locks,
//! and never touches object bytes: it asks its driver to move them and hears back.
//!
//! Because of that, a whole cluster runs in one thread in the simulator ([`sim`], behind the
//! `sim` feature and in this crate's tests): simulated time, lost and reordered messages,
//! partitions, crashes and restarts, all from one seed, with the invariants checked after
//! every step.

pub mod directory;
pub mod ids;
pub mod link;
pub mod membership;
pub mod message;
mod node;
pub mod placement;
pub mod refs;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod tasks;

pub use directory::{LocalState, LocalView, Resolution};
pub use ids::{Identity, NodeId, Role, Sender};
pub use message::{Failure, Load, Location, Member, Message, NodeInfo, Outcome, Packet, TaskSpec};
pub use node::{
    Completion, Config, Finished, LocalEvent, MAX_CONTAINED, NodeCore, Output, Placed, SubmitError,
};
