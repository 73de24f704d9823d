//! The network layer: certificates and mutual TLS ([`tls`]), the wire protocol ([`proto`]),
//! and the cluster a node joins ([`cluster`]); the placement rule is `ferry_core::placement`.

pub mod cluster;
pub mod proto;
pub mod tls;
