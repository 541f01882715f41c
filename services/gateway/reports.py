"""Device reports into the ledger (issue 12 §5): each Report a device sends
becomes ONE device-events entry, keyed ``("device/<id>", report seq)``, so
a resend after a failover is the same key and is applied once.

The acknowledgement rule (issue 12 §2: "nothing it reported is lost"): a
``ReportAck`` goes back only once the entry committed, or the ledger says
the key is already applied. An answer whose outcome is open (OUTCOME_UNKNOWN,
no leader, a broken stream, overload) gets no ack at all: the device keeps
the report and sends it again, here or to its next gateway. A refusal is
acked with its code, so the device stops resending something the ledger
will never take.

Owns the write types the gateway puts in the ledger (events and enrolment
requests); their protobuf form is ``convert.write_to_pb``; the submission
itself goes through the ledger port (``fleetsuit.ledger_client.SubmitBatcher``
in production).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetsuit.ledger_client import StreamBroken, SubmitFailed
from fleetsuit.logs import RateLimitedLog

from .model import DeviceEventsWrite, ReportEvent

if TYPE_CHECKING:
    from .metrics import GatewayMetrics
    from .ports import SubmitPort

log = logging.getLogger(__name__)

# Answers after which the entry may still commit, or may commit if sent
# again: the device resends (no ack).
RETRY_CODES = frozenset({"OUTCOME_UNKNOWN", "NO_LEADER", "OVERLOADED", "NOT_LEADER", "UNAVAILABLE"})
# The key was used with other bytes: the same report (same device, same
# seq) was committed before through another gateway, whose id the events
# carry. Only gateways write under "device/<id>" and a device never reuses a
# seq, so this is the duplicate answer in another form.
ALREADY_APPLIED = "IDEMPOTENCY_KEY_REUSED"


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """What to tell the device: an ack (error_code "" once committed)."""

    seq: int
    error_code: str = ""
    error_message: str = ""


class ReportSink:
    """Submits device reports and says which to acknowledge."""

    def __init__(self, port: SubmitPort, metrics: GatewayMetrics, gateway_id: str) -> None:
        self._port = port
        self._metrics = metrics
        self._gateway_id = gateway_id
        self._retries = RateLimitedLog(log, interval_s=10.0)

    async def submit(
        self, device_id: str, seq: int, events: tuple[ReportEvent, ...]
    ) -> ReportAnswer | None:
        """The ack to send, or None: no ack, the device resends."""
        started = time.perf_counter()
        write = DeviceEventsWrite(device_id, seq, self._gateway_id, events)
        try:
            committed = await self._port.submit(write)
        except SubmitFailed as exc:
            if exc.code == ALREADY_APPLIED:
                self._metrics.reports.labels("duplicate").inc()
                return ReportAnswer(seq)
            if exc.code in RETRY_CODES or not exc.definite:
                self._retry(device_id, seq, exc.code)
                return None
            self._metrics.reports.labels("refused").inc()
            return ReportAnswer(seq, exc.code, exc.message)
        except StreamBroken:
            self._retry(device_id, seq, "STREAM_BROKEN")
            return None
        self._metrics.report_commit_seconds.observe(time.perf_counter() - started)
        self._metrics.reports.labels("duplicate" if committed.duplicate else "committed").inc()
        return ReportAnswer(seq)

    def _retry(self, device_id: str, seq: int, code: str) -> None:
        self._metrics.reports.labels("retry").inc()
        self._retries.log(
            code, logging.INFO, "report %d of %s not committed (%s): the device resends",
            seq, device_id, code,
        )  # fmt: skip
