"""Reading typed settings from the environment.

Each service's config dataclass has a ``from_env()`` that is the only reader
of environment variables; these helpers keep those readers short and make a
bad value a clear error naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fleetsuit.settings import ConfigError

__all__ = ["ConfigError", "env_bool", "env_int", "env_str"]


def env_str(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    source = os.environ if env is None else env
    return source.get(name, default)


def env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    raw = env_str(name, "", env)
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    raw = env_str(name, "", env).strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean")
