//! The new kernel's side: the agent its early userspace runs. [`supervise`] runs a worker
//! and rolls back when it fails; the worker ([`resume`]) is a short sequence of phases over
//! [`agent::Agent`]: verify the map, put carried files back, check the pids are free, the
//! network under its lock, [`restore`] every tree (all or nothing, some [`lazy`]), [`nudge`]
//! the peers, and the report.

pub mod agent;
pub mod error;
pub mod lazy;
pub mod nudge;
pub mod options;
pub mod prepare;
pub mod restore;
pub mod resume;
pub mod supervise;
pub mod timens;
