"""Training curves of several runs in one plot: `python -m bench.plot_runs --run LABEL=metrics.jsonl ... --out PNG`.

Each run is a `train_ray.py` metrics.jsonl (or rows written by hand from a recorded table: step, loss and
val_loss suffice). Left: training and validation BCE by step; right: validation accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (label, path) in enumerate(runs.items()):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        color = f"C{index}"
        for key, style, name in (("loss", "-", "train"), ("val_loss", "o--", "val")):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                left.plot(*zip(*points), style, color=color, label=f"{label}: {name} BCE")
        points = [(r["step"], r["val_accuracy"]) for r in rows if "val_accuracy" in r]
        if points:
            right.plot(*zip(*points), "o-", color=color, label=label)
    left.set(xlabel="step", ylabel="BCE", title="loss")
    left.legend(fontsize=8)
    right.set(xlabel="step", ylabel="validation accuracy", title="validation accuracy")
    right.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=PATH",
                        help="a run's label and its metrics.jsonl (repeat for each run)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--run {item!r}: expected LABEL=PATH")
        runs[label] = Path(path)
    plot(runs, args.out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
