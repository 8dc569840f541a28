//! overboot: move a running Linux server onto a new kernel without stopping its services.
//!
//! This crate is the orchestration behind the CLI: [`update`] (checks, freeze and dump, Save
//! State Map, kexec), [`resume`] (the agent in the new kernel), [`report`] (what `status`
//! shows), with [`target`] inspection shared by `plan` and `update` ([`unit`]: systemd services as targets). The kernel switch itself is
//! `overboot-kexec`, the checkpoint engine `overboot-checkpoint`, the map `overboot-handover`.

pub mod dirty;
pub mod exit;
pub mod fault;
pub mod forked;
pub mod lazy;
pub mod network;
pub mod nudge;
pub mod phases;
pub mod plan;
pub mod precopy;
pub mod report;
pub mod restore;
pub mod resume;
pub mod rollback;
pub mod rtnl;
pub mod store;
pub mod systemd;
pub mod target;
pub mod timens;
pub mod unit;
pub mod update;

pub use exit::ExitClass;
