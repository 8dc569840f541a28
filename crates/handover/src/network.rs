//! The manifest's network section: what the new kernel re-applies before the preserved
//! sockets come back (interfaces, addresses, routes) and the lock tables that keep peers from
//! seeing a reset. Typed and versioned: a map whose section is newer than this build is refused
//! by [`crate::Manifest::validate`] before anything is restored.
//!
//! ```text
//! network: { version: 1, locked, interfaces: [{name, addresses: [{addr, prefix}]}],
//!            routes: [{destination, prefix, gateway, device}], tables: [{family, name, rules}] }
//! ```

use std::net::IpAddr;

/// The network section's version this build writes and reads.
pub const NETWORK_VERSION: u32 = 1;

fn first_version() -> u32 {
    1
}

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Address {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// An interface the preserved sockets may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interface {
    /// Its name (e.g. `eth0`); the new kernel must name it the same.
    pub name: String,
    /// Its addresses.
    pub addresses: Vec<Address>,
}

/// An IPv4 route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// Destination network.
    pub destination: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway, if any.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Output interface.
    pub device: String,
}

/// An nftables table carried as text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NftTable {
    /// Family (`inet`, `ip`, ...).
    pub family: String,
    /// Name.
    pub name: String,
    /// `nft -s list table` output, loadable with `nft -f`.
    pub rules: String,
}

/// What the Save State Map carries about the network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkState {
    /// The section's version ([`NETWORK_VERSION`]); maps written before it was versioned read
    /// as version 1, which is the same layout.
    #[serde(default = "first_version")]
    pub version: u32,
    /// Whether the network lock is in force (off only in tests proving it matters).
    pub locked: bool,
    /// Interfaces (not loopback) with their addresses.
    pub interfaces: Vec<Interface>,
    /// IPv4 routes.
    pub routes: Vec<Route>,
    /// Lock tables to load before the interfaces come up.
    pub tables: Vec<NftTable>,
}

impl Default for NetworkState {
    fn default() -> NetworkState {
        NetworkState {
            version: NETWORK_VERSION,
            locked: false,
            interfaces: Vec::new(),
            routes: Vec::new(),
            tables: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_written_before_versions_reads_as_version_1() {
        let old = r#"{"locked":true,"interfaces":[{"name":"eth0","addresses":[{"addr":"10.0.2.15","prefix":24}]}],
            "routes":[{"destination":"0.0.0.0","prefix":0,"gateway":"10.0.2.2","device":"eth0"}],
            "tables":[{"family":"inet","name":"CRIU-7","rules":"table inet CRIU-7 {}"}]}"#;
        let state: NetworkState = serde_json::from_str(old).unwrap();
        assert_eq!(state.version, 1);
        assert!(state.locked);
        assert_eq!(state.interfaces[0].name, "eth0");
        assert_eq!(
            state.routes[0].gateway,
            Some(std::net::Ipv4Addr::new(10, 0, 2, 2))
        );
        assert_eq!(state.tables[0].name, "CRIU-7");
        let again: NetworkState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(again, state);
    }
}
