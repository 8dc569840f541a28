//! Shutdown inhibitors (`systemd-inhibit --what=shutdown --mode=block`, or a program's own
//! logind lock): an update ends every service it does not carry as a shutdown would, so a
//! block-mode shutdown inhibitor makes `update` refuse unless the operator says
//! `--ignore-inhibitors`. Read from logind (`ListInhibitors`) through `busctl`.

use std::process::Command;

/// A block-mode shutdown inhibitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibitor {
    /// Who holds it.
    pub who: String,
    /// Why.
    pub why: String,
    /// Its process.
    pub pid: u64,
}

impl std::fmt::Display for Inhibitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}): {}", self.who, self.pid, self.why)
    }
}

/// The block-mode shutdown inhibitors in `busctl --json=short` output of logind's
/// `ListInhibitors` (`a(ssssuu)`: what, who, why, mode, uid, pid).
pub fn parse(json: &str) -> Result<Vec<Inhibitor>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ListInhibitors answer: {e}"))?;
    let rows = value["data"][0]
        .as_array()
        .ok_or_else(|| format!("ListInhibitors answer without data: {json}"))?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let what = row[0].as_str()?;
            let mode = row[3].as_str()?;
            (mode == "block" && what.split(':').any(|w| w == "shutdown")).then(|| Inhibitor {
                who: row[1].as_str().unwrap_or_default().to_string(),
                why: row[2].as_str().unwrap_or_default().to_string(),
                pid: row[5].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

/// The system bus's socket: without it no logind answers, and none can hold an inhibitor.
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// The block-mode shutdown inhibitors logind holds now (none on a host without a system bus:
/// logind needs one, and there is nothing to warn about).
pub fn shutdown_blockers() -> Result<Vec<Inhibitor>, String> {
    if !std::path::Path::new(SYSTEM_BUS).exists() {
        tracing::debug!(
            socket = SYSTEM_BUS,
            "no system bus: no logind, no inhibitor"
        );
        return Ok(Vec::new());
    }
    let out = Command::new("busctl")
        .args([
            "--json=short",
            "call",
            "org.freedesktop.login1",
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "ListInhibitors",
        ])
        .output()
        .map_err(|e| format!("busctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "busctl call ListInhibitors: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_block_mode_shutdown_inhibitors_count() {
        let json = r#"{"type":"a(ssssuu)","data":[[
            ["shutdown:sleep","lab","writing the ledger","block",0,4242],
            ["sleep","ModemManager","ModemManager needs to reset devices","delay",0,517],
            ["shutdown","unattended-upgrades","Stop ongoing upgrades","delay",0,600],
            ["handle-power-key","systemd-logind","keys","block",0,300]
        ]]}"#;
        let found = parse(json).unwrap();
        assert_eq!(
            found,
            [Inhibitor {
                who: "lab".into(),
                why: "writing the ledger".into(),
                pid: 4242
            }]
        );
        assert_eq!(found[0].to_string(), "lab (pid 4242): writing the ledger");
        assert!(parse(r#"{"type":"a(ssssuu)","data":[[]]}"#)
            .unwrap()
            .is_empty());
        assert!(parse("not json").is_err());
    }
}
