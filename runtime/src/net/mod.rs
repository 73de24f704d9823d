//! The network layer: certificates and mutual TLS ([`tls`]), the wire protocol ([`proto`]),
//! the placement rule ([`placement`]), and the cluster a node joins ([`cluster`]).

pub mod cluster;
pub mod placement;
pub mod proto;
pub mod tls;
