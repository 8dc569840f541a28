//! The agent's forked helpers, forked for real: without the test harness this process has one
//! thread, as the agent has when it starts its worker and its page servers. A child runs its
//! body and exits with its code, its stderr reaches the parent, a panic or a signal is its
//! status, and a daemon runs in its directory with its log, its parent reporting its pid and
//! then its exit code.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use overboot::forked::{daemon, output_of, wait};

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
        |code| std::fs::write("status.tmp", code.to_string()).unwrap(),
    )
    .expect("fork")
    .expect("one thread: a fork");
    let start = Instant::now();
    while !dir_path.join("status.tmp").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no status");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wait(waiter).unwrap().code(), Some(0), "the parent exits 0");
    let read = |name: &str| std::fs::read_to_string(dir_path.join(name)).unwrap();
    assert_eq!(read("status.tmp"), "3", "the daemon's exit code");
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
    println!("forked: 4 checks passed");
}
