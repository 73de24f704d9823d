//! The logical protocol between cores: what one node's core tells another's.
//!
//! The transport carries each [`Packet`] as one frame and attaches object bytes where an
//! [`Output::Send`](crate::Output::Send) asks it to; the core never sees those bytes. Every
//! field that came from a peer is checked by the core before it acts on it.

use std::net::SocketAddr;

use ferry_abi::abi::CallArg;
use ferry_abi::{ModuleId, ObjectId};
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// What a node tells the head about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The id it speaks as (checked against its certificate).
    pub id: NodeId,
    /// Where it accepts connections (`None`: a driver, reachable only over the connections it
    /// opens).
    pub addr: Option<SocketAddr>,
    /// Whether it runs calls. Only a node certificate may say yes.
    pub worker: bool,
    /// Its cores (worker threads).
    pub cores: u32,
}

/// A node's load, sent to the head with every heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Bytes of the store in use.
    pub store_used: u64,
    /// The store's capacity.
    pub store_capacity: u64,
    /// Calls running.
    pub running: u64,
    /// Calls waiting (for arguments or an instance).
    pub queued: u64,
    /// Calls finished since start.
    pub calls_finished: u64,
    /// Modules compiled (not found in the disk cache).
    pub modules_compiled: u64,
    /// Modules fetched from other nodes.
    pub modules_fetched: u64,
    /// Object bytes pulled from other nodes.
    pub bytes_pulled: u64,
    /// Objects in the node's table.
    pub objects: u64,
    /// How many loads the node has reported (this one included).
    pub reports: u64,
}

/// One row of the head's node table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub info: NodeInfo,
    /// Its last reported load.
    pub load: Load,
    /// Whether the head still hears from it.
    pub alive: bool,
    /// Why it is dead, if it is.
    pub reason: Option<String>,
}

/// A call: everything needed to run it, and to run it again (lineage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The module (by content hash); the runner fetches it from the caller if it lacks it.
    pub module: ModuleId,
    /// The function.
    pub function: String,
    /// The arguments.
    pub args: Vec<CallArg>,
    /// The result's id, owned by the caller.
    pub result: ObjectId,
}

impl TaskSpec {
    /// Every ref the arguments name: top-level refs and refs inside values.
    pub fn refs(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.args
            .iter()
            .flat_map(|a| match a {
                CallArg::Value { refs, .. } => refs.as_slice(),
                CallArg::Object(id) => std::slice::from_ref(id),
            })
            .copied()
    }

    /// Every ref the task holds while it waits and runs: top-level refs and refs inside
    /// values.
    pub fn held_refs(&self) -> Vec<ObjectId> {
        self.refs().collect()
    }

    /// Every ref in an argument list.
    pub fn refs_of(args: &[CallArg]) -> Vec<ObjectId> {
        let mut out = Vec::new();
        for a in args {
            match a {
                CallArg::Value { refs, .. } => out.extend_from_slice(refs),
                CallArg::Object(id) => out.push(*id),
            }
        }
        out
    }

    /// Bytes the spec takes in a message (arguments travel in band).
    pub fn wire_len(&self) -> usize {
        self.function.len()
            + self
                .args
                .iter()
                .map(|a| match a {
                    CallArg::Value { bytes, refs } => bytes.len() + refs.len() * 16 + 8,
                    CallArg::Object(_) => 24,
                })
                .sum::<usize>()
    }
}

/// Why an object has no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Its task failed; the error as the runtime encodes it (opaque to the core).
    Task(Vec<u8>),
    /// The node running its task, or holding its only copy, died.
    NodeDied {
        /// The node.
        node: NodeId,
        /// What was noticed.
        detail: String,
    },
    /// A node refused to run its task.
    Refused(String),
    /// Its owner does not know it: freed, never made, or never given to the asker.
    Gone,
}

/// How a call placed on another node ended, as the runner reports it to the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A small result with no refs: its bytes travel with the message (the transport attaches
    /// them) and the runner keeps no copy.
    Inline {
        /// The object's length.
        len: u64,
    },
    /// The result stays on the runner, counted once for the owner until the owner's
    /// `FreeCopy`.
    Held {
        /// The object's length.
        len: u64,
        /// The refs it contains (the runner has borrowed each before reporting).
        contained: Vec<ObjectId>,
    },
    /// The call failed.
    Failed(Failure),
}

/// Where an object is, as its owner answers a [`Message::Locate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// Held by these nodes.
    At(Vec<NodeId>),
    /// It has no value (its task failed, or its only copy is lost), or the owner does not
    /// know it.
    Failed(Failure),
}

/// A message from one core to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// To the head: join (repeated until the head's `Members` lists the sender).
    Hello(NodeInfo),
    /// To the head, periodically: the sender's load; answered with `Members`.
    Heartbeat(Load),
    /// From the head: the node table.
    Members(Vec<Member>),
    /// Run a call for the sender, which owns its result.
    Run(TaskSpec),
    /// A call run for the receiver ended.
    Done {
        /// The call's result id.
        result: ObjectId,
        /// How it ended.
        outcome: Outcome,
    },
    /// Where is this object? Answered once it is complete.
    Locate(ObjectId),
    /// The answer to `Locate`.
    Location {
        /// The object.
        id: ObjectId,
        /// Where it is.
        location: Location,
    },
    /// The sender now holds a reference to the receiver's object.
    Borrow(ObjectId),
    /// The sender no longer holds it.
    Release(ObjectId),
    /// The receiver may drop the copy it kept for the sender (its owner).
    FreeCopy(ObjectId),
}

impl Message {
    /// About how many bytes the message takes in memory (to bound what a link keeps).
    pub fn approx_len(&self) -> usize {
        64 + match self {
            Self::Run(spec) => spec.wire_len(),
            Self::Done {
                outcome: Outcome::Held { contained, .. },
                ..
            } => contained.len() * 16,
            Self::Done {
                outcome: Outcome::Failed(Failure::Task(bytes)),
                ..
            } => bytes.len(),
            Self::Members(m) => m.len() * 128,
            _ => 0,
        }
    }

    /// Whether the message goes through the reliable, ordered channel (heartbeats, hellos and
    /// tables are periodic and go as they are).
    pub fn reliable(&self) -> bool {
        !matches!(self, Self::Hello(_) | Self::Heartbeat(_) | Self::Members(_))
    }
}

/// What travels between two cores: a message and the link's sequence numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    /// The message's sequence number on this link (0: an unsequenced message).
    pub seq: u64,
    /// Every sequenced message up to this one from the receiver has arrived.
    pub ack: u64,
    /// The message (none: an acknowledgement alone).
    pub msg: Option<Message>,
}
