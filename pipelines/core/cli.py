"""Command-line options that mirror a config dataclass one to one.

Every command of the project is `Config` + `main(config)`: the parser is derived from the dataclass, so a
field, its default and its help text live in one place and `--help` can never drift from the code.
A field's help is its `metadata["help"]`; `--some-field` maps to `some_field`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """The scalar type behind `X | None` / `Optional[X]`, and whether None is allowed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def build_parser(config_type: type, description: str, positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, config_type, positional)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type, positional: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        kind, optional = _base_type(hints[field.name])
        help_text = field.metadata.get("help", "")
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        if field.name in positional:
            parser.add_argument(field.name, type=_converter(kind), help=help_text)
            continue
        flag = "--" + field.name.replace("_", "-")
        choices = field.metadata.get("choices")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        elif typing.get_origin(kind) in (tuple, list):
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, dest=field.name, type=_converter(item), nargs="+", default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=_converter(kind), default=default, choices=choices,
                                required=not has_default, help=help_text + (" (optional)" if optional else ""))


def _converter(kind: Any):
    if kind is Path:
        return Path
    if kind in (int, float, str):
        return kind
    return str


def config_from_args(config_type: type[C], args: argparse.Namespace) -> C:
    values = {}
    for field in dataclasses.fields(config_type):
        value = getattr(args, field.name)
        if isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return config_type(**values)


def parse_config(config_type: type[C], description: str, argv: list[str] | None = None,
                 positional: tuple[str, ...] = ()) -> C:
    parser = build_parser(config_type, description, positional)
    return config_from_args(config_type, parser.parse_args(argv))
