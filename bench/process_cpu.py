"""Where a run's CPU time went, by kind of process, from `ps` samples taken while it ran.

    (while :; do ps -eo pid=,cputimes=,args=; echo --; sleep 1; done) > ps.txt &   # beside the run; kill it after
    python -m bench.process_cpu ps.txt

Ray titles an actor's process after its class ("ray::MapWorker(MapBatches(DecodePool)).submit" while it runs a
task), so preprocessing's pools, Ray's own daemons and the driver come out apart: Ray Data's stats count only
what its tasks do, not an actor's idle spinning nor Ray's processes. A process's CPU time is its last sample less
its first (processes there before the run started count only what they spent during it); one that ended between
samples loses up to a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

RAY_METHOD = re.compile(r"\.[A-Za-z_][A-Za-z_0-9]*$")  # ".submit", ".__init__": the task, not the actor


def process_kind(args: str) -> str:
    """A process's command line -> its kind: a Ray worker's title without the method it runs, else the program
    (with the module or `-c` of a Python one)."""
    words = args.split()
    if words[0].startswith("ray::"):
        return RAY_METHOD.sub("", words[0])
    program = Path(words[0]).name
    if program.startswith("python") and len(words) > 2 and words[1] in ("-m", "-c"):
        return f"{program} {words[1]} {words[2][:40]}"
    return program


def cpu_by_kind(lines) -> dict[str, tuple[int, int]]:
    """`ps -eo pid=,cputimes=,args=` samples, each ended by a line "--" -> {kind: (processes, CPU-s)}."""
    before, last, kinds = {}, {}, {}
    first_sample = True
    for line in lines:
        if line.strip() == "--":
            first_sample = False
            continue
        fields = line.split(None, 2)
        if len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        pid, seconds = int(fields[0]), int(fields[1])
        if first_sample:
            before[pid] = seconds
        last[pid] = seconds
        # The title changes with the task: the latest wins, except a bracketed one, which ps shows for a process
        # ending (its command line gone; the name cut to 15 characters).
        if not (fields[2].startswith("[") and pid in kinds):
            kinds[pid] = process_kind(fields[2])
    totals = defaultdict(lambda: [0, 0])
    for pid, seconds in last.items():
        totals[kinds[pid]][0] += 1
        totals[kinds[pid]][1] += seconds - before.get(pid, 0)
    return {kind: (count, cpu) for kind, (count, cpu) in totals.items()}


def format_table(totals: dict[str, tuple[int, int]], top: int = 15) -> str:
    rows = sorted(totals.items(), key=lambda item: -item[1][1])
    overall = sum(cpu for _, cpu in totals.values()) or 1
    lines = [f"{'CPU-s':>7} {'share':>6} {'procs':>5}  kind"]
    lines += [f"{cpu:7d} {cpu / overall:6.1%} {count:5d}  {kind}" for kind, (count, cpu) in rows[:top]]
    lines.append(f"{sum(cpu for _, cpu in totals.values()):7d} {'':6} {sum(c for c, _ in totals.values()):5d}  all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.process_cpu", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help="the ps samples (pid, CPU seconds, command line per line)")
    parser.add_argument("--top", type=int, default=15, help="kinds shown, most CPU first")
    parser.add_argument("--json", type=Path, default=None, help="also write {kind: {processes, cpu_s}} here")
    args = parser.parse_args(argv)
    if not args.samples.is_file():
        parser.error(f"{args.samples} is not a file: give the ps samples taken beside the run")
    with args.samples.open(errors="replace") as samples:
        totals = cpu_by_kind(samples)
    print(format_table(totals, args.top))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({kind: {"processes": count, "cpu_s": cpu} for kind, (count, cpu) in
                                         sorted(totals.items(), key=lambda item: -item[1][1])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
