"""The upload rate limit: a token bucket over bytes (sans-I/O).

A node may cap the bytes it uploads (chunks served to peers and Get streams
to clients) so that spreading a release does not saturate a small edge link.
The bucket fills at ``rate`` bytes per second up to ``burst`` bytes. A
sender *reserves* the bytes it is about to send and is told how long to wait
first; the reservation is taken at once, so the balance may go negative and
later senders queue behind earlier ones (first come, first served, and a
message larger than ``burst`` is still sent, just later). This is the
reservation form of the classic token bucket (RFC 2697 §1 describes the
bucket; golang.org/x/time/rate's ``Reserve`` the reservation).

The clock is an argument: ``now`` is seconds on any monotonic clock. This
module does no I/O and never sleeps; the runtime (node.py) does the waiting.
"""

from __future__ import annotations

from services.dht.errors import InvalidArgument


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise InvalidArgument(f"token bucket rate must be positive, got {rate}")
        if burst <= 0:
            raise InvalidArgument(f"token bucket burst must be positive, got {burst}")
        self.rate = float(rate)  # bytes per second
        self.burst = float(burst)  # bytes
        self.tokens = float(burst)  # starts full; negative while senders queue
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:  # a clock that steps back adds nothing
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
            self._last = now

    def backlog_s(self, now: float) -> float:
        """Seconds until the reservations taken so far have all gone out."""
        self._refill(now)
        return max(0.0, -self.tokens) / self.rate

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; the seconds to wait before sending them (0: now)."""
        if nbytes < 0:
            raise InvalidArgument(f"cannot reserve {nbytes} bytes")
        self._refill(now)
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
