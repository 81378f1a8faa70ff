"""`python -m pipelines.synthetic --out DIR --num-videos N --seed S [--corrupt K] [--splice K]`"""

from __future__ import annotations

import sys
import time

from pipelines.core.cli import parse_config
from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus, summarize


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(SyntheticConfig, __doc__.strip("`") + ": a synthetic talking-face corpus with "
                              "known audio-video offsets, written with manifest.jsonl.", argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = generate_corpus(config)
    print(summarize(rows, time.perf_counter() - started))
    print(f"manifest: {config.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
