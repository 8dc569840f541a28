//! The conversation logic against a peer thread that plays CRIU on the other end of a
//! socket pair, and the worker management against fake `criu` executables.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use overboot_checkpoint::rpc::{
    CriuDumpResp, CriuNotify, CriuReq, CriuReqType, CriuResp, CriuRestoreResp,
};
use overboot_checkpoint::{
    accept_all, CheckpointError, Criu, DumpRequest, Engine, Notification, ProtocolError,
    RestoreRequest, Session, Transport,
};
use prost::Message;

/// The CRIU side of the socket pair.
struct Peer(OwnedFd);

impl Peer {
    fn recv(&self) -> CriuReq {
        let mut buf = vec![0u8; 65536];
        let n = recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        CriuReq::decode(&buf[..n]).unwrap()
    }

    fn send(&self, resp: &CriuResp) {
        send(
            self.0.as_raw_fd(),
            &resp.encode_to_vec(),
            MsgFlags::MSG_NOSIGNAL,
        )
        .unwrap();
    }
}

fn pair(peer: impl FnOnce(Peer) + Send + 'static) -> (Session, JoinHandle<()>) {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let handle = std::thread::spawn(move || peer(Peer(theirs)));
    (Session::new(Transport::new(ours)), handle)
}

fn resp(kind: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success,
        ..CriuResp::default()
    }
}

fn notify(script: &str, pid: Option<i32>) -> CriuResp {
    CriuResp {
        notify: Some(CriuNotify {
            script: Some(script.to_owned()),
            pid,
        }),
        ..resp(CriuReqType::Notify, true)
    }
}

