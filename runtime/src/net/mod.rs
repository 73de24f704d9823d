//! The network layer: certificates and mutual TLS ([`tls`]), the wire protocol ([`proto`]),
//! the cluster a node joins ([`cluster`]), and the driver of the node's distributed core
//! (`driver`); the placement rule is `ferry_core::placement`.

pub mod cluster;
mod driver;
pub mod local;
pub mod proto;
pub mod tls;
