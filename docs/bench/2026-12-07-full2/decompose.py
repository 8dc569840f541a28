#!/usr/bin/env python3
"""Where each switch of a benchmark run went, from the host-timed guest consoles.

Usage: decompose.py BENCH_OUT_DIR  (a directory `overboot-lab bench` wrote: results.json and
console-<method>-<MiB>-<run>.timed.log). Prints a Markdown table: for each overboot and floor run,
the freeze to the jump (overboot), the jump to the new kernel's /init and how much of that passed
before its clock started (the kexec, the purgatory, the decompression), init to the agent's start
(modules, mounts), the agent until its report (overboot), and the client-observed blackout.
"""
import json
import re
import sys
from pathlib import Path

TIMED = re.compile(r"^\s*([0-9.]+) (.*)$")


def lines(path):
    for raw in path.read_text(errors="replace").splitlines():
        m = TIMED.match(raw)
        if m:
            yield float(m.group(1)), m.group(2)


def first(events, pattern, after=0.0):
    for t, text in events:
        if t >= after and pattern in text:
            return t, text
    return None, None


def uptime(text):
    m = re.search(r"uptime=([0-9.]+)", text or "")
    return float(m.group(1)) if m else None


def main(out):
    runs = json.loads((out / "results.json").read_text())
    rows = []
    for r in runs:
        method, mib, run = r["method"], r["dataset_mib"], r["run"]
        if method not in ("overboot", "floor") or not r.get("ok"):
            continue
        log = out / f"console-{method}-{mib}-{run}.timed.log"
        if not log.exists():
            continue
        events = list(lines(log))
        t_jump, _ = first(events, "jumping into")
        if t_jump is None:
            continue
        t_init, init_text = first(events, "@@LAB init", t_jump)
        pre_clock = (t_init - t_jump) - uptime(init_text) if t_init else None
        row = {
            "method": method,
            "mib": mib,
            "run": run,
            "blackout": r["blackout_ms"] / 1000,
            "jump_init": t_init - t_jump if t_init else None,
            "pre_clock": pre_clock,
        }
        if method == "overboot":
            t_freeze, _ = first(events, "freezing and dumping")
            t_agent, _ = first(events, "@@LAB resume-start", t_jump)
            phases = r.get("phases", {})
            row["freeze_jump"] = t_jump - t_freeze if t_freeze else None
            row["init_agent"] = t_agent - t_init if t_agent and t_init else None
            row["agent"] = phases.get("agent_total", 0) / 1000
            row["freeze_dump"] = phases.get("freeze_dump", 0) / 1000
            row["restore"] = phases.get("restore", 0) / 1000
        rows.append(row)

    def f(v):
        return "" if v is None else f"{v:.2f}"

    print("| method | MiB | run | blackout | freeze→jump (of it freeze_dump) | jump→/init (before the clock) | /init→agent | agent (of it restore) |")
    print("|---|---:|---:|---:|---|---|---:|---|")
    for w in sorted(rows, key=lambda w: (w["mib"], w["method"] != "overboot", w["run"])):
        fj = f"{f(w.get('freeze_jump'))} ({f(w.get('freeze_dump'))})" if w["method"] == "overboot" else ""
        ag = f"{f(w.get('agent'))} ({f(w.get('restore'))})" if w["method"] == "overboot" else ""
        print(
            f"| {w['method']} | {w['mib']} | {w['run']} | {f(w['blackout'])} | {fj} | "
            f"{f(w['jump_init'])} ({f(w['pre_clock'])}) | {f(w.get('init_agent'))} | {ag} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench"))
