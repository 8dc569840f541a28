//! The network side of an update: what preserved TCP sockets need so that peers see a pause,
//! never a reset, and lose no byte.
//!
//! ```text
//!  old kernel                                        new kernel (agent, before restore)
//!  block SYNs to preserved listeners (nft table)     load the carried nft tables (locks)
//!  CRIU dump: locks each connection (nft CRIU-<pid>) bring eth* up, addresses, routes
//!  capture: addresses, routes, every lock table ───► CRIU restore (TCP_REPAIR), then CRIU
//!                                                    deletes its lock; we drop the SYN block
//! ```
//!
//! CRIU's lock for tasks in the root network namespace exists only in the old kernel's
//! nftables; it is carried as `nft -s list table` text and loaded before the interface comes
//! up. New connections to a preserved listener are refused silently (SYN dropped, the client
//! retries) from before the dump until after the restore: a connection accepted into the
//! backlog meanwhile would be lost, since CRIU keeps no backlog.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

pub use overboot_handover::network::{Address, Interface, NetworkState, NftTable, Route};

/// Name of our table blocking new connections to preserved listeners.
pub const SYN_BLOCK_TABLE: &str = "overboot-syn-block";

/// Errors of the network side.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A tool failed.
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    /// The kernel refused an interface, address or route.
    #[error("network configuration")]
    Rtnl(#[from] crate::host::rtnl::RtnlError),
    /// A tool could not be run.
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let started = std::time::Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetworkError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    tracing::debug!(%command, ms = started.elapsed().as_millis(), "ran");
    if !out.status.success() {
        return Err(NetworkError::Tool {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// TCP sockets of the system by inode: (local port, state), from `/proc/net/tcp{,6}`.
pub fn tcp_sockets() -> BTreeMap<u64, (u16, TcpState)> {
    let mut map = BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        map.extend(parse_tcp_table(&text));
    }
    map
}

/// The rows of one `/proc/net/tcp` or `tcp6` table: inode → (local port, state).
pub fn parse_tcp_table(text: &str) -> impl Iterator<Item = (u64, (u16, TcpState))> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        let state = TcpState::from_code(u8::from_str_radix(state, 16).ok()?);
        Some((inode.parse().ok()?, (port, state)))
    })
}

/// The socket inode a `/proc/<pid>/fd/<n>` link names (`socket:[12345]`).
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The TCP states we distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// ESTABLISHED.
    Established,
    /// LISTEN.
    Listen,
    /// Anything else (closing, time-wait, ...).
    Other,
}

impl TcpState {
    /// From the kernel's state number (`/proc/net/tcp`'s `st`, `TCP_INFO`'s `tcpi_state`).
    pub fn from_code(code: u8) -> TcpState {
        match code {
            0x01 => TcpState::Established,
            0x0A => TcpState::Listen,
            _ => TcpState::Other,
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "tcp-established",
            TcpState::Listen => "tcp-listen",
            TcpState::Other => "tcp-other",
        }
    }
}

/// Drops new connections (SYN without ACK) to these ports until [`unblock_new_connections`].
pub fn block_new_connections(ports: &BTreeSet<u16>) -> Result<(), NetworkError> {
    if ports.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let rules = format!(
        "table inet {SYN_BLOCK_TABLE} {{\n  chain input {{\n    type filter hook input priority -160; policy accept;\n    tcp dport {{ {} }} tcp flags & (syn | ack) == syn drop\n  }}\n}}\n",
        list.join(", ")
    );
    run("nft", &["-f", "-"], Some(&rules)).map(drop)
}

/// Removes the SYN block (no error when it is absent).
pub fn unblock_new_connections() {
    let _ = run("nft", &["delete", "table", "inet", SYN_BLOCK_TABLE], None);
}

/// The tables to carry: CRIU's connection locks and our SYN block. One `nft -s list ruleset`
/// (this runs with the trees frozen: one process, not one per table).
pub fn lock_tables() -> Result<Vec<NftTable>, NetworkError> {
    let ruleset = run("nft", &["-s", "list", "ruleset"], None)?;
    Ok(split_tables(&ruleset)
        .into_iter()
        .filter(|t| t.name.starts_with("CRIU") || t.name == SYN_BLOCK_TABLE)
        .collect())
}

