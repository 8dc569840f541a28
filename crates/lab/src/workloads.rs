//! The workloads a lab scenario carries across a kernel switch, how they are started in the
//! guest, and how their logs (read back from the data disk) are judged afterwards.
//!
//! Every verifier checks the whole log, before and after the switch: same pid throughout,
//! counters and sequence numbers consecutive (no gap, no duplicate, no reordering), checksums
//! constant, clocks never backwards.

use std::collections::BTreeMap;

/// One workload: its kind and where it logs (a path in the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Short name (also the log's file name).
    pub name: String,
    /// `lab-workload` arguments.
    pub args: String,
    /// The log, under `/lab/wl/`.
    pub log: String,
}

impl Workload {
    /// A workload `name` running `lab-workload <kind> <log> <extra>` with its log on the disk.
    pub fn new(name: &str, kind: &str, extra: &str) -> Workload {
        let log = format!("/lab/wl/{name}.log");
        Workload {
            name: name.into(),
            args: format!("{kind} {log} {extra}").trim().to_string(),
            log,
        }
    }

    /// `lab-workload append` writing numbered records to `path` (its own log).
    pub fn append(name: &str, path: &str) -> Workload {
        Workload {
            name: name.into(),
            args: format!("append {path}"),
            log: path.into(),
        }
    }

    /// The shell command that starts it detached and prints its pid.
    pub fn start_command(&self) -> String {
        format!(
            "setsid lab-workload {} </dev/null >/lab/wl/{}.err 2>&1 & echo \"@@PID {} $!\"",
            self.args, self.name, self.name
        )
    }
}

/// What a verified log says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Records in the log.
    pub records: u64,
    /// The one pid all records carry.
    pub pid: i32,
    /// Other facts (e.g. `max_gap_ms`, `checksum`).
    pub facts: BTreeMap<String, String>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn num<T: std::str::FromStr>(line: &str, key: &str) -> Result<T, String> {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

fn same_pid(verdict: &mut Verdict, pid: i32, line: &str) -> Result<(), String> {
    if verdict.pid == 0 {
        verdict.pid = pid;
    }
    if verdict.pid != pid {
        return Err(format!(
            "pid changed from {} to {pid} at {line:?}",
            verdict.pid
        ));
    }
    Ok(())
}

/// The `mem` workload: constant checksum, consecutive counter, no bad pass, thread count.
pub fn verify_mem(log: &str, threads: usize) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let mut expected: Option<String> = None;
    let mut last = 0u64;
    for line in log.lines() {
        if line.starts_with("start ") {
            if expected.is_some() {
                return Err(format!("the workload started twice: {line:?}"));
            }
            expected = field(line, "checksum").map(str::to_string);
            same_pid(&mut v, num(line, "pid")?, line)?;
            continue;
        }
        if !line.starts_with("tick ") {
            continue;
        }
        same_pid(&mut v, num(line, "pid")?, line)?;
        let counter: u64 = num(line, "counter")?;
        if counter != last + 1 {
            return Err(format!("counter went from {last} to {counter}"));
        }
        last = counter;
        if field(line, "checksum") != expected.as_deref() {
            return Err(format!(
                "checksum changed: {line:?} (expected {expected:?})"
            ));
        }
        if num::<u64>(line, "bad")? != 0 {
            return Err(format!("a thread saw a bad checksum: {line:?}"));
        }
        let t: usize = num(line, "threads")?;
        if t != threads + 1 {
            return Err(format!("{t} threads, expected {}: {line:?}", threads + 1));
        }
        v.records += 1;
    }
    v.facts
        .insert("checksum".into(), expected.unwrap_or_default());
    v.facts.insert("last_counter".into(), last.to_string());
    Ok(v)
}

/// Consecutive `<word> N ok=true` records (pipes: `seq`, unix: `pong`).
pub fn verify_sequence(log: &str, word: &str) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let mut last = 0u64;
    for line in log.lines().filter(|l| l.starts_with(word)) {
        let n: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad record {line:?}"))?;
        if n != last + 1 || field(line, "ok") != Some("true") {
            return Err(format!("sequence broken after {last}: {line:?}"));
        }
        same_pid(&mut v, num(line, "pid")?, line)?;
        last = n;
        v.records += 1;
    }
    Ok(v)
}

