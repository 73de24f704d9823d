//! Reliable, ordered delivery between two cores, over a transport that may lose, repeat or
//! reorder frames (a broken QUIC connection loses what was in flight; the simulator does
//! worse).
//!
//! Each sequenced message gets the next number of its link; the receiver hands messages to
//! its core in number order, exactly once, and acknowledges the highest number up to which
//! it has everything (piggybacked on its own packets, or alone after [`ACK_DELAY`]). The
//! sender repeats what is not acknowledged after a timeout that doubles up to
//! [`MAX_RTO`]. A link lives as long as the peer is a member: a peer's death drops it, and a
//! restarted peer is a new node id with a new link.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ferry_abi::ObjectId;

use crate::message::{Message, Packet};

/// How long a receiver waits for a packet of its own to carry an acknowledgement before it
/// sends one alone.
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// The longest wait before a message is sent again.
pub const MAX_RTO: Duration = Duration::from_secs(4);

/// Out-of-order messages a receiver keeps at most; later ones are dropped (and repeated).
pub const MAX_HELD: usize = 4096;

/// Bytes of out-of-order messages a receiver keeps at most per peer (a peer that never sends
/// the message it skipped cannot make it keep more).
pub const MAX_HELD_BYTES: usize = 32 << 20;

#[derive(Debug)]
struct Unacked {
    seq: u64,
    msg: Message,
    attach: Option<ObjectId>,
    due: Instant,
    rto: Duration,
}

/// One direction pair of a reliable channel with one peer.
#[derive(Debug)]
pub struct Link {
    next_seq: u64,
    unacked: VecDeque<Unacked>,
    /// The next sequence number expected from the peer.
    recv_next: u64,
    held: BTreeMap<u64, Message>,
    /// About how many bytes `held` takes.
    held_bytes: usize,
    /// Since when an acknowledgement is owed.
    ack_owed: Option<Instant>,
    rto: Duration,
}

/// A packet to send, with the object whose bytes the transport attaches, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The packet.
    pub packet: Packet,
    /// The object whose bytes follow the packet.
    pub attach: Option<ObjectId>,
}

impl Link {
    /// A new link; `rto` is the first wait before repeating a message.
    pub fn new(rto: Duration) -> Self {
        Self {
            next_seq: 1,
            unacked: VecDeque::new(),
            recv_next: 1,
            held: BTreeMap::new(),
            held_bytes: 0,
            ack_owed: None,
            rto,
        }
    }

    fn ack(&self) -> u64 {
        self.recv_next - 1
    }

    /// Wraps `msg` for sending now.
    pub fn send(&mut self, now: Instant, msg: Message, attach: Option<ObjectId>) -> Outgoing {
        let seq = if msg.reliable() {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.unacked.push_back(Unacked {
                seq,
                msg: msg.clone(),
                attach,
                due: now + self.rto,
                rto: self.rto,
            });
            seq
        } else {
            0
        };
        self.ack_owed = None;
        Outgoing {
            packet: Packet {
                seq,
                ack: self.ack(),
                msg: Some(msg),
            },
            attach,
        }
    }

    /// Takes in a packet from the peer. Returns the messages now deliverable, in order, and
    /// the sequenced messages of ours that the peer has acknowledged.
    pub fn receive(&mut self, now: Instant, packet: Packet) -> (Vec<Message>, Vec<Message>) {
        let mut acked = Vec::new();
        while self.unacked.front().is_some_and(|u| u.seq <= packet.ack) {
            if let Some(u) = self.unacked.pop_front() {
                acked.push(u.msg);
            }
        }
        let mut deliver = Vec::new();
        let Some(msg) = packet.msg else {
            return (deliver, acked);
        };
        if packet.seq == 0 {
            if !msg.reliable() {
                deliver.push(msg);
            }
            return (deliver, acked);
        }
        if !msg.reliable() {
            // A periodic message never carries a number; one that does is malformed.
            return (deliver, acked);
        }
        self.ack_owed.get_or_insert(now);
        if packet.seq < self.recv_next {
            return (deliver, acked);
        }
        if packet.seq - self.recv_next >= MAX_HELD as u64 {
            return (deliver, acked);
        }
        if packet.seq == self.recv_next {
            deliver.push(msg);
            self.recv_next += 1;
        } else {
            let len = msg.approx_len();
            if self.held_bytes + len > MAX_HELD_BYTES || self.held.contains_key(&packet.seq) {
                // Dropped: the sender repeats it once the gap is filled.
                return (deliver, acked);
            }
            self.held_bytes += len;
            self.held.insert(packet.seq, msg);
        }
        while let Some(m) = self.held.remove(&self.recv_next) {
            self.held_bytes = self.held_bytes.saturating_sub(m.approx_len());
            deliver.push(m);
            self.recv_next += 1;
        }
        (deliver, acked)
    }

