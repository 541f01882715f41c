"""``python -m services.gateway``: configuration in, service running.

Exit codes (``fleetsuit.cli``): 0 after a graceful stop, 2 for a bad
setting (one line naming it) or bad usage, 3 when the service cannot start.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence

from fleetsuit.cli import EXIT_USAGE
from fleetsuit.logs import setup_logging
from fleetsuit.settings import ConfigError

from .config import GatewayConfig
from .server import SERVICE, serve


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Flags, then ``env`` (``os.environ`` when None), then defaults."""
    return GatewayConfig.from_args(argv, env)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        config = parse_config(argv, env)
    except ConfigError as exc:
        print(f"{SERVICE}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(SERVICE, config.node_id, config.log_level, config.log_format)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
