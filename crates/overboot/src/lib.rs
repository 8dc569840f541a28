//! overboot: move a running Linux server onto a new kernel without stopping its services.
//!
//! This crate is the orchestration behind the CLI: exit classes shared by every verb, and (as
//! they land) `update`, `resume` and `status`. The kernel switch itself is `overboot-kexec`, the
//! checkpoint engine `overboot-checkpoint`, the Save State Map `overboot-handover`.

pub mod exit;

pub use exit::ExitClass;
