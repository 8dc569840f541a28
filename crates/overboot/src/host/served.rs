//! The lazy restore's page servers as the work directory records them: the agent records each
//! server it leaves serving a restored tree, and the next update refuses to start while one
//! still serves (CRIU cannot dump a task whose memory a page server still fills). Written on
//! the new kernel's side, read on the old one's.

use std::path::Path;

/// File in the work dir listing the page servers started by the agent, `tree pid` per line.
pub const DAEMONS: &str = "lazy-pages";

/// The hidden verb that runs the page server.
pub const VERB: &str = "serve-pages";

/// The name a forked page server gives itself (`/proc/PID/comm`), by which [`still_serving`]
/// knows it.
pub const COMM: &str = "overboot-pages";

/// Records a detached daemon in the work dir (best effort: the record only lets the next
/// update wait for it).
pub fn record(work_dir: &Path, tree: &str, pid: i32) {
    use std::io::Write;
    let _ = std::fs::create_dir_all(work_dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work_dir.join(DAEMONS))
    {
        let _ = writeln!(f, "{tree} {pid}");
    }
}

/// A recorded server that is still serving pages: `(tree, pid)`. A page server is a process
/// named [`COMM`] (forked), an `overboot` running [`VERB`] (started as a program) or,
/// recorded by an overboot before its own server, `criu`.
pub fn still_serving(work_dir: &Path) -> Option<(String, i32)> {
    let text = std::fs::read_to_string(work_dir.join(DAEMONS)).ok()?;
    parse_records(&text).into_iter().find(|(_, pid)| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let criu = comm.trim() == "criu";
        let forked = comm.trim() == COMM;
        let server = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == VERB.as_bytes()));
        criu || forked || server
    })
}

fn parse_records(text: &str) -> Vec<(String, i32)> {
    text.lines()
        .filter_map(|line| {
            let (tree, pid) = line.rsplit_once(' ')?;
            Some((tree.to_string(), pid.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn records_read_back_and_garbage_is_skipped() {
        assert_eq!(
            parse_records("redis.service 412\npid:77 78\nbroken\nx notapid\n"),
            vec![
                ("redis.service".to_string(), 412),
                ("pid:77".to_string(), 78)
            ]
        );
    }

    #[test]
    fn a_dead_or_foreign_pid_is_not_serving() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(still_serving(dir.path()), None);
        // Our own pid is alive but is not criu.
        record(
            dir.path(),
            "pid:1",
            i32::try_from(std::process::id()).unwrap(),
        );
        record(dir.path(), "pid:2", i32::MAX);
        assert_eq!(still_serving(dir.path()), None);
    }

    #[test]
    fn a_live_criu_process_is_serving_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        // A process whose name is `criu` (comm comes from the name it was executed by).
        let criu = dir.path().join("criu");
        std::os::unix::fs::symlink("/bin/sleep", &criu).unwrap();
        let mut child = Command::new(&criu).arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        record(dir.path(), "redis.service", pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while still_serving(dir.path()).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            still_serving(dir.path()),
            Some(("redis.service".into(), pid))
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(still_serving(dir.path()), None);
    }
}
