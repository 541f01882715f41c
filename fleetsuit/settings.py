"""Typed service configuration, declared once (STYLE 7).

A service's config is one frozen dataclass whose fields are declared with
:func:`setting`: the default, the help text and (when it differs from the
rule) the environment variable live on the field, and nowhere else. From
that one declaration come the command-line flags (``--field-name``), the
environment variables (``PREFIX`` + ``FIELD_NAME``), the ``--help`` text
with every default, and :func:`document` for the README. A value is taken
from the flag if given, else from the environment, else the default; a
value that does not parse, an unknown variable with the service's prefix,
or a failed ``validate()`` is a :class:`ConfigError` naming the setting.
Derived values (two election timeouts, a default path under the data
directory) are properties of the config class, computed in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
C = TypeVar("C")

_META = "fleetsuit.setting"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclasses.dataclass(frozen=True)
class _Meta:
    help: str
    env: str | None
    parse: Callable[[str], Any] | None
    metavar: str | None
    flag: bool | str
    repeat: str | None = None


def setting(
    default: T,
    help: str,  # noqa: A002 (argparse's name)
    *,
    env: str | None = None,
    parse: Callable[[str], T] | None = None,
    metavar: str | None = None,
    flag: bool | str = True,
    repeat: str | None = None,
) -> T:
    """A config field: ``default``, ``help`` for ``--help`` and the docs,
    ``env`` to override the variable's name, ``parse`` for types other than
    str, int, float, bool and tuple[str, ...] (a comma-separated list);
    ``flag="--name"`` when the flag is not ``--field-name``; ``flag=False``
    for a setting read only from the environment; ``repeat=SEP`` for a flag
    that may be given several times, its values joined with SEP (the
    separator the variable uses) before ``parse``."""
    meta = _Meta(help, env, parse, metavar, flag, repeat)
    return dataclasses.field(default=default, metadata={_META: meta})


def _meta(f: dataclasses.Field[Any]) -> _Meta:
    meta = f.metadata.get(_META)
    if meta is None:
        raise TypeError(f"config field {f.name} is not declared with setting()")
    return meta  # type: ignore[no-any-return]


def env_name(prefix: str, f: dataclasses.Field[Any]) -> str:
    return _meta(f).env or prefix + f.name.upper()


def repeat_separator(f: dataclasses.Field[Any]) -> str | None:
    """The separator that joins a repeatable flag's values (``repeat=``), or
    None for a flag given once."""
    return _meta(f).repeat


def has_flag(f: dataclasses.Field[Any]) -> bool:
    """False for a setting read only from the environment (``flag=False``)."""
    return bool(_meta(f).flag)


def flag_name(f: dataclasses.Field[Any]) -> str:
    flag = _meta(f).flag
    return flag if isinstance(flag, str) else "--" + f.name.replace("_", "-")


def _parser_for(f: dataclasses.Field[Any], hint: Any) -> Callable[[str], Any]:
    meta = _meta(f)
    if meta.parse is not None:
        return meta.parse
    if hint is bool:
        return parse_bool
    if hint in (int, float, str):
        return hint  # type: ignore[no-any-return]
    origin = typing.get_origin(hint)
    if origin is tuple and typing.get_args(hint) == (str, Ellipsis):
        return _parse_list
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _parser_for(f, args[0])
    raise TypeError(f"config field {f.name}: give parse= for type {hint!r}")


def parse_bool(raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off, any case; ValueError otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (true/false)")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any], env_prefix: str) -> None:
    """One flag per setting, with its help, default and variable in ``--help``."""
    for f, hint in _fields(cls):
        meta = _meta(f)
        if not meta.flag:
            continue
        shown = _show(f.default)
        help_text = f"{meta.help} (default: {shown}; env {env_name(env_prefix, f)})"
        if hint is bool:
            parser.add_argument(flag_name(f), dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        elif meta.repeat is not None:
            parser.add_argument(flag_name(f), dest=f.name, default=None, metavar=meta.metavar,
                                action="append", help=f"{help_text}; repeatable")
        else:
            parser.add_argument(flag_name(f), dest=f.name, default=None, metavar=meta.metavar,
                                help=help_text)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if value == "":
        return "none"
    return str(value)


def from_sources(
    cls: type[C],
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str = "",
    *,
    strict_env: bool = True,
) -> C:
    """Build ``cls`` from parsed flags, then the environment, then defaults,
    and validate it. Flag values arrive as strings (or bools) and are
    parsed like environment values."""
    environ = os.environ if env is None else env
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    values: dict[str, Any] = {}
    known_env: set[str] = set()
    for f, hint in _fields(cls):
        name = env_name(env_prefix, f)
        known_env.add(name)
        parse = _parser_for(f, hint)
        raw_flag = given.get(f.name)
        separator = _meta(f).repeat
        if separator is not None and isinstance(raw_flag, list):
            raw_flag = separator.join(raw_flag)
        if raw_flag is not None:
            values[f.name] = _parse_value(parse, raw_flag, flag_name(f))
        elif environ.get(name, "") != "":
            values[f.name] = _parse_value(parse, environ[name], name)
    if strict_env and env_prefix:
        unknown = sorted(k for k in environ if k.startswith(env_prefix) and k not in known_env)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]} (see --help for the known ones)")
    try:
        config = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def _parse_value(parse: Callable[[str], Any], raw: Any, name: str) -> Any:
    if not isinstance(raw, str):
        return raw  # a bool from BooleanOptionalAction, or a value given in code
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None


def parse_config(
    cls: type[C],
    argv: Sequence[str] | None,
    env: Mapping[str, str] | None,
    *,
    prog: str,
    env_prefix: str,
    description: str = "",
) -> C:
    """Flags -> environment -> defaults, for a service's ``__main__``.
    A usage error exits with status 2 (argparse); a bad value raises
    ConfigError."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, cls, env_prefix)
    return from_sources(cls, parser.parse_args(argv), env, env_prefix)


def document(cls: type[Any], env_prefix: str) -> list[tuple[str, str, str, str]]:
    """(flag, variable, default, help) for every setting, for the docs."""
    rows = []
    for f, _hint in _fields(cls):
        meta = _meta(f)
        rows.append((flag_name(f) if meta.flag else "", env_name(env_prefix, f), _show(f.default), meta.help))
    return rows