/// The `append` file: numbered records, each written at the offset where the previous ended.
pub fn verify_append(data: &str) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let mut offset = 0usize;
    for (i, line) in data.split_inclusive('\n').enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(n), Some(off), Some(pid), Some(ok)) =
            (words.get(1), words.get(3), words.get(5), words.get(7))
        else {
            return Err(format!("bad record at byte {offset}: {line:?}"));
        };
        let n: usize = n.parse().map_err(|_| format!("bad number {line:?}"))?;
        let off: usize = off.parse().map_err(|_| format!("bad offset {line:?}"))?;
        if n != i + 1 || off != offset || *ok != "1" {
            return Err(format!(
                "record {} at byte {offset} is {line:?}: expected record {} at offset {offset}",
                i + 1,
                i + 1
            ));
        }
        same_pid(
            &mut v,
            pid.parse().map_err(|_| format!("bad pid {line:?}"))?,
            line,
        )?;
        offset += line.len();
        v.records += 1;
    }
    Ok(v)
}

/// The `clock` log: CLOCK_MONOTONIC and CLOCK_BOOTTIME never go backwards; at the largest gap
/// (the switch) they advance by about as much as CLOCK_REALTIME did.
pub fn verify_clock(log: &str) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let mut prev: Option<(i128, i128, i128)> = None;
    let mut gap = (0i128, 0i128, 0i128);
    for line in log.lines().filter(|l| l.starts_with("clock ")) {
        let mono: i128 = num(line, "mono")?;
        let boot: i128 = num(line, "boot")?;
        let real: i128 = num(line, "real")?;
        same_pid(&mut v, num(line, "pid")?, line)?;
        if let Some((pm, pb, pr)) = prev {
            if mono < pm || boot < pb {
                return Err(format!(
                    "clock went backwards: mono {pm} → {mono}, boot {pb} → {boot}"
                ));
            }
            if real - pr > gap.2 {
                gap = (mono - pm, boot - pb, real - pr);
            }
        }
        prev = Some((mono, boot, real));
        v.records += 1;
    }
    v.facts
        .insert("max_gap_real_ms".into(), (gap.2 / 1_000_000).to_string());
    v.facts
        .insert("max_gap_mono_ms".into(), (gap.0 / 1_000_000).to_string());
    v.facts
        .insert("max_gap_boot_ms".into(), (gap.1 / 1_000_000).to_string());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_log_with_a_gap_fails() {
        let log = "start pid=7 mib=1 threads=1 checksum=ab\n\
                   tick pid=7 counter=1 checksum=ab passes=1 bad=0 threads=2\n\
                   tick pid=7 counter=3 checksum=ab passes=1 bad=0 threads=2\n";
        assert!(verify_mem(log, 1).unwrap_err().contains("from 1 to 3"));
        let ok = "start pid=7 mib=1 threads=1 checksum=ab\n\
                  tick pid=7 counter=1 checksum=ab passes=1 bad=0 threads=2\n";
        assert_eq!(verify_mem(ok, 1).map(|v| v.records), Ok(1));
    }

    #[test]
    fn sequence_with_duplicate_or_new_pid_fails() {
        assert!(verify_sequence("seq 1 ok=true pid=3\nseq 1 ok=true pid=3\n", "seq").is_err());
        assert!(verify_sequence("seq 1 ok=true pid=3\nseq 2 ok=true pid=4\n", "seq").is_err());
        assert_eq!(
            verify_sequence("seq 1 ok=true pid=3\nseq 2 ok=true pid=3\n", "seq").map(|v| v.records),
            Ok(2)
        );
    }

    #[test]
    fn append_offsets_must_continue() {
        let a = "rec 00000001 off 0000000000 pid 0000009 ok 1\n";
        let b = format!("rec 00000002 off {:010} pid 0000009 ok 1\n", a.len());
        assert_eq!(verify_append(&format!("{a}{b}")).map(|v| v.records), Ok(2));
        let bad = "rec 00000002 off 0000000000 pid 0000009 ok 1\n";
        assert!(verify_append(&format!("{a}{bad}")).is_err());
    }

    #[test]
    fn clock_backwards_fails() {
        let log = "clock mono=10 boot=10 real=100 ok=true pid=1\nclock mono=5 boot=11 real=101 ok=true pid=1\n";
        assert!(verify_clock(log).is_err());
    }
}
