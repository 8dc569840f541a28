//! The protocol of CRIU's own `criu lazy-pages` daemon, as `criu restore --lazy-pages` speaks
//! it to the page server over [`SOCKET`] in the images dir: per restored task its pid (a native
//! `i32`; negative for a zombie, with nothing else) followed by its userfaultfd (one byte with
//! `SCM_RIGHTS`); once every task is restored, [`RESTORE_FINISHED`].

/// CRIU's `LAZY_PAGES_RESTORE_FINISHED` ("ReSTore Finished"): above any pid.
pub const RESTORE_FINISHED: u32 = 0x5253_5446;

/// The socket `criu restore --lazy-pages` connects to, relative to its work dir.
pub const SOCKET: &str = "lazy-pages.socket";
