//! The kernel's table of unix sockets (`NETLINK_SOCK_DIAG`, `unix_diag`): each socket's type,
//! state, peer and name, by inode. The inspection reads it to tell a tree's stream connections
//! whose other end lives outside the tree (which CRIU cannot checkpoint) from those it holds
//! both ends of, and to recognise a unit's stream to journald.
//!
//! `/proc/net/unix` has no peers; `ss -x` reads the same netlink dump this module does, one
//! request answered by as many messages as there are sockets, ended by `NLMSG_DONE`.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use nix::sys::socket::{recv, send, MsgFlags, SockProtocol};

/// Errors reading the unix socket table.
#[derive(Debug, thiserror::Error)]
pub enum UnixDiagError {
    /// The netlink socket could not be opened or used.
    #[error("sock_diag netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel refused the dump (e.g. no `unix_diag` module).
    #[error("the kernel refused the unix socket dump")]
    Refused(#[source] std::io::Error),
}

/// A unix socket as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: i32,
    /// TCP-like state: 1 established, 10 listening, 7 closed.
    pub state: u8,
    /// Inode of the connected peer; 0 when none.
    pub peer: u64,
    /// Bound (or, for an accepted socket, its listener's) path; empty when unnamed; an
    /// abstract name starts with `@`.
    pub name: String,
}

impl UnixSocket {
    /// A connection-oriented socket (stream or seqpacket) with a peer.
    pub fn connected_stream(&self) -> bool {
        self.kind != libc::SOCK_DGRAM && self.peer != 0
    }
}

const NLMSG_HDRLEN: usize = 16;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;

/// The dump request: every state, names and peers.
fn request() -> Vec<u8> {
    const LEN: u32 = 16 + 24;
    let mut buf = Vec::with_capacity(LEN as usize);
    buf.extend_from_slice(&LEN.to_ne_bytes());
    buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).expect("netlink flags");
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                // struct unix_diag_req
    buf.push(u8::try_from(libc::AF_UNIX).expect("AF_UNIX"));
    buf.push(0); // protocol
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    buf.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    buf.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    buf.extend_from_slice(&[0u8; 8]); // cookie
    buf
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What one answer datagram says: the sockets in it, and whether the dump is over (`Err` when
/// the kernel answered with an error).
fn parse(datagram: &[u8], into: &mut HashMap<u64, UnixSocket>) -> Result<bool, i32> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let (Some(len), Some(kind)) = (u32_at(datagram, at), u16_at(datagram, at + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            break;
        }
        let body = &datagram[at + NLMSG_HDRLEN..at + len];
        match kind as i32 {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(libc::EIO, |b| -i32::from_ne_bytes(b));
                return if errno == 0 { Ok(true) } else { Err(errno) };
            }
            _ if kind == SOCK_DIAG_BY_FAMILY && body.len() >= 16 => {
                let (ino, socket) = parse_socket(body);
                into.insert(ino, socket);
            }
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    Ok(false)
}

/// One `unix_diag_msg` and its attributes.
fn parse_socket(body: &[u8]) -> (u64, UnixSocket) {
    let ino = u64::from(u32_at(body, 4).unwrap_or(0));
    let mut socket = UnixSocket {
        kind: i32::from(body[1]),
        state: body[2],
        peer: 0,
        name: String::new(),
    };
    let mut at = 16;
    while at + 4 <= body.len() {
        let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 || at + len > body.len() {
            break;
        }
        let data = &body[at + 4..at + len];
        match kind {
            UNIX_DIAG_PEER => socket.peer = u64::from(u32_at(data, 0).unwrap_or(0)),
            UNIX_DIAG_NAME => socket.name = socket_name(data),
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    (ino, socket)
}

/// A `sun_path` as `ss` prints it: up to its NUL, or `@` and the rest for an abstract name.
fn socket_name(data: &[u8]) -> String {
    match data.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => {
            let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
            String::from_utf8_lossy(&data[..end]).into_owned()
        }
    }
}

/// Every unix socket of this network namespace, by inode.
pub fn unix_sockets() -> Result<HashMap<u64, UnixSocket>, UnixDiagError> {
    let fd = crate::host::rtnl::netlink_socket(SockProtocol::NetlinkSockDiag)
        .map_err(UnixDiagError::Socket)?;
    send(fd.as_raw_fd(), &request(), MsgFlags::empty())
        .map_err(|e| UnixDiagError::Socket(e.into()))?;
    let mut sockets = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(|e| UnixDiagError::Socket(e.into()))?;
        if n == 0 {
            return Ok(sockets);
        }
        match parse(&buf[..n], &mut sockets) {
            Ok(true) => return Ok(sockets),
            Ok(false) => {}
            Err(errno) => {
                return Err(UnixDiagError::Refused(std::io::Error::from_raw_os_error(
                    errno,
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn inode(fd: &impl AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        crate::host::network::socket_inode(&link.to_string_lossy()).unwrap()
    }

    #[test]
    fn the_request_asks_for_every_unix_socket_with_names_and_peers() {
        let r = request();
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), Some(40));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(i32::from(r[16]), libc::AF_UNIX);
        assert_eq!(u32_at(&r, 20), Some(u32::MAX));
        assert_eq!(u32_at(&r, 28), Some(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER));
    }

    #[test]
    fn names_are_cut_at_their_nul_and_abstract_ones_marked() {
        assert_eq!(socket_name(b"/run/x\0\0"), "/run/x");
        assert_eq!(socket_name(b"\0hidden"), "@hidden");
        assert_eq!(socket_name(b""), "");
    }

    #[test]
    fn an_error_answer_ends_the_dump_with_its_errno() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&u16::try_from(libc::NLMSG_ERROR).unwrap().to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse(&msg, &mut HashMap::new()), Err(libc::ENOENT));
    }

    #[test]
    fn a_connection_shows_both_ends_as_each_others_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listener");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let sockets = unix_sockets().expect("the unix socket table");
        let (c, s) = (inode(&client), inode(&server));
        assert_eq!(sockets[&c].peer, s);
        assert_eq!(sockets[&s].peer, c);
        assert!(sockets[&c].connected_stream());
        assert_eq!(sockets[&s].name, path.to_string_lossy());
        assert_eq!(sockets[&inode(&listener)].state, 10);
    }
}
