"""Who a device is: its enrolment as the ledger holds it, looked up through
the ledger port and kept in memory, and the registration check.

Owns the enrolment side of a session (issue 12 §1, as Mender and hawkBit
do): :func:`admit` decides from the enrolment, the Register and the
challenge whether a device is in, must be recorded as pending, or is
refused, and :class:`EnrolmentCache` answers lookups without a ledger read
per registration. The cache is invalidated by the ledger (``ledger_view``
names the devices of every enrolment and events entry it sees) and its
entries also expire, so a missed invalidation (a watch that broke) heals.
Not here: sending anything to the device or the ledger.
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetsuit import device_auth

from .errors import BadSignature, DevicePending, DeviceRejected, DeviceRevoked, DeviceUnknown
from .model import ACCEPTED, PENDING, REJECTED, REVOKED, Enrolment

if TYPE_CHECKING:
    from .ports import DevicePort

class Admission(enum.Enum):
    ACCEPTED = "accepted"  # enrolled, and it proved possession of its key
    REQUEST = "request"  # unknown, with a key that signed: record it as pending


def admit(
    enrolment: Enrolment | None,
    *,
    gateway_id: str,
    device_id: str,
    nonce: bytes,
    signature: bytes,
    public_key_pem: bytes,
) -> Admission:
    """The registration check. Raises the refusal (DeviceUnknown, DevicePending,
    DeviceRejected, DeviceRevoked, BadSignature) or says what to do.

    The signed message binds this gateway's id and its fresh nonce
    (``fleetsuit.device_auth``), so a signature made for another gateway or
    an earlier challenge does not verify here."""
    message = device_auth.registration_message(gateway_id, device_id, nonce)
    if enrolment is None:
        if not public_key_pem:
            raise DeviceUnknown(f"device {device_id} is not enrolled")
        # The key must sign too: nobody records pending requests for keys
        # they do not hold.
        if not _verifies(public_key_pem, message, signature):
            raise BadSignature(f"device {device_id}: the signature does not verify with its key")
        return Admission.REQUEST
    if enrolment.state == PENDING:
        raise DevicePending(f"device {device_id} is waiting for an operator to accept it")
    if enrolment.state == REJECTED:
        raise DeviceRejected(f"device {device_id} was rejected")
    if enrolment.state == REVOKED:
        raise DeviceRevoked(f"device {device_id} was revoked")
    if enrolment.state != ACCEPTED:
        raise DeviceUnknown(f"device {device_id} has enrolment state {enrolment.state!r}")
    if not _verifies(enrolment.public_key_pem, message, signature):
        raise BadSignature(
            f"device {device_id}: the signature does not verify with its enrolled key"
        )
    return Admission.ACCEPTED


def _verifies(public_key_pem: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key = device_auth.load_public_key(public_key_pem)
    except device_auth.DeviceKeyError:
        return False
    return device_auth.verify(key, message, signature)


class RequestLimiter:
    """At most one enrolment request per device id every ``interval_s``: a
    device retrying while the request commits, or a flood of made-up ids,
    must not each put an entry in the ledger. Bounded: the oldest ids go."""

    def __init__(self, interval_s: float = 60.0, max_entries: int = 100_000) -> None:
        self._interval_s = interval_s
        self._max_entries = max_entries
        self._last: OrderedDict[str, float] = OrderedDict()

    def allow(self, device_id: str, now_s: float) -> bool:
        last = self._last.get(device_id)
        if last is not None and now_s - last < self._interval_s:
            return False
        self._last[device_id] = now_s
        self._last.move_to_end(device_id)
        while len(self._last) > self._max_entries:
            self._last.popitem(last=False)
        return True

    def forget(self, device_id: str) -> None:
        """The request did not reach the ledger: let the next try submit it."""
        self._last.pop(device_id, None)


class EnrolmentCache:
    """Enrolments by device id, read through ``port`` (``None``: not
    enrolled) and kept until the ledger changes them, for at most ``ttl_s``.

    Concurrent lookups of one device share one read; a read that was under
    way when the device was invalidated is answered but not kept (it may
    predate the change)."""

    def __init__(
        self,
        port: DevicePort,
        *,
        max_entries: int = 100_000,
        ttl_s: float = 300.0,
        clock: Callable[[], float],
    ) -> None:
        self._port = port
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Enrolment | None, float]] = OrderedDict()
        self._reads: dict[str, asyncio.Task[Enrolment | None]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, device_id: str) -> Enrolment | None:
        entry = self._entries.get(device_id)
        if entry is not None and self._clock() < entry[1]:
            self._entries.move_to_end(device_id)
            self.hits += 1
            return entry[0]
        self.misses += 1
        task = self._reads.get(device_id)
        if task is None:
            task = asyncio.ensure_future(self._read(device_id))
            self._reads[device_id] = task
        return await asyncio.shield(task)

    async def _read(self, device_id: str) -> Enrolment | None:
        me = asyncio.current_task()
        try:
            value = await self._port.get_device(device_id)
        finally:
            current = self._reads.get(device_id) is me
            if current:
                del self._reads[device_id]
        if current:
            self._entries[device_id] = (value, self._clock() + self._ttl_s)
            self._entries.move_to_end(device_id)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value

    def invalidate(self, device_id: str) -> None:
        self._entries.pop(device_id, None)
        self._reads.pop(device_id, None)  # its answer may predate the change: not kept

    def clear(self) -> None:
        """Forget everything (the ledger watch broke: changes may have been missed)."""
        self._entries.clear()
        self._reads.clear()

    def __len__(self) -> int:
        return len(self._entries)
