"""Command-line options that mirror a config dataclass, nested sub-configs included.

Every command of the project is `Config` + `main(config)`: the parser is derived from the dataclass, so a
field, its default and its help text live in one place and `--help` can never drift from the code.

- A field's help is its `metadata["help"]`; `--some-field` maps to `some_field`.
- A field whose type is itself a config dataclass (a sub-config: `faces: FaceConfig`) is flattened: its fields
  become options of their own (`--aligner`, not `--faces-aligner`), shown under a heading of their own in
  `--help`, and are gathered back into the sub-config. `metadata["omit"]` on such a field lists sub-fields the
  command sets itself (they keep their defaults and get no option). Two options of one name anywhere in the
  tree are a programming error, reported when the parser is built.
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


def _options(config_type: type, prefix: str = "", omit: tuple[str, ...] = ()):
    """(dest, field, type, is_optional) of every option of `config_type`, depth first; `dest` is the dotted path
    of the field in the config tree."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        if field.name in omit:
            continue
        kind, optional = _base_type(hints[field.name])
        if dataclasses.is_dataclass(kind):
            yield from _options(kind, f"{prefix}{field.name}.", tuple(field.metadata.get("omit", ())))
        else:
            yield f"{prefix}{field.name}", field, kind, optional


def _default(field: dataclasses.Field) -> tuple[bool, Any]:
    if field.default is not dataclasses.MISSING:
        return True, field.default
    if field.default_factory is not dataclasses.MISSING:
        return True, field.default_factory()
    return False, None


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type, positional: tuple[str, ...] = ()) -> None:
    """Add an option for every field of `config_type` (sub-configs flattened); names in `positional` are positional
    arguments instead."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    seen: dict[str, str] = {}
    for dest, field, kind, optional in _options(config_type):
        flag = "--" + field.name.replace("_", "-")
        if flag in seen:
            raise ValueError(f"{config_type.__name__}: option {flag} is both {seen[flag]} and {dest}")
        seen[flag] = dest
        target = parser if "." not in dest else _group(parser, groups, config_type, dest.rsplit(".", 1)[0])
        help_text = field.metadata.get("help", "")
        has_default, default = _default(field)
        if field.name in positional:
            target.add_argument(dest, type=_converter(kind), help=help_text, metavar=field.name)
        elif kind is bool:
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif typing.get_origin(kind) in (tuple, list):
            target.add_argument(flag, dest=dest, type=_converter(typing.get_args(kind)[0]), nargs="+",
                                default=default, metavar=field.name.upper(), help=help_text)
        else:
            choices = field.metadata.get("choices")
            target.add_argument(flag, dest=dest, type=_converter(kind), default=default, choices=choices,
                                metavar=None if choices else field.name.upper(), required=not has_default,
                                help=help_text + (" (optional)" if optional else ""))


def _group(parser, groups: dict, config_type: type, path: str):
    """The --help section of the sub-config at `path`, titled by that field's help (or its class's summary)."""
    if path not in groups:
        owner, field = config_type, None
        for name in path.split("."):
            field = next(f for f in dataclasses.fields(owner) if f.name == name)
            owner = _base_type(typing.get_type_hints(owner)[name])[0]
        title = field.metadata.get("help") or (owner.__doc__ or owner.__name__).strip().split("\n")[0]
        groups[path] = parser.add_argument_group(title)
    return groups[path]


def _converter(kind: Any):
    if kind is Path:
        return Path
    if kind in (int, float, str):
        return kind
    return str


def config_from_args(config_type: type[C], args: argparse.Namespace) -> C:
    """The config (sub-configs rebuilt from their flattened options) from parsed arguments."""
    values = {}
    for dest, *_ in _options(config_type):
        value = getattr(args, dest)
        values[dest] = tuple(value) if isinstance(value, list) else value
    return _build(config_type, values)


def _build(config_type: type[C], values: dict[str, Any], prefix: str = "") -> C:
    """`config_type` from the option values by dotted path; a field without a value keeps its default."""
    hints = typing.get_type_hints(config_type)
    kwargs = {}
    for field in dataclasses.fields(config_type):
        kind, _ = _base_type(hints[field.name])
        path = prefix + field.name
        if dataclasses.is_dataclass(kind):
            kwargs[field.name] = _build(kind, values, path + ".")
        elif path in values:
            kwargs[field.name] = values[path]
    return config_type(**kwargs)


def parse_config(config_type: type[C], description: str, argv: list[str] | None = None,
                 positional: tuple[str, ...] = ()) -> C:
    """`config_type` from the command line (`argv`, else sys.argv)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, config_type, positional)
    return config_from_args(config_type, parser.parse_args(argv))


def parse_command(commands: dict[str, tuple[type, str]], prog: str, description: str, epilog: str = "",
                  argv: list[str] | None = None, positional: tuple[str, ...] = ()) -> tuple[str, Any]:
    """A command with subcommands, each `name: (config type, one-line help)`: (the name chosen, its config)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, (config_type, help_text) in commands.items():
        sub = subcommands.add_parser(name, help=help_text, description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_config_arguments(sub, config_type, positional)
    args = parser.parse_args(argv)
    return args.command, config_from_args(commands[args.command][0], args)