    /// When this link next needs attention.
    pub fn timeout(&self) -> Option<Instant> {
        let resend = self.unacked.iter().map(|u| u.due).min();
        let ack = self.ack_owed.map(|t| t + ACK_DELAY);
        match (resend, ack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Repeats what is due and sends an owed acknowledgement.
    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let ack = self.ack();
        let mut sent = false;
        for u in self.unacked.iter_mut().filter(|u| u.due <= now) {
            u.rto = (u.rto * 2).min(MAX_RTO);
            u.due = now + u.rto;
            out.push(Outgoing {
                packet: Packet {
                    seq: u.seq,
                    ack,
                    msg: Some(u.msg.clone()),
                },
                attach: u.attach,
            });
            sent = true;
        }
        if let Some(since) = self.ack_owed
            && (sent || since + ACK_DELAY <= now)
        {
            self.ack_owed = None;
            if !sent {
                out.push(Outgoing {
                    packet: Packet {
                        seq: 0,
                        ack,
                        msg: None,
                    },
                    attach: None,
                });
            }
        }
    }

    /// Whether every sequenced message sent so far has been acknowledged.
    pub fn idle(&self) -> bool {
        self.unacked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(n: u64) -> Message {
        Message::Release(ObjectId::new(1, n))
    }

    #[test]
    fn reordered_and_repeated_packets_arrive_once_in_order() {
        let t = Instant::now();
        let (mut a, mut b) = (
            Link::new(Duration::from_millis(100)),
            Link::new(Duration::from_millis(100)),
        );
        let p: Vec<Outgoing> = (1..=3).map(|n| a.send(t, release(n), None)).collect();
        let (d, _) = b.receive(t, p[2].packet.clone());
        assert!(d.is_empty());
        let (d, _) = b.receive(t, p[0].packet.clone());
        assert_eq!(d, vec![release(1)]);
        let (d, _) = b.receive(t, p[0].packet.clone());
        assert!(d.is_empty());
        let (d, _) = b.receive(t, p[1].packet.clone());
        assert_eq!(d, vec![release(2), release(3)]);
        // b owes an ack; after the delay it sends one alone, and a forgets what it sent.
        let mut out = Vec::new();
        b.on_timeout(t + ACK_DELAY, &mut out);
        assert_eq!(out.len(), 1);
        let (_, acked) = a.receive(t, out[0].packet.clone());
        assert_eq!(acked.len(), 3);
        assert!(a.idle());
    }

    #[test]
    fn lost_packets_are_sent_again_with_backoff() {
        let t = Instant::now();
        let mut a = Link::new(Duration::from_millis(100));
        let mut b = Link::new(Duration::from_millis(100));
        let _lost = a.send(t, release(1), None);
        assert_eq!(a.timeout(), Some(t + Duration::from_millis(100)));
        let mut out = Vec::new();
        a.on_timeout(t + Duration::from_millis(100), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(a.timeout(), Some(t + Duration::from_millis(300)));
        let (d, _) = b.receive(t, out[0].packet.clone());
        assert_eq!(d, vec![release(1)]);
    }

    #[test]
    fn a_peer_that_skips_a_number_cannot_make_the_receiver_keep_more_than_the_budget() {
        let t = Instant::now();
        let mut b = Link::new(Duration::from_millis(100));
        let big = |seq: u64| Packet {
            seq,
            ack: 0,
            msg: Some(Message::Run(crate::message::TaskSpec {
                module: ferry_abi::ModuleId([0; 32]),
                function: "f".into(),
                args: vec![ferry_abi::abi::CallArg::Value {
                    bytes: vec![0; 1 << 20],
                    refs: Vec::new(),
                }],
                result: ObjectId::new(2, seq),
            })),
        };
        for seq in 2..100 {
            assert!(b.receive(t, big(seq)).0.is_empty());
        }
        assert!(b.held_bytes <= MAX_HELD_BYTES);
        assert!(b.held.len() < 40, "{} kept", b.held.len());
    }

    #[test]
    fn a_numbered_periodic_message_is_dropped() {
        let mut b = Link::new(Duration::from_millis(100));
        let p = Packet {
            seq: 1,
            ack: 0,
            msg: Some(Message::Members(Vec::new())),
        };
        assert!(b.receive(Instant::now(), p).0.is_empty());
    }
}
