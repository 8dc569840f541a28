//! Lab tests of the Debian 13 profile: a real trixie server with systemd as PID 1 boots Debian's
//! 6.12 through the distribution's initramfs, runs `redis-server.service` reachable from the
//! host, and a bare `overboot kexec` moves it to 7.3 from trixie-backports, where systemd again
//! reaches multi-user with Redis active. On the way, `--preserve unit:NAME.service` is resolved
//! against the real systemd (and refused for unknown, stopped and non-service units).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use overboot_lab::redis::{self, Reply, RespConn};
use overboot_lab::trixie::{Trixie, BOOT_TIMEOUT, CMDLINE};
use overboot_lab::Guest;

const CMD: Duration = Duration::from_secs(60);
/// `systemctl is-system-running --wait` may wait for the last start jobs under TCG.
const SETTLE: Duration = Duration::from_secs(300);

/// The guest's system state once no start job is left; `running` or the failed units.
fn settled(guest: &mut Guest) -> String {
    let state = guest
        .run("systemctl is-system-running --wait", SETTLE)
        .expect("is-system-running");
    let state = state.text().trim().to_string();
    if state != "running" {
        let failed = guest
            .run("systemctl --failed --no-legend --plain", CMD)
            .expect("systemctl --failed");
        panic!("system is {state:?}, failed units:\n{}", failed.text());
    }
    state
}

/// The unit is active according to systemd.
fn assert_active(guest: &mut Guest, unit: &str) {
    let out = guest
        .run(&format!("systemctl is-active {unit}"), CMD)
        .expect("is-active");
    assert_eq!(out.text().trim(), "active", "{unit} is not active");
}

/// Writes and reads a key through the forwarded port: the host reaches the guest's Redis.
fn redis_round_trip(addr: SocketAddr, value: &str) {
    redis::wait_ready(addr, Duration::from_secs(60)).expect("Redis answers PING from the host");
    let mut conn = RespConn::connect(addr, Duration::from_secs(10)).expect("connect");
    let set = conn
        .command(&[b"SET", b"trixie", value.as_bytes()])
        .expect("SET");
    assert_eq!(set, Reply::Status("OK".into()));
    let get = conn.command(&[b"GET", b"trixie"]).expect("GET");
    assert_eq!(get, Reply::Bulk(Some(value.as_bytes().to_vec())));
}

/// A drop-in that turns off the sandboxing of Debian's `redis-server.service` that puts Redis
/// in namespaces of its own (user, mount, uts).
const NO_NAMESPACES: &str = "[Service]\\nPrivateUsers=no\\nProtectHostname=no\\nPrivateTmp=no\\n\
    PrivateDevices=no\\nProtectSystem=no\\nProtectHome=no\\nProtectKernelTunables=no\\n\
    ProtectKernelModules=no\\nProtectKernelLogs=no\\nProtectControlGroups=no\\n\
    ProtectProc=default\\nProtectClock=no\\nReadWritePaths=\\nNoExecPaths=\\nExecPaths=\\n\
    ReadWriteDirectories=\\n";

/// `overboot plan --json` for one target; the plan and its first tree.
fn plan_one(guest: &mut Guest, kernel: &str, target: &str) -> serde_json::Value {
    let out = guest
        .run(
            &format!("overboot plan --json {kernel} --preserve {target} 2>/dev/null"),
            CMD,
        )
        .expect("plan");
    serde_json::from_str(&out.text()).unwrap_or_else(|e| panic!("plan --json: {e}: {}", out.text()))
}