/// Cuts `nft list ruleset` output into its tables: each starts with `table FAMILY NAME {` at
/// the start of a line and ends with the first `}` alone at the start of a line after it.
fn split_tables(ruleset: &str) -> Vec<NftTable> {
    let mut tables = Vec::new();
    let mut open: Option<NftTable> = None;
    for line in ruleset.lines() {
        if let Some(table) = open.as_mut() {
            table.rules.push_str(line);
            table.rules.push('\n');
            if line.trim_end() == "}" {
                tables.extend(open.take());
            }
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some("table"), Some(family), Some(name), Some("{")) =
            (words.next(), words.next(), words.next(), words.next())
        {
            open = Some(NftTable {
                family: family.into(),
                name: name.into(),
                rules: format!("{line}\n"),
            });
        }
    }
    tables
}

/// Addresses of every interface but loopback, and the IPv4 routes.
pub fn capture_addresses() -> (Vec<Interface>, Vec<Route>) {
    let mut by_name: BTreeMap<String, Vec<Address>> = BTreeMap::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            if ifa.interface_name == "lo" {
                continue;
            }
            let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
                continue;
            };
            let entry = by_name.entry(ifa.interface_name.clone()).or_default();
            if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                entry.push(Address {
                    addr: IpAddr::V4(a.ip()),
                    prefix: u8::try_from(m.ip().to_bits().count_ones()).unwrap_or(32),
                });
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                if !a.ip().is_unicast_link_local() {
                    entry.push(Address {
                        addr: IpAddr::V6(a.ip()),
                        prefix: u8::try_from(m.ip().to_bits().count_ones()).unwrap_or(128),
                    });
                }
            }
        }
    }
    let interfaces = by_name
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(name, addresses)| Interface { name, addresses })
        .collect();
    (
        interfaces,
        parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default()),
    )
}

/// Parses `/proc/net/route` (little-endian hex addresses).
fn parse_routes(text: &str) -> Vec<Route> {
    let ip = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| std::net::Ipv4Addr::from(v.swap_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, gw, mask) =
                (f.first()?, ip(f.get(1)?)?, ip(f.get(2)?)?, ip(f.get(7)?)?);
            // Routes the kernel derives from an address ("proto kernel") come back with it.
            let flags = u16::from_str_radix(f.get(3)?, 16).ok()?;
            let gateway = (flags & 0x2 != 0).then_some(gw);
            gateway.map(|gateway| Route {
                destination: dest,
                prefix: u8::try_from(mask.to_bits().count_ones()).unwrap_or(32),
                gateway: Some(gateway),
                device: dev.to_string(),
            })
        })
        .collect()
}

/// In the new kernel, before any restore: load the lock tables, then bring the interfaces up
/// with their addresses and routes (rtnetlink, see [`crate::host::rtnl`]).
pub fn apply(state: &NetworkState) -> Result<(), NetworkError> {
    if !state.tables.is_empty() {
        run("nft", &["-f", "-"], Some(&load_script(&state.tables)))?;
    }
    let started = std::time::Instant::now();
    let mut rtnl = crate::host::rtnl::Rtnl::open()?;
    for iface in &state.interfaces {
        for address in &iface.addresses {
            rtnl.add_address(&iface.name, address.addr, address.prefix)?;
        }
        rtnl.set_up(&iface.name)?;
    }
    for route in &state.routes {
        rtnl.add_route(
            route.destination,
            route.prefix,
            route.gateway,
            &route.device,
        )?;
    }
    tracing::debug!(
        ms = started.elapsed().as_millis(),
        "interfaces, addresses and routes back"
    );
    Ok(())
}

/// After every tree is restored: drop what is left of the locks we loaded (CRIU deletes its
/// own tables when the tasks resume) and the SYN block.
pub fn release(state: &NetworkState) {
    if !state.tables.is_empty() {
        if let Err(e) = run("nft", &["-f", "-"], Some(&release_script(&state.tables))) {
            tracing::warn!(error = %e, "could not drop the carried network locks");
        }
    }
}

/// Every carried table in one `nft -f` input: one process and one transaction, all or
/// nothing. Each `nft` run costs a process start with its libraries (0.1–0.15 s in the lab's
/// TCG guests), once per preserved tree and once more for the SYN block before.
fn load_script(tables: &[NftTable]) -> String {
    let mut script = String::new();
    for table in tables {
        script.push_str(table.rules.trim_end());
        script.push('\n');
    }
    script
}

