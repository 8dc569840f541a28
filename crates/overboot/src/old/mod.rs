//! The running (old) kernel's side of an update, in the order it runs: [`check`] (every
//! refusal, before anything is frozen; [`plan`] is the same list in collect-all mode),
//! [`precopy`], [`freeze`] (network block, unit holds, dump; and the way back,
//! [`freeze::restore_here`]), [`map`] (the Save State Map), [`switch`] (publish, load, jump);
//! [`update`] strings them together over [`effects::Effects`].

pub mod attempt;
pub mod back;
pub mod check;
pub mod compat;
pub mod effects;
pub mod error;
pub mod estimate;
pub mod freeze;
pub mod inflight;
pub mod map;
pub mod options;
pub mod plan;
pub mod precopy;
pub mod switch;
pub mod update;
