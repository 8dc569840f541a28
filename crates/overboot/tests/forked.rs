//! The agent's forked helpers, forked for real: without the test harness this process has one
//! thread, as the agent has when it starts its worker and its page servers. A child runs its
//! body and exits with its code, its stderr reaches the parent, a panic or a signal is its
//! status, and a daemon runs in its directory with its log, its parent reporting its pid and
//! then its exit code.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use overboot::host::forked::{daemon, output_of, wait};

fn main() {
    let out = output_of(|| {
        eprintln!("to the parent");
        7
    })
    .expect("fork")
    .expect("one thread: a fork, not a refusal");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to the parent\n");

    let out = output_of(|| panic!("the body panicked")).unwrap().unwrap();
    assert_eq!(out.status.code(), Some(101), "a panic is exit code 101");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the body panicked"),
        "the panic message reaches the parent: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = output_of(|| {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        0
    })
    .unwrap()
    .unwrap();
    assert_eq!(out.status.signal(), Some(9), "a killed child is its signal");

    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let log = dir_path.join("daemon.log");
    let waiter = daemon(
        &dir_path,
        &log,
        || {
            eprintln!("served");
            // Relative: the daemon runs in its directory.
            std::fs::write("here", std::process::id().to_string()).unwrap();
            3
        },
        |pid| std::fs::write("pid", pid.to_string()).unwrap(),
        |code| {
            std::fs::write("status.tmp", code.to_string()).unwrap();
            std::fs::rename("status.tmp", "status").unwrap();
        },
    )
    .expect("fork")
    .expect("one thread: a fork");
    let start = Instant::now();
    while !dir_path.join("status").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no status");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wait(waiter).unwrap().code(), Some(0), "the parent exits 0");
    let read = |name: &str| std::fs::read_to_string(dir_path.join(name)).unwrap();
    assert_eq!(read("status"), "3", "the daemon's exit code");
    assert_eq!(
        read("daemon.log"),
        "served\n",
        "the daemon's stderr is its log"
    );
    assert_eq!(
        read("here"),
        read("pid"),
        "the parent reported the daemon's pid"
    );
    assert_ne!(
        read("pid"),
        waiter.to_string(),
        "the daemon is not its parent"
    );
    assert_eq!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(waiter)))
            .map(|_| ())
            .unwrap_err(),
        nix::errno::Errno::ESRCH,
        "the parent was reaped"
    );

    // A daemon started by a forked child (as the worker starts its page servers) holds none of
    // that child's descriptors: the child's stderr pipe ends when the child does, while the
    // daemon still runs. (A held pipe would keep the parent reading until the daemon exits.)
    let go = dir_path.join("go");
    let status = dir_path.join("daemon-status");
    let high = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&std::io::stdout()),
        nix::fcntl::FcntlArg::F_DUPFD(100),
    )
    .unwrap();
    let out = output_of(|| {
        let waiter = daemon(
            &dir_path,
            &dir_path.join("second.log"),
            || {
                let inherited = std::path::Path::new(&format!("/proc/self/fd/{high}")).exists();
                let start = Instant::now();
                while !go.exists() && start.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if inherited {
                    9
                } else {
                    0
                }
            },
            |_| {},
            |code| {
                std::fs::write("second-status.tmp", code.to_string()).unwrap();
                std::fs::rename("second-status.tmp", &status).unwrap();
            },
        );
        u8::from(!matches!(waiter, Ok(Some(_))))
    })
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "the child started its daemon");
    assert!(
        !status.exists(),
        "the child's output ended while its daemon still ran"
    );
    std::fs::write(&go, "").unwrap();
    let start = Instant::now();
    while !status.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no status");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        std::fs::read_to_string(&status).unwrap(),
        "0",
        "the daemon held descriptor {high} of its parent"
    );
    println!("forked: 5 checks passed");
}
