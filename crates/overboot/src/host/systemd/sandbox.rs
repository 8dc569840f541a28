//! Which of a unit's sandboxing settings give its processes namespaces of their own, read from
//! the running systemd (`systemctl show`), so that a refusal names the unit's own settings
//! rather than asking the operator to weaken them.

use std::process::Command;

/// The settings that make a namespace, with the namespace kinds (as `/proc/PID/ns` names them)
/// each one makes, and the value that means "off".
const SETTINGS: &[(&str, &[&str], &str)] = &[
    ("PrivateUsers", &["user"], "no"),
    ("PrivateTmp", &["mnt"], "no"),
    ("PrivateDevices", &["mnt"], "no"),
    ("PrivateMounts", &["mnt"], "no"),
    ("ProtectSystem", &["mnt"], "no"),
    ("ProtectHome", &["mnt"], "no"),
    ("ProtectKernelTunables", &["mnt"], "no"),
    ("ProtectKernelModules", &["mnt"], "no"),
    ("ProtectKernelLogs", &["mnt"], "no"),
    ("ProtectControlGroups", &["mnt"], "no"),
    ("ProtectProc", &["mnt"], "default"),
    ("ProtectHostname", &["uts"], "no"),
    ("PrivateNetwork", &["net"], "no"),
    ("PrivateIPC", &["ipc"], "no"),
];

/// The unit's settings that make any of the namespace kinds in `kinds`, as `Name=value`, from
/// `systemctl show` output (`Name=value` lines).
pub fn settings_making(show: &str, kinds: &[&str]) -> Vec<String> {
    show.lines()
        .filter_map(|line| line.split_once('='))
        .filter_map(|(name, value)| {
            let (_, makes, off) = SETTINGS.iter().find(|(n, _, _)| *n == name)?;
            let on = !value.is_empty() && value != *off;
            (on && makes.iter().any(|k| kinds.contains(k))).then(|| format!("{name}={value}"))
        })
        .collect()
}

/// [`settings_making`] for a running unit; empty when systemd does not answer.
pub fn unit_settings_making(unit: &str, kinds: &[&str]) -> Vec<String> {
    let names: Vec<&str> = SETTINGS.iter().map(|(n, _, _)| *n).collect();
    let Ok(out) = Command::new("systemctl")
        .args(["show", "-p", &names.join(","), unit])
        .output()
    else {
        return Vec::new();
    };
    settings_making(&String::from_utf8_lossy(&out.stdout), kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_that_make_each_namespace_are_named() {
        // Debian 13's redis-server.service, as `systemctl show` prints it.
        let show = "PrivateUsers=yes\nPrivateTmp=yes\nPrivateDevices=yes\nPrivateMounts=no\n\
                    ProtectSystem=strict\nProtectHome=yes\nProtectProc=invisible\n\
                    ProtectHostname=yes\nPrivateNetwork=no\nPrivateIPC=no\nProtectKernelLogs=no\n";
        assert_eq!(settings_making(show, &["user"]), ["PrivateUsers=yes"]);
        assert_eq!(settings_making(show, &["uts"]), ["ProtectHostname=yes"]);
        assert_eq!(
            settings_making(show, &["mnt"]),
            [
                "PrivateTmp=yes",
                "PrivateDevices=yes",
                "ProtectSystem=strict",
                "ProtectHome=yes",
                "ProtectProc=invisible"
            ]
        );
        assert!(settings_making(show, &["net", "ipc"]).is_empty());
        assert!(settings_making("", &["mnt"]).is_empty());
    }
}
