//! The machine overboot runs on, as both sides of the switch see it: processes and the trees
//! to preserve ([`target`], [`unit`]), the network ([`network`], [`rtnl`]), systemd
//! ([`systemd`]), the stores a map can live in ([`store`]), written pages ([`dirty`]), forked
//! helpers ([`forked`]), unix sockets ([`unix_diag`]) and services' streams to journald
//! ([`journal`]), and small readings of `/proc` ([`proc`]). Imports only [`crate::model`].

pub mod dirty;
pub mod forked;
pub mod journal;
pub mod kernels;
pub mod network;
pub mod proc;
pub mod rtnl;
pub mod served;
pub mod store;
pub mod systemd;
pub mod target;
pub mod unix_diag;
