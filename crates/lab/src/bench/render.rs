//! The benchmark's tables and plots, from the run records alone (so they can be redrawn from a
//! `results.json`). SVG is written by hand: two simple charts need no plotting library.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::record::{LatencyFile, Method, RunRecord};

/// The phases of an update's blackout in the order they happen, as the agent names them (with
/// a directory store the kernel is loaded and memory pre-copied before the freeze:
/// `kexec_load_early` and `pre_copy`, not shaded).
const UPDATE_PHASES: [&str; 8] = [
    "freeze_dump",
    "write_map",
    "publish",
    "kexec_load",
    "jump_to_agent",
    "verify_map",
    "network",
    "restore",
];

/// Phase colours (cycled).
const COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
];

/// The line under the table that says what the recovery column measures.
const RECOVERY_NOTE: &str =
    "\nRecovery: from the start of the blackout (the last reply before the longest gap) to \
the reply of the last INCR slower than 1 s, or the end of that gap if none was: it covers the \
stalls after the blackout (a retransmission the client backed off on). Floor and restart have no \
such client: their recovery is their blackout. – where results.json predates the measure.\n";

/// One cell of the table: one method at one size, over its successful runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The method.
    pub method: Method,
    /// Dataset size.
    pub dataset_mib: u32,
    /// Runs recorded.
    pub runs: usize,
    /// Of those, successful (the statistics are over these).
    pub ok: usize,
    /// Median, min and max blackout (ms).
    pub blackout_ms: (u64, u64, u64),
    /// Median recovery (ms); `None` when no successful run recorded one (results written
    /// before it was measured).
    pub recovery_ms: Option<u64>,
    /// Median of each phase (ms).
    pub phases: BTreeMap<String, u64>,
    /// Median handover bytes.
    pub handover_bytes: u64,
    /// Median peak memory (bytes).
    pub peak_mem_bytes: u64,
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    match values.len() {
        0 => 0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2,
    }
}

