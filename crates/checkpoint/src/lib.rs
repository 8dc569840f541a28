//! The checkpoint/restore engine of an update: CRIU, driven through its RPC protocol.
//!
//! The orchestration sees only the [`Engine`] trait: `pre_dump` while services run, `dump`
//! after the freeze (with notifications such as `network-lock` delivered to a handler), and
//! `restore` in the new kernel, which returns the restored root pid. [`Criu`] implements it by
//! running `criu swrk` over a `SOCK_SEQPACKET` socket pair, one worker per request.
//!
//! Why not the `rust-criu` crate: it exposes neither notifications, nor pre-dump, nor CRIU's
//! error message and errno, all of which an update needs. The protocol is small and public
//! (`images/rpc.proto`), so the messages are written out in [`rpc`].
//!
//! Layers, bottom up: [`rpc`] (messages) → [`transport`] (one message per packet over any
//! SEQPACKET fd) → [`session`] (one request's conversation) → [`criu`] (spawning criu).

pub mod criu;
pub mod engine;
pub mod error;
pub mod images;
pub mod log;
pub mod pagemap;
pub mod pstree;
pub mod request;
pub mod rpc;
pub mod session;
pub mod transport;

pub use crate::criu::{error_chain, Criu};
pub use crate::engine::{
    accept_all, CriuVersion, DumpOutcome, Engine, Features, Notification, NotifyHandler, Probe,
    RestoreOutcome,
};
pub use crate::error::CheckpointError;
pub use crate::log::{log_tail, CriuLog};
pub use crate::request::{
    DumpRequest, InheritedFd, NetworkLockMode, RestoreRequest, DEFAULT_LOG_LEVEL,
};
pub use crate::session::Session;
pub use crate::transport::{ProtocolError, Transport};
