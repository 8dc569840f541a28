//! Why a target cannot be preserved: every refusal of the inspection, each naming the target
//! and, where there is one, the process and what it holds.

/// Why a target cannot be preserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither `pid:N` nor `unit:NAME.service`.
    #[error("cannot parse target {0:?}: expected pid:N or unit:NAME.service")]
    Syntax(String),
    /// A unit that is not a service.
    #[error("{target}: only .service units can be preserved")]
    NotAService { target: String },
    /// No cgroup v2 hierarchy to find a unit's processes in.
    #[error("{target}: no unified cgroup hierarchy (cgroup v2) at /sys/fs/cgroup")]
    NoUnifiedCgroup { target: String },
    /// systemd knows no such unit.
    #[error("{target}: no such unit (no unit file and no cgroup)")]
    NoSuchUnit { target: String },
    /// The unit exists but runs no process.
    #[error("{target}: the unit is not running (no process in its cgroup)")]
    UnitInactive { target: String },
    /// No such process.
    #[error("{target}: no such process")]
    NoSuchProcess { target: String },
    /// PID 1 is the init of this kernel: it cannot move to another.
    #[error("{target}: pid 1 is this kernel's init and cannot be preserved")]
    Init { target: String },
    /// The tree contains the overboot process itself.
    #[error("{target}: the tree contains overboot itself (pid {pid})")]
    ContainsSelf { target: String, pid: i32 },
    /// Two targets overlap.
    #[error("{target}: pid {pid} is already part of {other}")]
    Overlap {
        target: String,
        pid: i32,
        other: String,
    },
    /// A kernel thread.
    #[error("{target}: pid {pid} is a kernel thread")]
    KernelThread { target: String, pid: i32 },
    /// A process in namespaces of its own (systemd's sandboxing makes them: `PrivateUsers=`,
    /// `PrivateTmp=`, `ProtectSystem=`, `ProtectHostname=`, …). CRIU dumps such a tree only
    /// together with its namespaces, which overboot does not carry yet; it does not turn a
    /// unit's sandboxing off to carry it either.
    #[error(
        "{target}: pid {pid} ({comm}) runs in its own {namespaces} namespace(s){made_by}; overboot \
         does not carry a process's own namespaces yet, and does not weaken a unit's sandboxing \
         to carry it: the service keeps running on this kernel"
    )]
    ForeignNamespaces {
        target: String,
        pid: i32,
        comm: String,
        namespaces: String,
        /// `, made by the unit's PrivateTmp=yes, ...` for a unit; empty otherwise.
        made_by: String,
    },
    /// A file descriptor of a kind the checkpoint engine cannot carry.
    #[error("{target}: pid {pid} ({comm}) holds fd {fd}, {kind}, which CRIU cannot checkpoint")]
    UnsupportedFd {
        target: String,
        pid: i32,
        comm: String,
        fd: i32,
        kind: String,
    },
    /// A unix stream connection whose other end is outside the tree and is not journald's.
    #[error(
        "{target}: pid {pid} ({comm}) holds fd {fd}, a unix stream connection whose other end \
         is {peer}, outside the tree: CRIU cannot checkpoint half of a stream connection (only \
         streams to journald are carried)"
    )]
    ExternalStream {
        target: String,
        pid: i32,
        comm: String,
        fd: i32,
        /// The other end: its path and the processes holding it, as far as known.
        peer: String,
    },
}
