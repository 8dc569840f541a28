//! The few rtnetlink requests the agent sends to put the carried interface configuration back:
//! add an address, bring a link up, add a route. One netlink socket, one request and its
//! acknowledgement at a time; the kernel answers each before `send` returns to us, so there is
//! nothing to wait for but the answer.
//!
//! Each used to be an `ip` process: 20–45 ms each in the lab's TCG guests, four of them in
//! every blackout, against well under a millisecond for a message. It also spares the new
//! kernel's early userspace an `ip` binary, and gives each failure its errno.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

/// Errors of an rtnetlink request.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The netlink socket could not be opened or used.
    #[error("rtnetlink socket")]
    Socket(#[source] std::io::Error),
    /// The interface does not exist in this kernel.
    #[error("no interface named {0}")]
    NoInterface(String),
    /// The kernel refused the request.
    #[error("{request}: {source}")]
    Refused {
        /// The request, worded like the `ip` command that does the same.
        request: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer was not an acknowledgement of our request.
    #[error("{request}: unexpected answer from the kernel")]
    BadAnswer { request: String },
}

const NLMSG_HDRLEN: usize = 16;

/// An rtnetlink request under construction: header, fixed part, attributes.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Message {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        let flags = flags | nl_flag(libc::NLM_F_REQUEST) | nl_flag(libc::NLM_F_ACK);
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        Message { buf }
    }

    fn bytes(&mut self, data: &[u8]) -> &mut Message {
        self.buf.extend_from_slice(data);
        self
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Message {
        let len = u16::try_from(4 + data.len()).expect("attribute under 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("message under 4 GiB");
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn nl_flag(flag: libc::c_int) -> u16 {
    u16::try_from(flag).expect("netlink flags fit 16 bits")
}

fn family(addr: &IpAddr) -> u8 {
    let family = match addr {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    u8::try_from(family).expect("address families fit a byte")
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `RTM_NEWADDR`: `addr/prefix` on interface `index` (created, never replaced).
fn new_address(seq: u32, index: u32, addr: &IpAddr, prefix: u8) -> Vec<u8> {
    let mut m = Message::new(
        libc::RTM_NEWADDR,
        nl_flag(libc::NLM_F_CREATE) | nl_flag(libc::NLM_F_EXCL),
        seq,
    );
    // struct ifaddrmsg: family, prefix length, flags, scope (universe), interface index.
    m.bytes(&[family(addr), prefix, 0, libc::RT_SCOPE_UNIVERSE])
        .bytes(&index.to_ne_bytes());
    let bytes = octets(addr);
    m.attr(libc::IFA_LOCAL, &bytes)
        .attr(libc::IFA_ADDRESS, &bytes);
    m.finish()
}

/// `RTM_NEWLINK`: interface `index` up (only `IFF_UP` changes).
fn link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut m = Message::new(libc::RTM_NEWLINK, 0, seq);
    let up = u32::try_from(libc::IFF_UP).expect("IFF_UP is positive");
    // struct ifinfomsg: family (unspecified), padding, device type, index, flags, change mask.
    m.bytes(&[u8::try_from(libc::AF_UNSPEC).expect("AF_UNSPEC is 0"), 0])
        .bytes(&0u16.to_ne_bytes())
        .bytes(&index.to_ne_bytes())
        .bytes(&up.to_ne_bytes())
        .bytes(&up.to_ne_bytes());
    m.finish()
}

/// `RTM_NEWROUTE`: `destination/prefix` in the main table, through `gateway` when given, out of
/// interface `index`: what `ip route add` sends (protocol `boot`).
fn new_route(
    seq: u32,
    destination: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    index: u32,
) -> Vec<u8> {
    let mut m = Message::new(
        libc::RTM_NEWROUTE,
        nl_flag(libc::NLM_F_CREATE) | nl_flag(libc::NLM_F_EXCL),
        seq,
    );
    // A route with no gateway reaches its destination on the link itself.
    let scope = if gateway.is_some() {
        libc::RT_SCOPE_UNIVERSE
    } else {
        libc::RT_SCOPE_LINK
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    m.bytes(&[
        u8::try_from(libc::AF_INET).expect("AF_INET fits a byte"),
        prefix,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        scope,
        libc::RTN_UNICAST,
    ])
    .bytes(&0u32.to_ne_bytes());
    if prefix > 0 {
        m.attr(libc::RTA_DST, &destination.octets());
    }
    if let Some(gateway) = gateway {
        m.attr(libc::RTA_GATEWAY, &gateway.octets());
    }
    m.attr(libc::RTA_OIF, &index.to_ne_bytes());
    m.finish()
}

/// The errno of the acknowledgement of request `seq` in `answer` (0: done), or `None` when the
/// answer is not one.
fn ack_errno(answer: &[u8], seq: u32) -> Option<i32> {
    let u32_at = |at: usize| {
        answer
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("four bytes")))
    };
    let len = usize::try_from(u32_at(0)?).ok()?;
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    // struct nlmsgerr: a negative errno (0 for an acknowledgement), then our request's header.
    if kind != u16::try_from(libc::NLMSG_ERROR).ok()?
        || len < NLMSG_HDRLEN + 4 + NLMSG_HDRLEN
        || len > answer.len()
        || u32_at(8)? != seq
    {
        return None;
    }
    let error = i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?);
    Some(-error)
}

/// A netlink socket of `protocol` in the calling thread's network namespace, bound for the
/// kernel's answers (rtnetlink here, `sock_diag` in [`super::unix_diag`]).
pub fn netlink_socket(protocol: SockProtocol) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, RtnlError> {
        let fd = netlink_socket(SockProtocol::NetlinkRoute).map_err(RtnlError::Socket)?;
        Ok(Rtnl { fd, seq: 0 })
    }

    /// The index of interface `name`.
    pub fn index(name: &str) -> Result<u32, RtnlError> {
        nix::net::if_::if_nametoindex(name).map_err(|_| RtnlError::NoInterface(name.to_string()))
    }

    fn request(
        &mut self,
        build: impl FnOnce(u32) -> Vec<u8>,
        request: impl FnOnce() -> String,
    ) -> Result<i32, RtnlError> {
        self.seq += 1;
        let message = build(self.seq);
        send(self.fd.as_raw_fd(), &message, MsgFlags::empty())
            .map_err(|e| RtnlError::Socket(e.into()))?;
        let mut answer = [0u8; 1024];
        let n = recv(self.fd.as_raw_fd(), &mut answer, MsgFlags::empty())
            .map_err(|e| RtnlError::Socket(e.into()))?;
        // Only our own request is in flight, on a socket of our own that joined no group:
        // anything else is not an answer to it.
        ack_errno(&answer[..n], self.seq).ok_or_else(|| RtnlError::BadAnswer { request: request() })
    }

    fn check(errno: i32, request: impl FnOnce() -> String) -> Result<(), RtnlError> {
        match errno {
            0 => Ok(()),
            errno => Err(RtnlError::Refused {
                request: request(),
                source: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }

    /// Adds `addr/prefix` to interface `name`. The same address already there is what was asked
    /// for: an early userspace may have configured it (e.g. `ip=` on the command line).
    pub fn add_address(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), RtnlError> {
        let index = Rtnl::index(name)?;
        let what = || format!("ip addr add {addr}/{prefix} dev {name}");
        let errno = self.request(|seq| new_address(seq, index, &addr, prefix), what)?;
        if errno == libc::EEXIST {
            tracing::info!(%addr, prefix, interface = name, "address already configured");
            return Ok(());
        }
        Rtnl::check(errno, what)
    }

    /// Brings interface `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), RtnlError> {
        let index = Rtnl::index(name)?;
        let what = || format!("ip link set {name} up");
        let errno = self.request(|seq| link_up(seq, index), what)?;
        Rtnl::check(errno, what)
    }

    /// Adds the IPv4 route `destination/prefix` [via `gateway`] out of interface `name`. A route
    /// to the same destination already there is an error: it may lead elsewhere.
    pub fn add_route(
        &mut self,
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        name: &str,
    ) -> Result<(), RtnlError> {
        let index = Rtnl::index(name)?;
        let what = || {
            let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            format!("ip route add {destination}/{prefix}{via} dev {name}")
        };
        let errno = self.request(
            |seq| new_route(seq, destination, prefix, gateway, index),
            what,
        )?;
        Rtnl::check(errno, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn an_address_request_carries_the_address_twice_and_asks_for_an_ack() {
        let m = new_address(7, 3, &"10.0.2.15".parse().unwrap(), 24);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWADDR);
        let flags = u16_at(&m, 6);
        for flag in [
            libc::NLM_F_REQUEST,
            libc::NLM_F_ACK,
            libc::NLM_F_CREATE,
            libc::NLM_F_EXCL,
        ] {
            assert_ne!(flags & nl_flag(flag), 0, "flag {flag:#x}");
        }
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(
            &m[16..20],
            &[family(&"10.0.2.15".parse().unwrap()), 24, 0, 0]
        );
        assert_eq!(u32_at(&m, 20), 3);
        assert_eq!(u16_at(&m, 26), libc::IFA_LOCAL);
        assert_eq!(&m[28..32], &[10, 0, 2, 15]);
        assert_eq!(u16_at(&m, 34), libc::IFA_ADDRESS);
        assert_eq!(&m[36..40], &[10, 0, 2, 15]);
    }

    #[test]
    fn a_default_route_has_no_destination_attribute() {
        let m = new_route(
            1,
            Ipv4Addr::UNSPECIFIED,
            0,
            Some(Ipv4Addr::new(10, 0, 2, 2)),
            2,
        );
        // header, rtmsg, gateway, output interface
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(m[16 + 1], 0, "dst_len");
        assert_eq!(m[16 + 6], libc::RT_SCOPE_UNIVERSE);
        assert_eq!(u16_at(&m, 30), libc::RTA_GATEWAY);
        assert_eq!(u16_at(&m, 38), libc::RTA_OIF);
        assert_eq!(u32_at(&m, 40), 2);
    }

    #[test]
    fn only_the_ack_of_our_request_counts() {
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&u16::try_from(libc::NLMSG_ERROR).unwrap().to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&5u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        assert_eq!(ack_errno(&ack, 5), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack, 6), None, "another request's answer");
        assert_eq!(ack_errno(&ack[..20], 5), None, "truncated");
    }

    /// The real kernel, in a network namespace of this test's own thread: the configuration
    /// the agent applies is there afterwards, and a refusal names the request and its errno.
    #[test]
    fn the_kernel_takes_the_configuration() {
        std::thread::spawn(|| {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                // Unprivileged runs cannot make one; CI runs as root and does.
                assert!(
                    !nix::unistd::geteuid().is_root(),
                    "root could not make a network namespace: {e}"
                );
                return;
            }
            let mut rtnl = Rtnl::open().unwrap();
            rtnl.add_address("lo", "10.9.8.7".parse().unwrap(), 24)
                .unwrap();
            rtnl.add_address("lo", "10.9.8.7".parse().unwrap(), 24)
                .expect("the same address again is already done");
            rtnl.add_address("lo", "fd00::7".parse().unwrap(), 64)
                .unwrap();
            rtnl.set_up("lo").unwrap();
            rtnl.add_route(Ipv4Addr::new(10, 100, 0, 0), 16, None, "lo")
                .unwrap();
            rtnl.add_route(
                Ipv4Addr::new(10, 200, 0, 0),
                16,
                Some(Ipv4Addr::new(10, 100, 0, 1)),
                "lo",
            )
            .unwrap();
            let again = rtnl
                .add_route(Ipv4Addr::new(10, 100, 0, 0), 16, None, "lo")
                .unwrap_err();
            assert!(
                matches!(&again, RtnlError::Refused { source, .. } if source.raw_os_error() == Some(libc::EEXIST)),
                "{again:?}"
            );
            assert_eq!(
                again.to_string(),
                "ip route add 10.100.0.0/16 dev lo: File exists (os error 17)"
            );
            assert!(matches!(
                rtnl.set_up("eth9"),
                Err(RtnlError::NoInterface(name)) if name == "eth9"
            ));

            // The link-scoped route went in, so `lo` is up: the kernel refuses one through a
            // link that is down.
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(
                routes.lines().any(|l| l.starts_with("lo\t0000C80A\t0100640A\t0003")),
                "{routes}"
            );
            let addresses: Vec<String> = nix::ifaddrs::getifaddrs()
                .unwrap()
                .filter(|a| a.interface_name == "lo")
                .filter_map(|a| a.address.map(|s| s.to_string()))
                .collect();
            assert!(
                addresses.iter().any(|a| a.starts_with("10.9.8.7")),
                "{addresses:?}"
            );
            assert!(
                addresses.iter().any(|a| a.contains("fd00::7")),
                "{addresses:?}"
            );
        })
        .join()
        .unwrap();
    }
}
