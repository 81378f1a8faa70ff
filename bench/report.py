"""The shared tail of every bench command: options from its config dataclass, a table printed, JSON written."""

from __future__ import annotations

import json
import sys
from typing import Callable


def parse_bench_config(config_type: type, description: str, argv: list[str] | None):
    """The bench's config from the command line, or None after one line on stderr when a value is invalid."""
    from pipelines.core.cli import parse_config

    try:
        return parse_config(config_type, description, argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def bench_main(config_type: type, description: str, run: Callable, format_table: Callable[[dict], str],
               argv: list[str] | None = None) -> int:
    """Parse `config_type` from the command line, run the bench, print its table, write its result to the
    config's `out`; a bad option or input is one line on stderr and exit code 2."""
    config = parse_bench_config(config_type, description, argv)
    if config is None:
        return 2
    try:
        result = run(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(result, indent=1))
    return 0
