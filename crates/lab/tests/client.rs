//! The host-side Redis client against a real `redis-server` on 127.0.0.1 (no guest): the INCR
//! loop sees a pause made with SIGSTOP as a gap whose commands are all answered after it, a
//! killed server as a broken connection, and the key set round-trips 50,000 binary values.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use overboot_lab::incr::{IncrConfig, IncrLoop};
use overboot_lab::net;
use overboot_lab::redis::{self, KeySet};

/// A redis-server on 127.0.0.1:<free port>, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Option<Server> {
        if !std::path::Path::new("/usr/bin/redis-server").exists() {
            eprintln!(
                "skipped: /usr/bin/redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        }
        let port = net::free_port().expect("free port");
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = Server { child, port };
        redis::wait_ready(net::localhost(port), Duration::from_secs(10)).expect("redis ready");
        Some(server)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal redis-server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn incr_loop_sees_a_pause_and_every_command_answered_after_it() {
    let Some(server) = Server::start() else {
        return;
    };
    let addr = net::localhost(server.port);
    let incr = IncrLoop::start(addr, IncrConfig::default()).expect("connect");
    assert!(incr.wait_answered(20, Duration::from_secs(10)));
    server.signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(nix::sys::signal::Signal::SIGCONT);
    let n = incr.progress().answered;
    assert!(incr.wait_answered(n + 20, Duration::from_secs(10)));
    let (s, samples) = incr.finish();
    assert!(s.connection_survived, "{s:?}");
    assert_eq!((s.lost, s.duplicated), (0, 0), "{s:?}");
    assert!(s.blackout_ms >= 1400 && s.blackout_ms < 3000, "{s:?}");
    assert!(s.sent_during_blackout >= 50, "{s:?}");
    assert_eq!(s.answered_after_blackout, s.sent_during_blackout, "{s:?}");
    assert_eq!(samples.len() as u64, s.sent);
    assert!(redis::ping_new_connection(addr, Duration::from_secs(5)).is_ok());
}

#[test]
fn incr_loop_records_a_killed_server_as_a_broken_connection() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let addr = net::localhost(server.port);
    let incr = IncrLoop::start(addr, IncrConfig::default()).expect("connect");
    assert!(incr.wait_answered(20, Duration::from_secs(10)));
    let _ = server.child.kill();
    let _ = server.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    let (s, _) = incr.finish();
    assert!(!s.connection_survived, "{s:?}");
    assert!(s.error.is_some(), "{s:?}");
}

#[test]
fn key_set_round_trips_and_reports_missing_keys() {
    let Some(server) = Server::start() else {
        return;
    };
    let addr = net::localhost(server.port);
    let keys = KeySet::new("t", 50_000);
    keys.write(addr, Duration::from_secs(30)).expect("write");
    let check = keys.check(addr, Duration::from_secs(30)).expect("check");
    assert_eq!(
        (check.keys_checked, check.keys_missing, check.keys_wrong),
        (50_000, 0, 0)
    );
    let mut conn = redis::RespConn::connect(addr, Duration::from_secs(5)).expect("connect");
    conn.command(&[b"DEL", keys.key(7).as_bytes()])
        .expect("del");
    conn.command(&[b"SET", keys.key(8).as_bytes(), b"x"])
        .expect("set");
    let check = keys.check(addr, Duration::from_secs(30)).expect("check");
    assert_eq!((check.keys_missing, check.keys_wrong), (1, 1), "{check:?}");
}

#[test]
fn tcpout_exchanges_numbered_lines_with_the_echo_server() {
    let echo = net::EchoServer::start().expect("echo server");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("tcpout.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab-workload"))
        .arg("tcpout")
        .arg(&log)
        .args(["127.0.0.1", &echo.port().to_string()])
        .spawn()
        .expect("start tcpout");
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    let verdict = overboot_lab::workloads::verify_sequence(&text, "echo").expect("sequence");
    assert!(verdict.records >= 5, "{text}");
    assert_eq!(verdict.pid, i32::try_from(child.id()).expect("pid"));
    let stats = echo.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert!(stats.lines[0] >= verdict.records, "{stats:?}");
}
