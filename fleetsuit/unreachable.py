"""Which peers have stopped answering, and since when (sans-I/O), for every
service that talks to peers (the dht's calls, the consensus peer streams).

One failed call is common (a restart, a dropped connection). A peer that
stays unreachable for longer than a timeout (a call's, an election's) is
worth a line in the log, so an operator hears of a
dead seed or a partition without every failed call being logged. The
runtime passes ``now`` and does the logging; this module reads no clock.
"""

from __future__ import annotations

MAX_PEERS = 4096  # addresses tracked at once; a flood of bad contacts cannot grow it


class Unreachable:
    """Since when each peer has failed with no answer in between."""

    def __init__(self, after_s: float, max_peers: int = MAX_PEERS) -> None:
        self._after_s = after_s
        self._max_peers = max_peers
        self._since: dict[str, float] = {}

    def failed(self, address: str, now: float) -> float | None:
        """Record a failed call to ``address`` (any key naming a peer): how
        long it has been unreachable once that exceeds ``after_s``, else None."""
        since = self._since.get(address)
        if since is None:
            if len(self._since) >= self._max_peers:
                self._since.clear()
            self._since[address] = now
            return None
        down_s = now - since
        return down_s if down_s > self._after_s else None

    def answered(self, address: str) -> None:
        """``address`` answered (or called us): it is reachable again."""
        self._since.pop(address, None)

    def __contains__(self, address: object) -> bool:
        return address in self._since

    def __len__(self) -> int:
        return len(self._since)
