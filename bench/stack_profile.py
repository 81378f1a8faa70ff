"""Where preprocessing's pools spend their time, read from py-spy's sampled stacks.

    py-spy record --subprocesses --nonblocking --rate 10 --format raw -o STACKS -- python -m pipelines.preprocess ...
    python -m bench.stack_profile STACKS [--rate 10] [--json OUT]

py-spy follows the command's whole process tree (Ray's workers are the raylet's children) and writes one line per
distinct stack with its count of samples, threads that sleep in Python left out (one blocked inside a native call,
as an idle Ray worker's main loop, still counts). `bench.process_cpu` says how much CPU each
kind of process used; this says on what: per stage (the stage class on the stack: decoding, faces, samples and the
part writer; else Ray's work in a worker, or the driver and Ray's Python daemons), the functions running when sampled (leaves) and the
deepest frame of our own code. Seconds are samples over the rate: time a thread was seen awake, not CPU time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

# The stage class on a stack names the pool; one without any is Ray's own work (in an actor) or the driver's.
STAGES = {"DecodeStage.": "decode", "FaceStage.": "faces", "SampleStage.": "samples", "PartWriter.": "samples"}
OUR_CODE = ("pipelines/", "model/", "bench/")
FRAME = re.compile(r"^[^\s\"]+ \(.+:\d+\)$")  # "function (file.py:line)"


def parse_line(line: str) -> tuple[list[str], int] | None:
    """A raw line -> (its Python frames outermost first, samples); None for a malformed one."""
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not count.isdigit():
        return None
    # The processes on the chain come first, each with its command line, which may hold ';' or '"' itself: only
    # the parts shaped as frames count.
    return [part for part in stack.split(";") if FRAME.match(part)], int(count)


def stage_of(frames: list[str]) -> str:
    for frame in frames:
        for marker, stage in STAGES.items():
            if frame.startswith(marker):
                return stage
    # Every Ray worker's outermost frame is its default_worker.py; the driver and Ray's Python daemons have none.
    if any("(ray/_private/workers/default_worker.py" in frame for frame in frames):
        return "ray worker, no stage on the stack"
    return "driver and Ray's daemons"


def frame_name(frame: str) -> str:
    """"f (path/file.py:12)" -> "f (path/file.py)": lines of one function counted together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(lines, rate: float) -> dict:
    samples = Counter()
    leaves, ours = defaultdict(Counter), defaultdict(Counter)
    for line in lines:
        parsed = parse_line(line)
        if parsed is None or not parsed[0]:
            continue
        frames, count = parsed
        stage = stage_of(frames)
        samples[stage] += count
        leaves[stage][frame_name(frames[-1])] += count
        own = [frame for frame in frames if any(f"({prefix}" in frame for prefix in OUR_CODE)]
        if own:
            ours[stage][frame_name(own[-1])] += count
    return {stage: {"seconds": round(count / rate, 1),
                    "leaves": {name: round(n / rate, 1) for name, n in leaves[stage].most_common(12)},
                    "our_code": {name: round(n / rate, 1) for name, n in ours[stage].most_common(12)}}
            for stage, count in samples.most_common()}


def format_summary(summary: dict) -> str:
    lines = []
    for stage, found in summary.items():
        lines.append(f"{stage}: {found['seconds']} s awake")
        for title, key in (("running", "leaves"), ("in our code", "our_code")):
            for name, seconds in list(found[key].items())[:8]:
                lines.append(f"  {title:>11} {seconds:7.1f} s  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stack_profile", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", type=Path, help="py-spy's --format raw output")
    parser.add_argument("--rate", type=float, default=10.0, help="the samples per second py-spy was given")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if not args.stacks.is_file():
        parser.error(f"{args.stacks}: no such file (py-spy record ... --format raw -o {args.stacks} -- COMMAND)")
    with args.stacks.open(errors="replace") as lines:
        summary = summarize(lines, args.rate)
    print(format_summary(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
