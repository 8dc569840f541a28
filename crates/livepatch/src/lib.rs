//! Live patching: function-level kernel fixes applied to the running kernel, with no kernel
//! switch and no blackout. This is the "function replacement" half of overboot.
//!
//! ```text
//!  build (host or target)                                   running kernel
//!  ──────────────────────                                   ──────────────
//!  FIX.patch ─► [sourcepatch] refuse headers/struct bodies
//!  Debian linux-source/headers/kbuild of the exact release ─► [tree]
//!  touched units, before and after, -ffunction-sections ─► [compile]
//!  changed functions by comparing objects ─► [compare]
//!  patch object: new code + relocations ─► [emit]
//!  klp module: klp_func per function, kbuild ─► [module]
//!  .klp.rela / .klp.sym conversion of the .ko ─► [klp_elf] ─► apply ─► [runtime]
//!                                                             list / revert / replace
//! ```
//!
//! The crate has two halves: [`build`] runs where the kernel source can be fetched (any Debian
//! machine), [`runtime`] runs as root on the patched machine and only talks to the kernel's
//! module loader and `/sys/kernel/livepatch`.

pub mod build;
pub mod compare;
pub mod compile;
pub mod emit;
pub mod io_error;
pub mod klp_elf;
pub mod modinfo;
pub mod module;
pub mod runtime;
pub mod sourcepatch;
pub mod tree;

pub use build::{build, BuildError, BuildReport, BuildRequest};
pub use runtime::{LivePatch, RuntimeError};
