//! The wire protocol between nodes (and drivers): one bidirectional QUIC stream per request.
//!
//! The opener writes one [`Request`] frame and finishes its side; the other side answers with
//! one [`Response`] frame, followed, for object and module transfers, by the raw bytes the
//! response announces. A frame is a little-endian `u32` length and that many bytes of postcard.
//! Nothing here trusts the peer: lengths are bounded before anything is allocated, and every
//! decoding failure is a [`ProtoError`], never a panic. `docs/protocol.md` describes it for
//! people.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_abi::{ModuleId, ObjectId};
use serde::{Deserialize, Serialize};

use crate::error::{TaskError, TaskErrorKind};
use crate::ids::NodeId;

/// The ALPN protocol name; a peer speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"ferry/1";

/// The largest control frame accepted (module and object bytes travel raw, outside frames).
pub const MAX_FRAME: usize = 16 << 20;

/// Most ids in one message (refs of an object, ids of a ref batch).
pub const MAX_IDS: usize = 1 << 20;

/// A malformed or unexpected message.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame announced more bytes than allowed.
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The frame ended early.
    #[error("truncated frame: {0}")]
    Truncated(String),
    /// The frame's bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is valid but not what this point of the exchange expects.
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// What a node tells others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id (it owns the objects whose ids carry it).
    pub id: u64,
    /// Where it accepts connections (`None`: a driver, reachable only over the connections it
    /// opens).
    pub addr: Option<SocketAddr>,
    /// Whether it runs calls (drivers do not).
    pub worker: bool,
    /// Its cores (worker threads).
    pub cores: u32,
}

/// A node's load, sent to the head with every heartbeat.
pub use ferry_core::Load;

/// One row of the head's node table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub info: NodeInfo,
    /// Its last reported load.
    pub load: Load,
    /// Whether its connection to the head is up.
    pub alive: bool,
    /// Why it is dead, if it is.
    pub reason: Option<String>,
}

/// An object's header on the wire; `total_len` raw bytes (the object as stored, metadata,
/// buffers and padding) follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireObject {
    /// Length of the metadata.
    pub meta_len: u64,
    /// Length of each out-of-band buffer.
    pub buffer_lens: Vec<u64>,
    /// The refs the object contains.
    pub contained: Vec<ObjectId>,
    /// The number of raw bytes that follow.
    pub total_len: u64,
}