/// Drops whatever is left of the carried tables in one transaction. CRIU has already deleted
/// its own lock tables when the tasks resumed, and a `delete` of a missing table would fail the
/// whole transaction: `add table` first makes each delete safe (it changes nothing when the
/// table exists, and creates an empty one to delete when it does not).
fn release_script(tables: &[NftTable]) -> String {
    let mut script = String::new();
    for t in tables {
        script.push_str(&format!(
            "add table {f} {n}\ndelete table {f} {n}\n",
            f = t.family,
            n = t.name
        ));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, rules: &str) -> NftTable {
        NftTable {
            family: "inet".into(),
            name: name.into(),
            rules: rules.into(),
        }
    }

    #[test]
    fn every_table_loads_in_one_transaction() {
        let tables = [
            table("CRIU-7", "table inet CRIU-7 {\n\tchain input {\n\t}\n}\n\n"),
            table(SYN_BLOCK_TABLE, "table inet overboot-syn-block {\n}"),
        ];
        assert_eq!(
            load_script(&tables),
            "table inet CRIU-7 {\n\tchain input {\n\t}\n}\ntable inet overboot-syn-block {\n}\n"
        );
    }

    #[test]
    fn a_ruleset_splits_into_its_tables() {
        let ruleset = "table inet filter {\n\tchain input {\n\t\ttype filter hook input \
                       priority 0; policy accept;\n\t}\n}\n\
                       table inet CRIU-42 {\n\tset conn0 {\n\t\ttype ipv4_addr . inet_service\n\
                       \t\telements = { 10.0.2.15 . 6379 }\n\t}\n\n\tchain output {\n\
                       \t\tip saddr . tcp sport @conn0 drop\n\t}\n}\n\
                       table inet overboot-syn-block {\n\tchain input {\n\t}\n}\n";
        let tables = split_tables(ruleset);
        let names: Vec<_> = tables
            .iter()
            .map(|t| (t.family.as_str(), t.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("inet", "filter"),
                ("inet", "CRIU-42"),
                ("inet", SYN_BLOCK_TABLE)
            ]
        );
        assert_eq!(
            tables[1].rules,
            "table inet CRIU-42 {\n\tset conn0 {\n\t\ttype ipv4_addr . inet_service\n\
             \t\telements = { 10.0.2.15 . 6379 }\n\t}\n\n\tchain output {\n\
             \t\tip saddr . tcp sport @conn0 drop\n\t}\n}\n"
        );
        assert!(split_tables("").is_empty());
    }

    #[test]
    fn release_deletes_tables_that_may_be_gone_already() {
        let tables = [table("CRIU-7", ""), table(SYN_BLOCK_TABLE, "")];
        assert_eq!(
            release_script(&tables),
            "add table inet CRIU-7\ndelete table inet CRIU-7\n\
             add table inet overboot-syn-block\ndelete table inet overboot-syn-block\n"
        );
    }

    #[test]
    fn routes_with_a_gateway_are_carried() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_routes(text);
        assert_eq!(
            routes,
            [Route {
                destination: std::net::Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                gateway: Some(std::net::Ipv4Addr::new(10, 0, 2, 2)),
                device: "eth0".into(),
            }]
        );
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000   100        0 20771 1 0000000000000000 100 0 0 10 0
   1: 0F02000A:18EB 0202000A:C4A6 01 00000000:00000000 02:000A7E5B 00000000   100        0 21841 2 0000000000000000 20 4 30 10 -1
   2: 0F02000A:18EB 0202000A:C4A8 06 00000000:00000000 03:00000A2F 00000000     0        0 0 3 0000000000000000
   3: 0F02000A:0016 0202000A:D1C0 01 00000000:00000000 02:00092C19 00000000     0        0 19001 4 0000000000000000 20 4 29 10 -1
";

    #[test]
    fn only_established_connections_are_picked() {
        // The listener (0A) and the TIME_WAIT entry (06, inode 0) are not connections to nudge.
        let established = |text: &str| -> BTreeSet<u64> {
            parse_tcp_table(text)
                .filter(|(_, (_, state))| *state == TcpState::Established)
                .map(|(inode, _)| inode)
                .collect()
        };
        assert_eq!(
            established(TCP),
            BTreeSet::from([21841, 19001]),
            "established rows by inode"
        );
        assert!(established("").is_empty());
        let rows: BTreeMap<u64, (u16, TcpState)> = parse_tcp_table(TCP).collect();
        assert_eq!(rows[&20771], (0x18EB, TcpState::Listen));
        assert_eq!(rows[&19001], (0x16, TcpState::Established));
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[21841]"), Some(21841));
        assert_eq!(socket_inode("pipe:[21841]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }
}