#[test]
fn dump_serves_the_network_lock_notification_then_succeeds() {
    let images = tempfile::tempdir().unwrap();
    let (session, peer) = pair(|peer| {
        let req = peer.recv();
        assert_eq!(req.r#type, CriuReqType::Dump as i32);
        let opts = req.opts.unwrap();
        assert_eq!(opts.pid, Some(42));
        assert_eq!(opts.notify_scripts, Some(true));
        assert_eq!(opts.log_file.as_deref(), Some("dump.log"));
        assert!(opts.images_dir_fd >= 0);
        peer.send(&notify("network-lock", None));
        let ack = peer.recv();
        assert_eq!(ack.r#type, CriuReqType::Notify as i32);
        assert_eq!(ack.notify_success, Some(true));
        peer.send(&CriuResp {
            dump: Some(CriuDumpResp {
                restored: Some(false),
            }),
            ..resp(CriuReqType::Dump, true)
        });
    });
    let mut seen = Vec::new();
    let outcome = session
        .dump(
            &DumpRequest::new(42, images.path()),
            &mut |n: &Notification| {
                seen.push(n.clone());
                Ok(())
            },
        )
        .unwrap();
    peer.join().unwrap();
    assert_eq!(outcome.notifications, ["network-lock"]);
    assert_eq!(
        seen,
        [Notification {
            script: "network-lock".into(),
            pid: None
        }]
    );
    assert!(!outcome.restored);
}

#[test]
fn images_dir_fd_names_the_directory_in_our_process() {
    // CRIU opens /proc/<peer pid>/fd/<images_dir_fd>: check that link while the request runs.
    let images = tempfile::tempdir().unwrap();
    let expected = images.path().canonicalize().unwrap();
    let (session, peer) = pair(move |peer| {
        let opts = peer.recv().opts.unwrap();
        let link = format!("/proc/{}/fd/{}", std::process::id(), opts.images_dir_fd);
        assert_eq!(std::fs::read_link(link).unwrap(), expected);
        peer.send(&resp(CriuReqType::Dump, true));
    });
    session
        .dump(&DumpRequest::new(7, images.path()), &mut accept_all)
        .unwrap();
    peer.join().unwrap();
}

#[test]
fn leave_stopped_reaches_criu_as_a_configuration_file_it_can_read() {
    // CRIU 3.17's RPC has no leave_stopped: the request names a configuration file, which CRIU
    // reads by path while the request runs. A plain dump names none.
    let images = tempfile::tempdir().unwrap();
    let (session, peer) = pair(move |peer| {
        let opts = peer.recv().opts.unwrap();
        let path = opts.config_file.expect("a configuration file");
        assert!(path.starts_with(&format!("/proc/{}/fd/", std::process::id())));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "leave-stopped\n");
        peer.send(&resp(CriuReqType::Dump, true));
        let opts = peer.recv().opts.unwrap();
        assert_eq!(opts.config_file, None);
        peer.send(&resp(CriuReqType::Dump, true));
    });
    let mut stopped = DumpRequest::new(7, images.path());
    stopped.leave_stopped = true;
    session.dump(&stopped, &mut accept_all).unwrap();
    session
        .dump(&DumpRequest::new(7, images.path()), &mut accept_all)
        .unwrap();
    peer.join().unwrap();
}

#[test]
fn a_failed_dump_carries_criu_message_errno_and_log() {
    let images = tempfile::tempdir().unwrap();
    std::fs::write(
        images.path().join("dump.log"),
        "(00.000100) Version: 3.17.1\n(00.010000) Error (criu/seize.c:940): Can't seize 42: No such process\n",
    )
    .unwrap();
    let (session, peer) = pair(|peer| {
        peer.recv();
        peer.send(&CriuResp {
            cr_errno: Some(libc::ESRCH),
            cr_errmsg: Some("Can't seize 42".into()),
            ..resp(CriuReqType::Dump, false)
        });
    });
    let err = session
        .dump(&DumpRequest::new(42, images.path()), &mut accept_all)
        .unwrap_err();
    peer.join().unwrap();
    match &err {
        CheckpointError::DumpFailed {
            pid,
            errno,
            message,
            log,
        } => {
            assert_eq!(*pid, 42);
            assert_eq!(*errno, Some(libc::ESRCH));
            assert_eq!(message.as_deref(), Some("Can't seize 42"));
            assert_eq!(log.path, images.path().join("dump.log"));
            assert_eq!(log.errors.len(), 1);
            assert!(log.errors[0].contains("No such process"));
        }
        other => panic!("expected DumpFailed, got {other:?}"),
    }
    let chain = overboot_checkpoint::error_chain(&err);
    assert!(
        chain.starts_with("dump of pid 42 failed: Can't seize 42 (errno 3"),
        "{chain}"
    );
    assert!(chain.contains("dump.log: (00.010000) Error"), "{chain}");
}

#[test]
fn a_failing_hook_is_reported_to_criu_and_to_the_caller() {
    let images = tempfile::tempdir().unwrap();
    let (session, peer) = pair(|peer| {
        peer.recv();
        peer.send(&notify("network-lock", None));
        assert_eq!(peer.recv().notify_success, Some(false));
        peer.send(&CriuResp {
            cr_errmsg: Some("RPC client reported script error".into()),
            ..resp(CriuReqType::Dump, false)
        });
    });
    let err = session
        .dump(
            &DumpRequest::new(42, images.path()),
            &mut |_: &Notification| Err("nft: table exists".to_owned()),
        )
        .unwrap_err();
    peer.join().unwrap();
    match err {
        CheckpointError::HookFailed { script, reason, .. } => {
            assert_eq!(script, "network-lock");
            assert_eq!(reason, "nft: table exists");
        }
        other => panic!("expected HookFailed, got {other:?}"),
    }
}

#[test]
fn restore_returns_the_root_pid_and_passes_it_to_hooks() {
    let images = tempfile::tempdir().unwrap();
    let (session, peer) = pair(|peer| {
        let req = peer.recv();
        assert_eq!(req.r#type, CriuReqType::Restore as i32);
        assert_eq!(req.opts.unwrap().rst_sibling, Some(true));
        for script in ["pre-restore", "post-restore", "network-unlock"] {
            let pid = (script == "post-restore").then_some(4242);
            peer.send(&notify(script, pid));
            assert_eq!(peer.recv().notify_success, Some(true));
        }
        peer.send(&CriuResp {
            restore: Some(CriuRestoreResp { pid: 4242 }),
            ..resp(CriuReqType::Restore, true)
        });
    });
    let mut req = RestoreRequest::new(images.path());
    req.restore_sibling = true;
    let mut pids = Vec::new();
    let outcome = session
        .restore(&req, &mut |n: &Notification| {
            pids.extend(n.pid);
            Ok(())
        })
        .unwrap();
    peer.join().unwrap();
    assert_eq!(outcome.pid, 4242);
    assert_eq!(pids, [4242]);
    assert_eq!(outcome.notifications.len(), 3);
}

#[test]
fn an_answer_of_the_wrong_type_is_a_protocol_error() {
    let images = tempfile::tempdir().unwrap();
    let (session, peer) = pair(|peer| {
        peer.recv();
        peer.send(&resp(CriuReqType::Restore, true));
    });
    let err = session
        .dump(&DumpRequest::new(1, images.path()), &mut accept_all)
        .unwrap_err();
    peer.join().unwrap();
    assert!(
        matches!(
            err,
            CheckpointError::Protocol(ProtocolError::Unexpected {
                expected: CriuReqType::Dump,
                got: 2
            })
        ),
        "{err:?}"
    );
}

#[test]
fn a_peer_that_hangs_up_is_reported_not_waited_for() {
    let (session, peer) = pair(|peer| {
        peer.recv();
        drop(peer);
    });
    let err = session.version(false).unwrap_err();
    peer.join().unwrap();
    assert!(
        matches!(err, CheckpointError::Protocol(ref e) if e.is_peer_gone()),
        "{err:?}"
    );
}

#[test]
fn version_features_and_check_share_one_peer() {
    let scratch = tempfile::tempdir().unwrap();
    let (session, peer) = pair(|peer| {
        let req = peer.recv();
        assert_eq!(req.keep_open, Some(true));
        peer.send(&CriuResp {
            version: Some(overboot_checkpoint::rpc::CriuVersionMsg {
                major_number: 3,
                minor_number: 17,
                sublevel: Some(1),
                ..Default::default()
            }),
            ..resp(CriuReqType::Version, true)
        });
        let req = peer.recv();
        assert!(req.features.is_some(), "criu dereferences features");
        peer.send(&CriuResp {
            features: Some(overboot_checkpoint::rpc::CriuFeatures {
                mem_track: Some(true),
                lazy_pages: Some(false),
                pidfd_store: Some(true),
            }),
            ..resp(CriuReqType::FeatureCheck, true)
        });
        let req = peer.recv();
        assert_eq!(req.r#type, CriuReqType::Check as i32);
        assert!(req.opts.unwrap().images_dir_fd >= 0, "criu 3.17 opens it");
        peer.send(&resp(CriuReqType::Check, true));
    });
    let v = session.version(true).unwrap();
    assert_eq!(v.to_string(), "3.17.1");
    let f = session.features(true).unwrap();
    assert!(f.mem_track && !f.lazy_pages);
    session.check(scratch.path()).unwrap();
    peer.join().unwrap();
}

fn fake_criu(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("criu");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_criu_that_exits_at_once_gives_criu_exited_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let mut criu = Criu::new(fake_criu(dir.path(), "echo 'criu: no luck' >&2; exit 1"));
    let start = Instant::now();
    let err = criu
        .dump(&DumpRequest::new(42, images.path()), &mut accept_all)
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    match err {
        CheckpointError::CriuExited { status, stderr } => {
            assert_eq!(status.code(), Some(1));
            assert!(stderr.contains("no luck"), "{stderr}");
        }
        other => panic!("expected CriuExited, got {other:?}"),
    }
}

#[test]
fn the_socket_fd_named_on_the_command_line_is_open_in_criu() {
    // A fake criu that answers VERSION by checking its argv: `swrk <fd>` with <fd> open.
    let dir = tempfile::tempdir().unwrap();
    let mut criu = Criu::new(fake_criu(
        dir.path(),
        r#"[ "$1" = swrk ] && [ -e "/proc/self/fd/$2" ] && exit 3; exit 4"#,
    ));
    match criu.version().unwrap_err() {
        CheckpointError::CriuExited { status, .. } => assert_eq!(status.code(), Some(3)),
        other => panic!("expected CriuExited, got {other:?}"),
    }
}

#[test]
fn a_missing_binary_is_spawn_failed() {
    let mut criu = Criu::new("/nonexistent/criu");
    assert!(matches!(
        criu.version(),
        Err(CheckpointError::SpawnFailed { .. })
    ));
}

#[test]
fn a_silent_criu_times_out_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let criu = Criu::new(fake_criu(dir.path(), "exec sleep 30"))
        .with_response_timeout(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let err = criu.probe().unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(err, CheckpointError::Protocol(ProtocolError::TimedOut(_))),
        "{err:?}"
    );
}
