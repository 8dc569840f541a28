//! The project's one place for raw system calls: every `libc::syscall`, raw `ioctl`, raw
//! `setsockopt` and adoption of a descriptor number the kernel handed us is here, each `unsafe`
//! with its `// SAFETY:` comment; the other crates call these wrappers or `nix`.
//!
//! - the kernel switch ([`kexec_file_load`], [`reboot_kexec`]), for `overboot-kexec`;
//! - the lazy restore's page server on the other side of it: the `userfaultfd(2)` ioctls that
//!   put a page into a restored task ([`uffd_copy`], [`uffd_zeropage`], [`uffd_wake`]) and the
//!   adoption of the descriptors the kernel and CRIU hand it ([`adopt_event_fd`], [`recv_fd`]),
//!   and its `setpriority` for its background copy ([`set_thread_nice`]);
//! - the descriptor borrowing ([`pidfd_open`], [`pidfd_getfd`]) and `TCP_REPAIR` toggle
//!   ([`set_tcp_repair`]) that nudge a restored connection's peer (see `overboot::nudge`), and
//!   [`tcp_info`];
//! - `fork` without `exec`, for a process with one thread ([`fork_alone`]: the resume agent's
//!   worker and page server start as copies of the agent, not as new programs).
//!
//! Thin, typed wrappers in the style of `nix`: file descriptors come in as `BorrowedFd` and go
//! out as `OwnedFd`, the command line as a `CStr`, errors go out as `Errno`. No policy and no
//! error classification: that is the callers' job (`overboot_kexec::load` for the kernel
//! switch). `nix` has no `kexec_file_load`, so that one is written here; `sync`, `reboot`,
//! `recvmsg` and `fork` go through `nix`.

mod fd;
mod kexec;
mod process;
mod tcp;
mod uffd;

pub use fd::{pidfd_getfd, pidfd_open, recv_fd};
pub use kexec::{kexec_file_load, kexec_file_unload, reboot_kexec, sync};
pub use process::{close_inherited_fds, fork_alone, set_thread_nice, thread_count, Forked};
pub use tcp::{set_tcp_repair, tcp_info};
pub use uffd::{adopt_event_fd, uffd_copy, uffd_wake, uffd_zeropage, UffdPartial};
