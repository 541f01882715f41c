"""``python -m services.consensus``: one consensus process (config -> serve).
Exit codes: 0 stopped cleanly, 2 bad configuration, 3 cannot start or
stopped on a storage failure."""

from __future__ import annotations

import asyncio
import sys

from fleetsuit.logs import setup_logging
from fleetsuit.rpc import shutdown_event
from fleetsuit.settings import ConfigError

from .config import ConsensusConfig
from .errors import StorageError
from .server import serve


async def _main(config: ConsensusConfig) -> int:
    return await serve(config, shutdown=shutdown_event())


def main() -> int:
    try:
        config = ConsensusConfig.from_args()
    except ConfigError as exc:
        print(f"consensus: bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging("consensus", config.node_id, config.log_level, config.log_format)
    try:
        return asyncio.run(_main(config))
    except StorageError as exc:
        print(f"consensus[{config.node_id}]: {exc.code}: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:  # a port in use, an unreadable data directory
        print(f"consensus[{config.node_id}]: cannot start: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
