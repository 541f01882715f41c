"""The gateway's clock as seen from a device (sans-I/O: times are arguments).

A switch time is gateway time, so that a fleet switches together however
far off each device's own clock is. Each gateway heartbeat that answers a
device heartbeat carries the device time it answers and the gateway's time
when it answered; as in NTP's clock filter, the offset is estimated as
gateway time - midpoint of send and receive, and the sample with the
lowest round trip among the recent ones is kept (its error is at most half
its round trip). ``gateway_now`` subtracts that error bound, so a device
waiting for a gateway time never acts before it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW = 8  # recent samples the estimate is chosen from


@dataclass(frozen=True, slots=True)
class Sample:
    offset_ms: float  # gateway time - device time
    rtt_ms: int


class ClockOffset:
    """The estimate of gateway time - device time."""

    def __init__(self, window: int = WINDOW) -> None:
        self._samples: deque[Sample] = deque(maxlen=window)
        self._best: Sample | None = None

    def observe(self, sent_local_ms: int, received_local_ms: int, gateway_ms: int) -> None:
        """A gateway time stamped between a device's send and receive."""
        if received_local_ms < sent_local_ms:
            return  # the device's clock stepped back: the sample is meaningless
        midpoint = (sent_local_ms + received_local_ms) / 2
        self._samples.append(Sample(gateway_ms - midpoint, received_local_ms - sent_local_ms))
        self._best = min(self._samples, key=lambda s: s.rtt_ms)

    def reset(self) -> None:
        """A new gateway: its clock may differ from the last one's."""
        self._samples.clear()
        self._best = None

    @property
    def known(self) -> bool:
        return self._best is not None

    @property
    def offset_ms(self) -> float:
        return 0.0 if self._best is None else self._best.offset_ms

    @property
    def error_ms(self) -> int:
        """The bound on the estimate's error: half the best round trip, rounded up."""
        return 0 if self._best is None else (self._best.rtt_ms + 1) // 2

    def gateway_now(self, local_ms: int) -> int:
        """A gateway time that has certainly been reached at ``local_ms``
        (the estimate minus its error bound)."""
        return int(local_ms + self.offset_ms) - self.error_ms - 1 if self._best else local_ms

    def local_at(self, gateway_ms: int) -> int:
        """The device time at which ``gateway_now`` reaches ``gateway_ms``."""
        if self._best is None:
            return gateway_ms
        return int(gateway_ms - self.offset_ms) + self.error_ms + 3