/// A request: the first frame on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The first request on every connection: who is calling. Answered with `Welcome`.
    Hello(NodeInfo),
    /// Messages of the distributed core (`ferry_core::Message` with its link numbers), in
    /// the order they were sent: joining, heartbeats, the head's node table, calls (`Run`,
    /// `Done`), reference counts (`Borrow`, `Release`, `FreeCopy`) and locations (`Locate`,
    /// `Location`). Answered with `Ack`.
    Packets(Vec<ferry_core::Packet>),
    /// The node table. Answered with `Members`.
    Members,
    /// The bytes of a module. Answered with `Module` and the bytes.
    Module(ModuleId),
    /// An object's bytes. Answered with `Object` and the bytes.
    Fetch(ObjectId),
    /// A core message carrying an object: the inline result of a call (`Done` with
    /// `Outcome::Inline`), whose `total_len` raw bytes follow the frame. Answered with `Ack`.
    PacketWithObject(ferry_core::Packet, WireObject),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Hello`: the answering node.
    Welcome(NodeInfo),
    /// The node table.
    Members(Vec<Member>),
    /// A module's length; its bytes follow.
    Module {
        /// The byte count.
        len: u64,
    },
    /// An object's header; its bytes follow.
    Object(WireObject),
    /// Done.
    Ack,
    /// The request could not be served.
    Error(String),
}

/// A task error on the wire: flat (no recursion, so a hostile peer cannot nest it deep).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTaskError {
    /// The failing function and node, and what happened.
    pub error: FlatError,
    /// For an upstream failure: the failure that started the chain.
    pub root: Option<FlatError>,
}

/// One task error without its chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlatError {
    /// The function.
    pub function: String,
    /// The node.
    pub node: u64,
    /// What happened.
    pub kind: FlatKind,
}

/// [`TaskErrorKind`] without the nested root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum FlatKind {
    Panicked {
        message: String,
    },
    Failed {
        message: String,
        cause: Vec<u8>,
    },
    Trapped {
        trap: String,
    },
    TimedOut {
        limit_ms: u64,
    },
    MemoryLimit {
        limit: u64,
    },
    UnknownFunction {
        module: ModuleId,
    },
    BadArguments {
        detail: String,
    },
    Upstream {
        argument: u64,
        upstream_function: String,
    },
    ArgumentLost {
        argument: u64,
        id: ObjectId,
    },
    Abi {
        detail: String,
    },
    Host {
        detail: String,
    },
    NodeDied {
        node: u64,
        detail: String,
    },
}

fn flatten(e: &TaskError) -> FlatError {
    let kind = match &e.kind {
        TaskErrorKind::Panicked { message } => FlatKind::Panicked {
            message: message.clone(),
        },
        TaskErrorKind::Failed { message, cause } => FlatKind::Failed {
            message: message.clone(),
            cause: cause.clone(),
        },
        TaskErrorKind::Trapped { trap } => FlatKind::Trapped { trap: trap.clone() },
        TaskErrorKind::TimedOut { limit } => FlatKind::TimedOut {
            limit_ms: limit.as_millis() as u64,
        },
        TaskErrorKind::MemoryLimit { limit } => FlatKind::MemoryLimit { limit: *limit },
        TaskErrorKind::UnknownFunction { module } => FlatKind::UnknownFunction { module: *module },
        TaskErrorKind::BadArguments { detail } => FlatKind::BadArguments {
            detail: detail.clone(),
        },
        TaskErrorKind::UpstreamFailed {
            argument,
            upstream_function,
            ..
        } => FlatKind::Upstream {
            argument: *argument as u64,
            upstream_function: upstream_function.clone(),
        },
        TaskErrorKind::ArgumentLost { argument, id } => FlatKind::ArgumentLost {
            argument: *argument as u64,
            id: *id,
        },
        TaskErrorKind::Abi { detail } => FlatKind::Abi {
            detail: detail.clone(),
        },
        TaskErrorKind::Host { detail } => FlatKind::Host {
            detail: detail.clone(),
        },
        TaskErrorKind::NodeDied { node, detail } => FlatKind::NodeDied {
            node: node.0,
            detail: detail.clone(),
        },
    };
    FlatError {
        function: e.function.clone(),
        node: e.node.0,
        kind,
    }
}

fn unflatten(f: FlatError, root: Option<Arc<TaskError>>) -> TaskError {
    let kind = match f.kind {
        FlatKind::Panicked { message } => TaskErrorKind::Panicked { message },
        FlatKind::Failed { message, cause } => TaskErrorKind::Failed { message, cause },
        FlatKind::Trapped { trap } => TaskErrorKind::Trapped { trap },
        FlatKind::TimedOut { limit_ms } => TaskErrorKind::TimedOut {
            limit: Duration::from_millis(limit_ms),
        },
        FlatKind::MemoryLimit { limit } => TaskErrorKind::MemoryLimit { limit },
        FlatKind::UnknownFunction { module } => TaskErrorKind::UnknownFunction { module },
        FlatKind::BadArguments { detail } => TaskErrorKind::BadArguments { detail },
        FlatKind::Upstream {
            argument,
            upstream_function,
        } => match root {
            Some(root) => TaskErrorKind::UpstreamFailed {
                argument: argument as usize,
                upstream_function,
                root,
            },
            None => TaskErrorKind::Host {
                detail: format!(
                    "argument {argument} comes from failed task `{upstream_function}` \
                     (the peer sent no root failure)"
                ),
            },
        },
        FlatKind::ArgumentLost { argument, id } => TaskErrorKind::ArgumentLost {
            argument: argument as usize,
            id,
        },
        FlatKind::Abi { detail } => TaskErrorKind::Abi { detail },
        FlatKind::Host { detail } => TaskErrorKind::Host { detail },
        FlatKind::NodeDied { node, detail } => TaskErrorKind::NodeDied {
            node: NodeId(node),
            detail,
        },
    };
    TaskError {
        function: f.function,
        node: NodeId(f.node),
        kind,
    }
}

impl From<&TaskError> for WireTaskError {
    fn from(e: &TaskError) -> Self {
        let root = match &e.kind {
            TaskErrorKind::UpstreamFailed { root, .. } => Some(flatten(root)),
            _ => None,
        };
        Self {
            error: flatten(e),
            root,
        }
    }
}

impl From<WireTaskError> for TaskError {
    fn from(w: WireTaskError) -> Self {
        // A root is never itself an upstream failure; one that claims to be has no root.
        let root = w.root.map(|r| Arc::new(unflatten(r, None)));
        unflatten(w.error, root)
    }
}

/// Encodes `msg` as a frame: length prefix and postcard.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Encoding our own message types into a Vec cannot fail.
    let body = postcard::to_extend(msg, Vec::new()).unwrap_or_default();
    out[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one whole frame (length prefix and body, nothing after it). What the fuzz target
/// and the stream reader both use.
pub fn decode_frame<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, ProtoError> {
    let Some((len, body)) = frame.split_first_chunk::<4>() else {
        return Err(ProtoError::Truncated(format!(
            "{} bytes, less than a length prefix",
            frame.len()
        )));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    if body.len() != len {
        return Err(ProtoError::Truncated(format!(
            "the prefix announces {len} bytes, {} present",
            body.len()
        )));
    }
    decode_body(body)
}

/// Decodes a frame's body, which must be used up exactly.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Checks what an object header announces before anything is allocated for it.
pub fn check_object(h: &WireObject, max_len: u64) -> Result<crate::store::Layout, ProtoError> {
    if h.contained.len() > MAX_IDS || h.buffer_lens.len() > MAX_IDS {
        return Err(ProtoError::Malformed("too many refs or buffers".into()));
    }
    let lens: Vec<usize> = h
        .buffer_lens
        .iter()
        .map(|&l| usize::try_from(l))
        .collect::<Result<_, _>>()
        .map_err(|_| ProtoError::Malformed("buffer length overflows".into()))?;
    let meta = usize::try_from(h.meta_len)
        .map_err(|_| ProtoError::Malformed("metadata length overflows".into()))?;
    let layout = crate::store::Layout::plan(meta, &lens)
        .ok_or_else(|| ProtoError::Malformed("object layout overflows".into()))?;
    if layout.total_len() != h.total_len {
        return Err(ProtoError::Malformed(format!(
            "object announces {} bytes but its layout takes {}",
            h.total_len,
            layout.total_len()
        )));
    }
    if h.total_len > max_len {
        return Err(ProtoError::TooLarge {
            len: h.total_len,
            max: max_len as usize,
        });
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let r = Request::Fetch(ObjectId::new(7, 9));
        assert_eq!(decode_frame::<Request>(&encode_frame(&r)).unwrap(), r);
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            decode_frame::<Request>(&[1, 0]),
            Err(ProtoError::Truncated(_))
        ));
        assert!(matches!(
            decode_frame::<Request>(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtoError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame::<Request>(&[1, 0, 0, 0, 200]),
            Err(ProtoError::Malformed(_))
        ));
        let mut f = encode_frame(&Request::Members);
        f.push(0);
        f[0] += 1;
        assert!(matches!(
            decode_frame::<Request>(&f),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn task_errors_cross_the_wire_with_their_root() {
        let root = Arc::new(TaskError {
            function: "a".into(),
            node: NodeId(1),
            kind: TaskErrorKind::Panicked {
                message: "boom".into(),
            },
        });
        let e = TaskError {
            function: "b".into(),
            node: NodeId(2),
            kind: TaskErrorKind::UpstreamFailed {
                argument: 1,
                upstream_function: "a".into(),
                root,
            },
        };
        let back: TaskError = WireTaskError::from(&e).into();
        assert_eq!(back.to_string(), e.to_string());
        assert_eq!(back.root().function, "a");
    }

    proptest::proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes: Vec<u8>) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame::<Response>(&bytes);
            let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode_frame::<Request>(&framed);
            let _ = decode_frame::<Response>(&framed);
        }
    }
}