/// Groups the records by (method, size) and computes each cell, in table order.
pub fn summarize_cells(records: &[RunRecord]) -> Vec<Cell> {
    let mut groups: BTreeMap<(Method, u32), Vec<&RunRecord>> = BTreeMap::new();
    for r in records {
        groups.entry((r.method, r.dataset_mib)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((method, dataset_mib), runs)| {
            let ok: Vec<&RunRecord> = runs.iter().copied().filter(|r| r.ok).collect();
            let blackouts: Vec<u64> = ok.iter().map(|r| r.blackout_ms).collect();
            // A successful run always measured a blackout, so 0 means "not recorded".
            let recoveries: Vec<u64> = ok
                .iter()
                .map(|r| r.recovery_ms)
                .filter(|ms| *ms > 0)
                .collect();
            let mut phase_values: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for r in &ok {
                for (name, value) in &r.phases {
                    phase_values.entry(name.clone()).or_default().push(*value);
                }
            }
            Cell {
                method,
                dataset_mib,
                runs: runs.len(),
                ok: ok.len(),
                blackout_ms: (
                    median(blackouts.clone()),
                    blackouts.iter().copied().min().unwrap_or(0),
                    blackouts.iter().copied().max().unwrap_or(0),
                ),
                recovery_ms: (!recoveries.is_empty()).then(|| median(recoveries)),
                phases: phase_values
                    .into_iter()
                    .map(|(k, v)| (k, median(v)))
                    .collect(),
                handover_bytes: median(ok.iter().map(|r| r.handover_bytes).collect()),
                peak_mem_bytes: median(ok.iter().map(|r| r.peak_mem_bytes).collect()),
            }
        })
        .collect()
}

/// Per method and size that restored lazily: when every page was back after the restore
/// (median) and the longest a fault waited (the longest of any run).
fn lazy_lines(records: &[RunRecord]) -> String {
    let mut cells: BTreeMap<(u32, &str), (Vec<u64>, f64)> = BTreeMap::new();
    for r in records.iter().filter(|r| r.ok && r.lazy_restore) {
        let Some(back) = r.memory_back_ms else {
            continue;
        };
        let cell = cells
            .entry((r.dataset_mib, r.method.name()))
            .or_insert((Vec::new(), 0.0));
        cell.0.push(back);
        cell.1 = cell.1.max(r.slowest_fault_ms.unwrap_or(0.0));
    }
    cells
        .into_iter()
        .map(|((size, method), (back, slowest))| {
            format!(
                "- {method} at {size} MiB: every page back {} s after the restore (median), the \
                 slowest fault answered in {slowest:.1} ms.\n",
                secs(median(back))
            )
        })
        .collect()
}

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn mib(bytes: u64) -> String {
    if bytes == 0 {
        "–".into()
    } else {
        format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// The markdown table (one row per method and size) and the ratios the targets are stated in.
pub fn markdown(records: &[RunRecord]) -> String {
    let cells = summarize_cells(records);
    let mut out = String::new();
    out.push_str(
        "| method | dataset MiB | runs ok | blackout s, median (min–max) | recovery s, median | handover MiB | peak guest memory MiB | phases, median s |\n\
         |---|---:|---:|---|---:|---:|---:|---|\n",
    );
    let mut sizes: Vec<u32> = cells.iter().map(|c| c.dataset_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in &sizes {
        for method in Method::ALL {
            let Some(c) = cells
                .iter()
                .find(|c| c.method == method && c.dataset_mib == *size)
            else {
                continue;
            };
            table_row(&mut out, c);
        }
    }
    out.push_str(RECOVERY_NOTE);
    if records.iter().any(|r| r.lazy_restore) {
        out.push_str(
            "\nThe update methods ran with `--lazy-restore`: memory came back after the tasks \
             resumed, from overboot's page server per tree (a tree with less than 128 MiB of \
             page files is restored whole).\n",
        );
        out.push_str(&lazy_lines(records));
    }
    let ratios = ratios(&cells, &sizes);
    if !ratios.is_empty() {
        out.push_str("\nRatios of medians (same run):\n\n");
        out.push_str(&ratios.join("\n"));
        out.push('\n');
    }
    let stalled: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let e = r
                .client_error
                .as_deref()
                .filter(|e| e.contains("unanswered"))?;
            Some(format!(
                "- {} {} MiB run {}: the client's connection stalled ({e}): its blackout is a \
                 lower bound",
                r.method.name(),
                r.dataset_mib,
                r.run
            ))
        })
        .collect();
    if !stalled.is_empty() {
        out.push_str("\nConnections that were not reset but still waited for answers when the run ended:\n\n");
        out.push_str(&stalled.join("\n"));
        out.push('\n');
    }
    let failed = failed_runs(records);
    if !failed.is_empty() {
        out.push_str("\nFailed runs (left out of the statistics):\n\n");
        out.push_str(&failed.join("\n"));
        out.push('\n');
    }
    out
}

/// Appends the table's row of cell `c`, its phases in the order they happen.
fn table_row(out: &mut String, c: &Cell) {
    let mut phases: Vec<String> = Vec::new();
    let order: Vec<&str> = match c.method {
        Method::Overboot | Method::Defaults | Method::Initrd | Method::Disk => {
            ["kexec_load_early", "pre_copy"]
                .into_iter()
                .chain(UPDATE_PHASES)
                .collect()
        }
        _ => c.phases.keys().map(String::as_str).collect(),
    };
    for name in order {
        if let Some(v) = c.phases.get(name) {
            phases.push(format!("{name} {}", secs(*v)));
        }
    }
    let _ = writeln!(
        out,
        "| {} | {} | {}/{} | {} ({}–{}) | {} | {} | {} | {} |",
        c.method.name(),
        c.dataset_mib,
        c.ok,
        c.runs,
        secs(c.blackout_ms.0),
        secs(c.blackout_ms.1),
        secs(c.blackout_ms.2),
        c.recovery_ms.map_or_else(|| "–".into(), secs),
        mib(c.handover_bytes),
        mib(c.peak_mem_bytes),
        phases.join(", ")
    );
}

/// The ratios of median blackouts: overboot against each other method at each size, and
/// overboot at the largest size against overboot at the smallest.
fn ratios(cells: &[Cell], sizes: &[u32]) -> Vec<String> {
    let find = |m: Method, s: u32| {
        cells
            .iter()
            .find(|c| c.method == m && c.dataset_mib == s && c.ok > 0)
            .map(|c| c.blackout_ms.0 as f64)
    };
    let phase = |m: Method, s: u32, name: &str| {
        cells
            .iter()
            .find(|c| c.method == m && c.dataset_mib == s && c.ok > 0)
            .and_then(|c| c.phases.get(name))
            .map(|v| *v as f64)
            .filter(|v| *v > 0.0)
    };
    let mut ratios = Vec::new();
    for size in sizes {
        // The peer to beat: what a user could script with plain CRIU and kexec-tools.
        if let Some(naive) = find(Method::Naive, *size).filter(|n| *n > 0.0) {
            for (method, label) in [
                (Method::Defaults, "overboot's defaults"),
                (Method::Initrd, "overboot, initrd store"),
                (Method::Overboot, "overboot tuned (reserved RAM)"),
            ] {
                if let Some(a) = find(method, *size) {
                    ratios.push(format!("- {size} MiB: {label} / naive = {:.2}", a / naive));
                }
                // The server's own blackout (freeze → restored), which the peer's TCP does
                // not stretch: the agent's `blackout` phase, the naive script's
                // `freeze_to_restored`.
                if let (Some(a), Some(b)) = (
                    phase(method, *size, "blackout"),
                    phase(Method::Naive, *size, "freeze_to_restored"),
                ) {
                    ratios.push(format!(
                        "- {size} MiB: {label} / naive, freeze → restored on the server = {:.2}",
                        a / b
                    ));
                }
            }
        }
        let ob = find(Method::Overboot, *size);
        for (other, label) in [
            (Method::Initrd, "initrd"),
            (Method::Floor, "floor"),
            (Method::Restart, "restart"),
            (Method::Disk, "disk"),
        ] {
            if let (Some(a), Some(b)) = (ob, find(other, *size)) {
                if b > 0.0 {
                    ratios.push(format!("- {size} MiB: overboot / {label} = {:.2}", a / b));
                }
            }
        }
    }
    if let (Some(first), Some(last)) = (sizes.first(), sizes.last()) {
        if first != last {
            if let (Some(a), Some(b)) = (
                find(Method::Overboot, *last),
                find(Method::Overboot, *first),
            ) {
                if b > 0.0 {
                    ratios.push(format!(
                        "- overboot at {last} MiB / overboot at {first} MiB = {:.2}",
                        a / b
                    ));
                }
            }
        }
    }
    ratios
}

/// One line per failed run: which, and why.
fn failed_runs(records: &[RunRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "- {} {} MiB run {}: {}",
                r.method.name(),
                r.dataset_mib,
                r.run,
                r.error
                    .as_deref()
                    .unwrap_or("checks failed (connection, increments or keys)")
            )
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const W: f64 = 960.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 90.0;

fn svg_open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        escape(title)
    )
}

/// Plot (1): every INCR command of one update, latency (reply − send, log scale) against the
/// time it was sent, with the agent's phases shaded from the freeze on (the reply before the
/// longest gap), laid end to end with their measured durations.
pub fn latency_svg(record: &RunRecord, latency: &LatencyFile) -> String {
    let points: Vec<(f64, f64)> = latency
        .samples
        .iter()
        .filter_map(|s| Some((s.sent_ms, (s.reply_ms? - s.sent_ms).max(0.1))))
        .collect();
    let t_max = latency
        .samples
        .iter()
        .map(|s| s.reply_ms.unwrap_or(s.sent_ms))
        .fold(1.0, f64::max);
    let l_max = points.iter().map(|p| p.1).fold(10.0, f64::max);
    let (log_min, log_max) = (0.0f64, l_max.log10().ceil().max(1.0));
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |ms: f64| LEFT + pw * (ms / t_max);
    let y = |lat: f64| TOP + ph * (1.0 - (lat.max(1.0).log10() - log_min) / (log_max - log_min));
    let mut svg = svg_open(&format!(
        "INCR reply latency during one overboot update ({} MiB, {} → {}): blackout {:.1} s",
        record.dataset_mib,
        record.from,
        record.to,
        record.blackout_ms as f64 / 1000.0
    ));
    // Phases, from the freeze on.
    let mut t = latency.blackout_start_ms as f64;
    let mut legend_x = LEFT;
    for (i, name) in UPDATE_PHASES.iter().enumerate() {
        let Some(&d) = record.phases.get(*name) else {
            continue;
        };
        let colour = COLOURS[i % COLOURS.len()];
        let (x0, x1) = (x(t), x(t + d as f64));
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{ph}\" fill=\"{colour}\" fill-opacity=\"0.25\"><title>{name}: {} ms</title></rect>",
            (x1 - x0).max(0.5),
            d
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{legend_x:.0}\" y=\"{:.0}\" width=\"10\" height=\"10\" fill=\"{colour}\" fill-opacity=\"0.5\"/><text x=\"{:.0}\" y=\"{:.0}\">{name} {:.1}s</text>",
            H - 30.0,
            legend_x + 14.0,
            H - 21.0,
            d as f64 / 1000.0
        );
        legend_x += 14.0 + 8.0 * (name.len() as f64 + 6.0);
        t += d as f64;
    }
    axes(&mut svg, pw, ph);
    let mut decade = log_min;
    while decade <= log_max {
        let v = 10f64.powf(decade);
        let label = if v >= 1000.0 {
            format!("{} s", v / 1000.0)
        } else {
            format!("{v} ms")
        };
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text><line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            LEFT - 6.0,
            y(v) + 4.0,
            y(v),
            LEFT + pw,
            y(v)
        );
        decade += 1.0;
    }
    let step = nice_step(t_max / 1000.0);
    let mut s = 0.0;
    while s * 1000.0 <= t_max {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{s}</text>",
            x(s * 1000.0),
            TOP + ph + 16.0
        );
        s += step;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time the command was sent (s)</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">reply latency</text>",
        LEFT + pw / 2.0,
        TOP + ph + 34.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (sent, lat) in &points {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"#222\"/>",
            x(*sent),
            y(*lat)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The x and y axes of a plot area `pw` × `ph` at (LEFT, TOP).
fn axes(svg: &mut String, pw: f64, ph: f64) {
    let bottom = TOP + ph;
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"black\"/>",
        LEFT + pw
    );
}

