//! The lab: everything needed to prove overboot on real kernels without touching the host.
//!
//! It fetches Debian kernel packages into a cache ([`kernels`]), builds guest initramfs images
//! and data disks ([`image`], [`disk`]), boots them in QEMU and talks to the guest over the serial
//! console with explicit sentinels ([`guest`]). Tests, the demo and the benchmark are built on it.
//! [`trixie`] is the second profile: a Debian 13 root file system with systemd as PID 1.
//! Both profiles' guests run a pinned CRIU the lab builds for their userland ([`criu`]).
//! Nothing here runs a privileged operation on the host: kexec, CRIU and friends run in guests.

pub mod bench;
pub mod carry;
pub mod criu;
pub mod demo;
pub mod disk;
pub mod guest;
pub mod host;
pub mod image;
pub mod incr;
pub mod kernels;
pub mod lab;
pub mod net;
pub mod redis;
pub mod service;
pub mod trixie;
pub mod workloads;

pub use guest::{Guest, GuestConfig, GuestError};
pub use image::{GuestImage, ImageError};
pub use kernels::{Kernel, KernelError, KernelSpec};
pub use lab::{Lab, LabError};
