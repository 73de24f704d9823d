//! Who is who: node ids and the identities certificates vouch for.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id of a node or driver process in a cluster; it owns the objects whose ids carry it.
///
/// The high 32 bits are the number the cluster CA wrote into the process's certificate, the
/// low 32 bits an incarnation chosen at start-up. So an id can be checked against the
/// certificate of whoever uses it ([`Identity::may_use`]), and a node that restarts with the
/// same certificate is a new incarnation, not the process that died.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The id of incarnation `incarnation` of certificate number `cert`.
    pub const fn new(cert: u32, incarnation: u32) -> Self {
        Self(((cert as u64) << 32) | incarnation as u64)
    }

    /// The certificate number the id belongs to.
    pub const fn cert(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The incarnation.
    pub const fn incarnation(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A host node: runs calls, accepts connections.
    Node,
    /// A driver or tool: owns what it puts and calls, never runs calls, never changes who is
    /// in the cluster.
    Client,
}

/// A peer's identity as its verified certificate states it. The transport fills it in from
/// the TLS handshake; nothing a peer writes in a message can change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The certificate's number (unique in its cluster, assigned by the CA).
    pub cert: u32,
    /// The certificate's role.
    pub role: Role,
}

impl Identity {
    /// Whether the holder of this certificate may act as `node`: the id's certificate number
    /// must be this certificate's.
    pub fn may_use(&self, node: NodeId) -> bool {
        node.cert() == self.cert
    }
}

/// A message's sender: the node id it speaks as, and the certificate the transport verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sender {
    /// The id the peer speaks as.
    pub node: NodeId,
    /// Its verified certificate.
    pub identity: Identity,
}
