//! A tree's unix stream connections whose other end it does not hold: those to journald are
//! carried (see [`crate::host::journal`]); any other is refused before anything is frozen,
//! naming both ends, because CRIU cannot checkpoint half of a stream connection.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use overboot_handover::JournalStream;

use super::TargetError;
use crate::host::journal;
use crate::host::unix_diag::{self, UnixSocket};

/// A socket fd of a tree's process.
#[derive(Debug, Clone)]
pub struct HeldSocket {
    /// The process.
    pub pid: i32,
    /// Its `comm`.
    pub comm: String,
    /// The fd.
    pub fd: i32,
    /// The socket's inode.
    pub inode: u64,
}

/// The processes (`pid (comm)`) outside `tree` holding socket `inode`; empty when none is
/// found (the holder exited, or it lives in another network namespace).
fn holders(inode: u64, tree: &BTreeSet<i32>) -> Vec<String> {
    let link = format!("socket:[{inode}]");
    crate::host::proc::all_pids()
        .into_iter()
        .filter(|pid| !tree.contains(pid))
        .filter(|pid| {
            let fds = fs::read_dir(format!("/proc/{pid}/fd"));
            fds.into_iter()
                .flatten()
                .flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()))
        })
        .map(|pid| {
            let comm = crate::host::proc::comm_of(pid).unwrap_or_default();
            format!("pid {pid} ({comm})")
        })
        .collect()
}

/// The journal streams among `held` (one per socket), or the refusal of the first stream
/// connection whose other end is outside the tree and is not journald's. The fds of the
/// streams move from `socket` to `socket:journal` in the tree's count of fds by kind.
pub fn journal_streams(
    target: &str,
    held: &[HeldSocket],
    fds: &mut BTreeMap<String, u32>,
) -> Result<Vec<JournalStream>, TargetError> {
    let streams = journal_streams_among(target, held)?;
    if !streams.is_empty() {
        let carried: BTreeSet<u64> = streams.iter().map(|s| s.inode).collect();
        let n = held.iter().filter(|s| carried.contains(&s.inode)).count();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(count) = fds.get_mut("socket") {
            *count -= n.min(*count);
            if *count == 0 {
                fds.remove("socket");
            }
        }
        fds.insert("socket:journal".into(), n);
    }
    Ok(streams)
}

fn journal_streams_among(
    target: &str,
    held: &[HeldSocket],
) -> Result<Vec<JournalStream>, TargetError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let sockets = match unix_diag::unix_sockets() {
        Ok(sockets) => sockets,
        Err(e) => {
            // Without the table the dump finds out, as it did before the inspection looked.
            tracing::warn!(error = %e, "cannot read the unix socket table: streams not checked");
            return Ok(Vec::new());
        }
    };
    classify(
        target,
        held,
        |inode| sockets.get(&inode).cloned(),
        &journal::streams_in(Path::new(journal::STREAMS_DIR)),
        holders,
    )
}

/// [`journal_streams`] on given tables.
fn classify(
    target: &str,
    held: &[HeldSocket],
    socket: impl Fn(u64) -> Option<UnixSocket>,
    journald: &std::collections::HashMap<u64, JournalStream>,
    holders: impl Fn(u64, &BTreeSet<i32>) -> Vec<String>,
) -> Result<Vec<JournalStream>, TargetError> {
    let inodes: BTreeSet<u64> = held.iter().map(|h| h.inode).collect();
    let pids: BTreeSet<i32> = held.iter().map(|h| h.pid).collect();
    let mut streams: Vec<JournalStream> = Vec::new();
    for h in held {
        let Some(sk) = socket(h.inode).filter(UnixSocket::connected_stream) else {
            continue;
        };
        if inodes.contains(&sk.peer) || streams.iter().any(|s| s.inode == h.inode) {
            continue;
        }
        if let Some(settings) = journald.get(&sk.peer) {
            streams.push(JournalStream {
                inode: h.inode,
                ..settings.clone()
            });
            continue;
        }
        let peer = socket(sk.peer).map(|p| p.name).unwrap_or_default();
        let who = holders(sk.peer, &pids);
        return Err(TargetError::ExternalStream {
            target: target.to_string(),
            pid: h.pid,
            comm: h.comm.clone(),
            fd: h.fd,
            peer: match (peer.is_empty(), who.is_empty()) {
                (true, true) => "a process outside the tree".into(),
                (true, false) => who.join(", "),
                (false, true) => peer,
                (false, false) => format!("{peer} ({})", who.join(", ")),
            },
        });
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn held(pid: i32, fd: i32, inode: u64) -> HeldSocket {
        HeldSocket {
            pid,
            comm: "svc".into(),
            fd,
            inode,
        }
    }

    fn stream(peer: u64) -> UnixSocket {
        UnixSocket {
            kind: libc::SOCK_STREAM,
            state: 1,
            peer,
            name: String::new(),
        }
    }

    fn table(inode: u64) -> Option<UnixSocket> {
        match inode {
            // the service's journal stream (fds 1 and 2, and a child's) and journald's end
            10 => Some(stream(110)),
            110 => Some(UnixSocket {
                name: journal::STDOUT_SOCKET.into(),
                ..stream(10)
            }),
            // a socket pair inside the tree
            20 => Some(stream(21)),
            21 => Some(stream(20)),
            // a client connected to the service's own socket
            30 => Some(UnixSocket {
                name: "/run/svc.sock".into(),
                ..stream(130)
            }),
            130 => Some(stream(30)),
            // a datagram socket connected outside (CRIU carries those by name)
            40 => Some(UnixSocket {
                kind: libc::SOCK_DGRAM,
                ..stream(140)
            }),
            _ => None,
        }
    }

    fn journald() -> HashMap<u64, JournalStream> {
        HashMap::from([(
            110,
            JournalStream {
                identifier: "svc".into(),
                unit: "svc.service".into(),
                priority: 6,
                ..JournalStream::default()
            },
        )])
    }

    #[test]
    fn streams_to_journald_are_carried_once_each() {
        let tree = [
            held(7, 1, 10),
            held(7, 2, 10),
            held(8, 1, 10),
            held(7, 5, 20),
            held(8, 6, 21),
            held(7, 9, 40),
        ];
        let streams = classify("unit:svc.service", &tree, table, &journald(), |_, _| {
            Vec::new()
        })
        .unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].inode, 10);
        assert_eq!(streams[0].unit, "svc.service");
    }

    #[test]
    fn any_other_half_connection_is_refused_naming_both_ends() {
        let tree = [held(7, 1, 10), held(7, 12, 30)];
        let err = classify("unit:svc.service", &tree, table, &journald(), |inode, _| {
            assert_eq!(inode, 130);
            vec!["pid 99 (client)".into()]
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unit:svc.service: pid 7 (svc) holds fd 12, a unix stream connection whose other \
             end is pid 99 (client), outside the tree: CRIU cannot checkpoint half of a stream \
             connection (only streams to journald are carried)"
        );
    }
}