/// `--preserve unit:NAME.service` against the real systemd: Debian's sandboxed Redis is refused
/// for its namespaces, naming them; without that sandboxing the unit resolves to its main
/// process; unknown, stopped and non-service units are refused by name before anything is
/// frozen (Redis keeps running).
fn unit_targets_resolve(guest: &mut Guest, new: &str) {
    let kernel = format!("--kernel /boot/vmlinuz-{new} --initrd /boot/initrd.img-{new}");
    let plan = plan_one(guest, &kernel, "unit:redis-server.service");
    let tree = &plan["trees"][0];
    assert_eq!(tree["target"], "unit:redis-server.service", "{plan:#}");
    assert_eq!(tree["ok"], false, "{plan:#}");
    let reason = tree["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("own user, mnt, uts"),
        "the refusal does not name the namespaces: {plan:#}"
    );

    guest
        .run_ok(
            &format!(
                "mkdir -p /run/systemd/system/redis-server.service.d && \
                 printf '{NO_NAMESPACES}' > /run/systemd/system/redis-server.service.d/lab.conf && \
                 systemctl daemon-reload && systemctl restart redis-server"
            ),
            CMD,
        )
        .expect("Redis without namespaces of its own");
    assert_active(guest, "redis-server");
    let main_pid = guest
        .run_ok("systemctl show -P MainPID redis-server", CMD)
        .expect("MainPID")
        .text()
        .trim()
        .to_string();
    let plan = plan_one(guest, &kernel, "unit:redis-server");
    let tree = &plan["trees"][0];
    assert_eq!(tree["ok"], true, "{plan:#}");
    assert_eq!(
        tree["tree"]["name"], "unit-redis-server.service",
        "{plan:#}"
    );
    assert_eq!(
        tree["tree"]["root"].to_string(),
        main_pid,
        "the unit's tree is not rooted at its MainPID: {plan:#}"
    );

    guest
        .run_ok(
            "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /run/systemd/system/lab-idle.service && systemctl daemon-reload",
            CMD,
        )
        .expect("an idle unit");
    // (target, exit code, message): a unit that is not a service is bad usage (2, refused
    // while the arguments are parsed); the others are bad targets (5).
    let refusals = [
        ("unit:nope.service", 5, "no such unit"),
        ("unit:lab-idle", 5, "not running"),
        ("unit:redis.socket", 2, "only .service units"),
    ];
    for (target, code, message) in refusals {
        for verb in ["plan", "update"] {
            let out = guest
                .run(
                    &format!("overboot {verb} {kernel} --preserve {target}"),
                    CMD,
                )
                .expect("overboot");
            assert_eq!(out.status, code, "{verb} {target}: {}", out.text());
            assert!(
                out.text().contains(message),
                "{verb} {target} does not say {message:?}: {}",
                out.text()
            );
        }
    }
    let after = guest
        .run_ok("systemctl show -P MainPID redis-server", CMD)
        .expect("MainPID");
    assert_eq!(
        after.text().trim(),
        main_pid,
        "a refused update touched Redis"
    );
    assert_active(guest, "redis-server");
}

#[test]
fn trixie_systemd_redis_then_kexec_to_7_3() {
    let prepare = Instant::now();
    let trixie = Trixie::prepare().expect("prepare the trixie profile");
    eprintln!(
        "trixie: profile ready in {:.1} s",
        prepare.elapsed().as_secs_f64()
    );
    let old = trixie.release("6.12").expect("6.12").to_string();
    let new = trixie.release("7.3").expect("7.3").to_string();
    let (config, ports) = trixie
        .guest_config("trixie-kexec", "6.12", &[6379])
        .expect("guest config");
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));

    let boot = Instant::now();
    let (mut guest, booted) = trixie.boot(&config).expect("6.12 reaches multi-user");
    eprintln!(
        "trixie: 6.12 booted in {:.1} s (host): {booted}",
        boot.elapsed().as_secs_f64()
    );
    assert!(booted.contains(&old), "booted {booted:?}, not {old}");
    let init = guest
        .run_ok("cat /proc/1/comm", CMD)
        .expect("comm of pid 1");
    assert_eq!(init.text().trim(), "systemd", "PID 1 is not systemd");
    settled(&mut guest);
    assert_active(&mut guest, "redis-server");
    redis_round_trip(addr, "on 6.12");
    unit_targets_resolve(&mut guest, &new);
    let boot_id = guest
        .run_ok("cat /proc/sys/kernel/random/boot_id", CMD)
        .expect("boot id")
        .text();

    let token = format!("lab.token={}", std::process::id());
    let append = format!("{CMDLINE} {token}");
    let switch = Instant::now();
    guest
        .send(&format!(
            "overboot kexec --kernel /boot/vmlinuz-{new} --initrd /boot/initrd.img-{new} --append '{append}'"
        ))
        .expect("send kexec");
    guest
        .wait_for(&format!("jumping into {new}"), CMD)
        .expect("overboot loaded 7.3 and jumped");
    let booted = guest
        .wait_for("@@LAB booted", BOOT_TIMEOUT)
        .expect("7.3 reaches multi-user");
    eprintln!(
        "trixie: kexec to 7.3 reached multi-user in {:.1} s (host): {booted}",
        switch.elapsed().as_secs_f64()
    );
    assert!(booted.contains(&new), "booted {booted:?}, not {new}");
    let uname = guest.run_ok("uname -r", CMD).expect("uname");
    assert_eq!(uname.text().trim(), new);
    let cmdline = guest.run_ok("cat /proc/cmdline", CMD).expect("cmdline");
    assert_eq!(
        cmdline.text().trim(),
        append,
        "7.3 got another command line"
    );
    let init = guest
        .run_ok("cat /proc/1/comm", CMD)
        .expect("comm of pid 1");
    assert_eq!(init.text().trim(), "systemd", "PID 1 on 7.3 is not systemd");
    let new_boot_id = guest
        .run_ok("cat /proc/sys/kernel/random/boot_id", CMD)
        .expect("boot id")
        .text();
    assert_ne!(boot_id, new_boot_id, "the boot id did not change");
    settled(&mut guest);
    assert_active(&mut guest, "multi-user.target");
    assert_active(&mut guest, "redis-server");
    redis_round_trip(addr, "on 7.3");
}