fn nice_step(range: f64) -> f64 {
    let raw = (range / 10.0).max(0.001);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Plot (2): median blackout against dataset size (log scale), one line per method, with
/// min–max bars.
pub fn blackout_svg(records: &[RunRecord]) -> String {
    let cells: Vec<Cell> = summarize_cells(records)
        .into_iter()
        .filter(|c| c.ok > 0)
        .collect();
    let mut svg = svg_open("Client-observed blackout against dataset size (median, min–max)");
    let mut sizes: Vec<u32> = cells.iter().map(|c| c.dataset_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let y_max = cells
        .iter()
        .map(|c| c.blackout_ms.2 as f64 / 1000.0)
        .fold(1.0, f64::max)
        * 1.1;
    let pw = W - LEFT - RIGHT - 120.0;
    let ph = H - TOP - BOTTOM;
    let (s_min, s_max) = (
        f64::from(*sizes.first().unwrap_or(&64)).log2(),
        f64::from(*sizes.last().unwrap_or(&64)).log2(),
    );
    let x = |size: u32| {
        if s_max > s_min {
            LEFT + 30.0 + (pw - 60.0) * ((f64::from(size).log2() - s_min) / (s_max - s_min))
        } else {
            LEFT + pw / 2.0
        }
    };
    let y = |secs: f64| TOP + ph * (1.0 - secs / y_max);
    axes(&mut svg, pw, ph);
    let step = nice_step(y_max);
    let mut v = 0.0;
    while v <= y_max {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text><line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            LEFT - 6.0,
            y(v) + 4.0,
            y(v),
            LEFT + pw,
            y(v)
        );
        v += step;
    }
    for size in &sizes {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{size}</text>",
            x(*size),
            TOP + ph + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">Redis dataset (MiB, log scale)</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">blackout (s)</text>",
        LEFT + pw / 2.0,
        TOP + ph + 34.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, method) in Method::ALL.into_iter().enumerate() {
        let colour = COLOURS[i];
        let mine: Vec<&Cell> = cells.iter().filter(|c| c.method == method).collect();
        if mine.is_empty() {
            continue;
        }
        let points: Vec<String> = mine
            .iter()
            .map(|c| {
                format!(
                    "{:.1},{:.1}",
                    x(c.dataset_mib),
                    y(c.blackout_ms.0 as f64 / 1000.0)
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            points.join(" ")
        );
        for c in &mine {
            let cx = x(c.dataset_mib);
            let _ = writeln!(
                svg,
                "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"{colour}\"/><circle cx=\"{cx:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"><title>{} {} MiB: median {} ms</title></circle>",
                y(c.blackout_ms.1 as f64 / 1000.0),
                y(c.blackout_ms.2 as f64 / 1000.0),
                y(c.blackout_ms.0 as f64 / 1000.0),
                method.name(),
                c.dataset_mib,
                c.blackout_ms.0
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{:.0}\" y1=\"{ly:.0}\" x2=\"{:.0}\" y2=\"{ly:.0}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            LEFT + pw + 20.0,
            LEFT + pw + 44.0,
            LEFT + pw + 50.0,
            ly + 4.0,
            method.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::LatencySample;

    fn record(method: Method, size: u32, run: u32, blackout_ms: u64, ok: bool) -> RunRecord {
        RunRecord {
            method,
            dataset_mib: size,
            run,
            ok,
            blackout_ms,
            recovery_ms: blackout_ms + 500,
            phases: BTreeMap::from([("freeze_dump".into(), 100), ("restore".into(), 50)]),
            handover_bytes: 64 << 20,
            peak_mem_bytes: 512 << 20,
            guest_memory_mib: 1280,
            connection_survived: Some(true),
            lost: 0,
            duplicated: 0,
            dataset: None,
            from: "6.1.0-47-cloud-amd64".into(),
            to: "6.1.0-56-cloud-amd64".into(),
            error: (!ok).then(|| "guest: timed out".into()),
            console_log: String::new(),
            pre_copy_rounds: None,
            lazy_restore: false,
            pre_copy_bytes: Vec::new(),
            frozen_dump_bytes: 0,
            memory_back_ms: None,
            slowest_fault_ms: None,
            client_error: None,
        }
    }

    #[test]
    fn the_defaults_and_the_tuned_path_are_compared_with_the_naive_script() {
        let with_blackout = |method, blackout_ms, server_ms: u64, name: &str| RunRecord {
            phases: BTreeMap::from([(name.to_string(), server_ms)]),
            ..record(method, 64, 1, blackout_ms, true)
        };
        let mut naive = with_blackout(Method::Naive, 20_000, 12_000, "freeze_to_restored");
        naive.client_error = Some("9 commands unanswered after the drain time".into());
        let records = vec![
            with_blackout(Method::Defaults, 10_000, 9_000, "blackout"),
            with_blackout(Method::Overboot, 5_000, 4_000, "blackout"),
            naive,
        ];
        let md = markdown(&records);
        assert!(
            md.contains("64 MiB: overboot's defaults / naive = 0.50"),
            "{md}"
        );
        assert!(
            md.contains("64 MiB: overboot tuned (reserved RAM) / naive = 0.25"),
            "{md}"
        );
        assert!(
            md.contains("overboot's defaults / naive, freeze → restored on the server = 0.75"),
            "{md}"
        );
        assert!(
            md.contains("naive 64 MiB run 1: the client's connection stalled"),
            "{md}"
        );
    }

    #[test]
    fn cells_take_the_median_of_successful_runs_only() {
        let records = vec![
            record(Method::Overboot, 64, 1, 3000, true),
            record(Method::Overboot, 64, 2, 1000, true),
            record(Method::Overboot, 64, 3, 2000, true),
            record(Method::Overboot, 64, 4, 99_000, false),
            record(Method::Floor, 64, 1, 800, true),
        ];
        let cells = summarize_cells(&records);
        let ob = cells.iter().find(|c| c.method == Method::Overboot).unwrap();
        assert_eq!((ob.runs, ob.ok), (4, 3));
        assert_eq!(ob.blackout_ms, (2000, 1000, 3000));
        assert_eq!(ob.recovery_ms, Some(2500));
        let md = markdown(&records);
        assert!(
            md.contains("| overboot | 64 | 3/4 | 2.0 (1.0–3.0) | 2.5 | 64 | 512 |"),
            "{md}"
        );
        assert!(
            md.contains("\nRecovery: from the start of the blackout"),
            "{md}"
        );
        assert!(md.contains("64 MiB: overboot / floor = 2.50"), "{md}");
        assert!(md.contains("Failed runs"), "{md}");
        assert!(md.contains("guest: timed out"), "{md}");
    }

    #[test]
    fn results_from_before_the_recovery_measure_still_load_and_render() {
        let mut json = serde_json::to_value(record(Method::Overboot, 64, 1, 3000, true)).unwrap();
        json.as_object_mut().unwrap().remove("recovery_ms");
        let old: RunRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.recovery_ms, 0);
        let cells = summarize_cells(std::slice::from_ref(&old));
        assert_eq!(cells[0].recovery_ms, None);
        let md = markdown(&[old]);
        assert!(
            md.contains("| overboot | 64 | 1/1 | 3.0 (3.0–3.0) | – | 64 |"),
            "{md}"
        );
    }

    #[test]
    fn plots_draw_every_method_and_the_phases() {
        let records = vec![
            record(Method::Overboot, 64, 1, 3000, true),
            record(Method::Overboot, 512, 1, 9000, true),
            record(Method::Restart, 64, 1, 30_000, true),
        ];
        let svg = blackout_svg(&records);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">restart</text>"));
        let latency = LatencyFile {
            blackout_start_ms: 1000,
            samples: (0..100)
                .map(|i| LatencySample {
                    sent_ms: f64::from(i) * 20.0,
                    reply_ms: Some(f64::from(i) * 20.0 + 2.0),
                })
                .collect(),
        };
        let svg = latency_svg(&records[0], &latency);
        assert_eq!(svg.matches("<circle").count(), 100);
        assert!(svg.contains("<title>freeze_dump: 100 ms</title>"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn lazy_runs_say_when_every_page_was_back_and_the_slowest_fault() {
        let lazy = |run, back, slowest, ok| RunRecord {
            lazy_restore: true,
            memory_back_ms: Some(back),
            slowest_fault_ms: Some(slowest),
            ..record(Method::Overboot, 2048, run, 7000, ok)
        };
        let records = vec![
            lazy(1, 20_000, 3.5, true),
            lazy(2, 24_000, 12.25, true),
            lazy(3, 90_000, 99.0, false), // failed: not counted
            record(Method::Floor, 2048, 1, 3000, true),
        ];
        let md = markdown(&records);
        assert!(
            md.contains(
                "- overboot at 2048 MiB: every page back 22.0 s after the restore (median), the \
                 slowest fault answered in 12.2 ms.\n"
            ),
            "{md}"
        );
        assert!(!md.contains("floor at"), "{md}");
    }

    #[test]
    fn medians_of_even_counts_average_the_middle_pair() {
        assert_eq!(median(vec![4, 1, 3, 2]), 2);
        assert_eq!(median(vec![]), 0);
    }
}
