"""``python -m services.dht``: config (flags > environment > defaults) -> serve.

Exit codes: 0 stopped cleanly, 2 bad configuration (the message names the
setting), 3 cannot start (address taken, store locked or unreadable).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence

from fleetsuit.cli import EXIT_USAGE
from fleetsuit.logs import setup_logging
from fleetsuit.settings import ConfigError
from services.dht.config import DhtConfig
from services.dht.server import serve


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        config = DhtConfig.from_args(argv, env)
    except ConfigError as exc:
        print(f"dht: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging("dht", config.node_id, config.log_level, config.log_format)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
