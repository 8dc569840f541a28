//! overboot: move a running Linux server onto a new kernel without stopping its services.
//!
//! The library behind the CLI, laid out by the side of the kernel switch each part runs on:
//!
//! ```text
//!  commands/ (the binary: one file per verb)
//!     │
//!     ├──► old/   the running kernel: check (plan is its collect-all mode), estimate,
//!     │           pre-copy, freeze and dump, write the Save State Map, load, jump
//!     └──► new/   the new kernel's agent: verify, restore, nudge, report; lazy pages;
//!                 the supervisor that rolls back
//!              │
//!              ▼
//!          host/  the machine: processes and targets, network, systemd, stores
//!              │
//!              ▼
//!          model/ what both sides agree on: report, phases, exit classes, state files,
//!                 records, faults, the layout of a tree's images in the map
//! ```
//!
//! Arrows point one way: `old` and `new` never import each other, `host` imports only
//! `model`, `model` nothing of this crate. The kernel switch itself is `overboot-kexec`, the
//! checkpoint engine `overboot-checkpoint`, the map `overboot-handover`, the page server
//! `overboot-pageserver`. See `docs/dev/architecture.md`.

pub mod host;
pub mod model;
pub mod new;
pub mod old;

pub use model::exit::ExitClass;
