//! One message per packet over a `SOCK_SEQPACKET` socket: how we talk to `criu swrk`.
//!
//! The transport owns our end of the socket pair and knows nothing about processes, so the same
//! code runs against a real CRIU (see [`crate::criu`]) and against a fake peer thread in tests.
//! CRIU reads each request with `recv(MSG_PEEK | MSG_TRUNC)` to learn its size, so there is no
//! size limit either way; we do the same for its answers. CRIU attaches an fd (`SCM_RIGHTS`) only
//! to the `orphan-pts-master` notification, which we do not request: any fd that arrives is
//! closed at once so none leaks.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, recvmsg, send, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeVal;
use prost::Message;

use crate::rpc::{CriuReq, CriuReqType, CriuResp};

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// `send` failed; `EPIPE` means the peer is gone.
    #[error("cannot send a request to criu")]
    Send(#[source] Errno),
    /// `recv` failed.
    #[error("cannot receive criu's answer")]
    Recv(#[source] Errno),
    /// The peer closed its end without answering.
    #[error("criu closed the connection without answering")]
    Closed,
    /// No answer within the configured time.
    #[error("no answer from criu within {0:?}")]
    TimedOut(Duration),
    /// The packet is not a `criu_resp`.
    #[error("cannot decode criu's answer")]
    Decode(#[source] prost::DecodeError),
    /// A well-formed answer of the wrong type.
    #[error("expected a {expected:?} answer from criu, got type {got}")]
    Unexpected {
        /// The type we waited for.
        expected: CriuReqType,
        /// The raw type number CRIU sent.
        got: i32,
    },
    /// A successful answer without the part it must carry.
    #[error("criu's answer lacks its {0} part")]
    MissingField(&'static str),
    /// The timeout could not be set on the socket.
    #[error("cannot set the receive timeout")]
    Timeout(#[source] Errno),
}

impl ProtocolError {
    /// True when the error means the peer went away (criu exited or crashed).
    pub fn is_peer_gone(&self) -> bool {
        matches!(
            self,
            Self::Closed
                | Self::Send(Errno::EPIPE | Errno::ECONNRESET)
                | Self::Recv(Errno::ECONNRESET)
        )
    }
}

/// Our end of a `SOCK_SEQPACKET` socket pair with CRIU (or a stand-in) on the other end.
#[derive(Debug)]
pub struct Transport {
    sock: OwnedFd,
    timeout: Option<Duration>,
}

impl Transport {
    /// Wraps a connected `SOCK_SEQPACKET` socket.
    pub fn new(sock: OwnedFd) -> Self {
        Self {
            sock,
            timeout: None,
        }
    }

    /// Fails a `recv` that waits longer than `timeout` with [`ProtocolError::TimedOut`].
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ProtocolError> {
        let tv = match timeout {
            Some(t) => TimeVal::new(
                i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                i64::from(t.subsec_micros()),
            ),
            None => TimeVal::new(0, 0),
        };
        setsockopt(&self.sock, sockopt::ReceiveTimeout, &tv).map_err(ProtocolError::Timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends one request as one packet. Never raises `SIGPIPE`.
    pub fn send(&self, req: &CriuReq) -> Result<(), ProtocolError> {
        let buf = req.encode_to_vec();
        loop {
            match send(self.sock.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ProtocolError::Send(e)),
            }
        }
    }

    /// Receives one response (one packet).
    pub fn recv(&self) -> Result<CriuResp, ProtocolError> {
        let len = self.retry(|fd| recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC))?;
        if len == 0 {
            // CRIU never sends an empty packet: a response always carries `type` and `success`.
            return Err(ProtocolError::Closed);
        }
        let mut buf = vec![0u8; len];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let got = self.retry(|fd| {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
            for c in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        tracing::debug!(fd, "closing an fd criu passed us");
                        let _ = nix::unistd::close(fd);
                    }
                }
            }
            Ok(msg.bytes)
        })?;
        if got == 0 {
            return Err(ProtocolError::Closed);
        }
        CriuResp::decode(&buf[..got]).map_err(ProtocolError::Decode)
    }

    fn retry<T>(&self, mut op: impl FnMut(i32) -> nix::Result<T>) -> Result<T, ProtocolError> {
        loop {
            match op(self.sock.as_fd().as_raw_fd()) {
                Ok(v) => return Ok(v),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(ProtocolError::TimedOut(self.timeout.unwrap_or_default()))
                }
                Err(e) => return Err(ProtocolError::Recv(e)),
            }
        }
    }
}
