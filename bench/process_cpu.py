"""Where a command's CPU time went, by kind of process.

    python -m bench.process_cpu [--json OUT] [--interval-s 1] -- COMMAND [ARGS...]

Runs COMMAND under `bench.preprocess`'s process-tree sampler (its `TreeSampler`: /proc read every interval, each
process's latest user + system time, a process's last interval before it exits missed) and adds the time up by
kind. Ray titles an actor's process after its class ("ray::MapWorker(MapBatches(DecodePool)).submit" while it runs
a task), so preprocessing's pools, Ray's own daemons and the driver come out apart: Ray Data's stats count only
what its tasks do, not an actor's idle spinning nor Ray's processes. Exits with COMMAND's status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bench.preprocess import TreeSampler

RAY_METHOD = re.compile(r"\.[A-Za-z_][A-Za-z_0-9]*$")  # ".submit", ".__init__": the task, not the actor


def process_kind(name: str) -> str:
    """A process's name as `bench.preprocess.process_name` gives it -> its kind: a Ray worker's title without the
    method it runs, else the name."""
    return RAY_METHOD.sub("", name) if name.startswith("ray::") else name


def cpu_by_kind(names: dict[int, str], ticks: dict[int, int], ticks_per_s: float) -> dict[str, tuple[int, float]]:
    """Per pid its name and CPU ticks -> {kind: (processes, CPU-s)}."""
    totals = defaultdict(lambda: [0, 0])
    for pid, spent in ticks.items():
        kind = process_kind(names.get(pid, "?"))
        totals[kind][0] += 1
        totals[kind][1] += spent
    return {kind: (count, spent / ticks_per_s) for kind, (count, spent) in totals.items()}


def format_table(totals: dict[str, tuple[int, float]], top: int = 15) -> str:
    rows = sorted(totals.items(), key=lambda item: -item[1][1])
    overall = sum(cpu for _, cpu in totals.values())
    lines = [f"{'CPU-s':>7} {'share':>6} {'procs':>5}  kind"]
    lines += [f"{cpu:7.0f} {cpu / (overall or 1):6.1%} {count:5d}  {kind}" for kind, (count, cpu) in rows[:top]]
    lines.append(f"{overall:7.0f} {'':6} {sum(c for c, _ in totals.values()):5d}  all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.process_cpu", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write {kind: {processes, cpu_s}} here")
    parser.add_argument("--interval-s", type=float, default=1.0, help="how often /proc is read")
    parser.add_argument("--top", type=int, default=15, help="kinds shown, most CPU first")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    process = subprocess.Popen(command)
    sampler = TreeSampler(process.pid, args.interval_s, pss_interval_s=float("inf"))  # PSS once: not needed here
    sampler.start()
    code = process.wait()
    sampler.stop()
    totals = cpu_by_kind(sampler.names, sampler.cpu_ticks, os.sysconf("SC_CLK_TCK"))
    print(format_table(totals, args.top))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({kind: {"processes": count, "cpu_s": round(cpu, 2)} for kind, (count, cpu) in
                                         sorted(totals.items(), key=lambda item: -item[1][1])}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
