"""The errors of ``fleetsuit.client``, and the one function that turns a
failed gRPC call into them.

Every error has the server's stable ``code`` (``UNTRUSTED_KEY``,
``NO_LEADER``, ...; the client's own for transport failures:
``UNREACHABLE``, or the gRPC status name), a ``message`` and ``definite``:
whether the outcome of the call is known. Only a write whose outcome is
unknown may still take effect; the client retries those with the same
idempotency key and the same bytes, and reports ``OutcomeUnknownError`` if
its retries run out before it learns the outcome.

The consensus service sends its code and the outcome in trailing metadata
(``fleetsuit-error-code``, ``fleetsuit-outcome: definite|unknown``) and
``CODE: message`` as the details; the dht and manifest services send the
code only.
"""

from __future__ import annotations

import grpc

ERROR_CODE_KEY = "fleetsuit-error-code"
OUTCOME_KEY = "fleetsuit-outcome"

# A release or device entry refused by the checks (before proposal or when
# applied): nothing of it takes effect, and a retry gets the same answer.
REFUSAL_CODES = frozenset({
    "UNTRUSTED_KEY", "STALE_SEQUENCE", "PAYLOAD_MISSING", "DIGEST_MISMATCH", "REVOKED",
    "DUPLICATE_RELEASE", "INVALID_RELEASE", "UNKNOWN_RELEASE", "INVALID_TRANSITION",
    "NO_TRUST_ANCHORS", "ANCHORS_REFUSED", "RELEASE_REFUSED",
    "DEVICE_REFUSED", "INVALID_DEVICE", "DEVICE_EXISTS", "DEVICE_UNKNOWN", "DEVICE_STATE",
    "DEVICE_NOT_ACCEPTED", "INVALID_EVENT",
})
# Worth another attempt with the same key: nothing happened yet
# (NO_LEADER, CHECK_UNAVAILABLE, OVERLOADED, ...) or it may still happen
# (OUTCOME_UNKNOWN).
RETRYABLE_CODES = frozenset({
    "OUTCOME_UNKNOWN", "NO_LEADER", "CHECK_UNAVAILABLE", "OVERLOADED", "SHUTTING_DOWN",
    "READ_TIMEOUT", "NOT_LEADER",
})
NOT_FOUND_CODES = frozenset({"RELEASE_NOT_FOUND", "DEVICE_NOT_FOUND", "BLOCK_NOT_FOUND", "NOT_FOUND"})
IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
UNREACHABLE = "UNREACHABLE"

# gRPC's words for a connection that was never made: the call did not leave.
_NOT_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed",
                  "name resolution failure", "no route to host")


class FleetError(Exception):
    """Base of every error the client raises: the server's stable ``code``,
    its ``message``, and whether the outcome is known (``definite``)."""

    def __init__(self, code: str, message: str, definite: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.definite = definite

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


class Refused(FleetError):
    """The cluster refused the release entry (``UNTRUSTED_KEY``,
    ``STALE_SEQUENCE``, ``PAYLOAD_MISSING``, ...): nothing of it took effect."""


class IdempotencyConflict(FleetError):
    """The push's idempotency key (``release/<component>``, sequence) was
    used for other content: a different release of this component with this
    sequence number exists, or was refused. Nothing of this push was applied."""


class OutcomeUnknownError(FleetError):
    """Retries ran out while the outcome was unknown: the entry may still
    commit. Retry with the same command (same key); the answer is then its
    fate, applied at most once."""

    def __init__(self, message: str) -> None:
        super().__init__(OUTCOME_UNKNOWN, f"{message}; retry with the same command", definite=False)


class Unreachable(FleetError):
    """No node could be reached (connection refused, unknown host); the call
    never reached a server."""

    def __init__(self, message: str) -> None:
        super().__init__(UNREACHABLE, message, definite=True)

    @property
    def retryable(self) -> bool:
        return True


class TransportError(FleetError):
    """The connection broke or the deadline passed with the call under way:
    the server may have acted on it (``definite`` is False)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, definite=False)

    @property
    def retryable(self) -> bool:
        return True


class NotFound(FleetError):
    """No such release, device or block."""


class _Retryable(FleetError):
    """A definite error this client has no code for, on UNAVAILABLE (which
    says "try again")."""

    @property
    def retryable(self) -> bool:
        return True


def _metadata(exc: grpc.RpcError) -> dict[str, str]:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    out: dict[str, str] = {}
    for item in trailing or ():
        key, value = item[0], item[1]
        out[key] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return out


def from_rpc_error(exc: grpc.RpcError, endpoint: str) -> FleetError:
    """The typed error for a failed call to ``endpoint``."""
    status = exc.code() if hasattr(exc, "code") else None
    details = str((exc.details() if hasattr(exc, "details") else "") or exc)
    meta = _metadata(exc)
    code = meta.get(ERROR_CODE_KEY, "")
    definite = meta.get(OUTCOME_KEY, "definite") != "unknown"
    if not code:
        name = status.name if status is not None else "UNKNOWN"
        if status == grpc.StatusCode.UNAVAILABLE:
            if any(words in details.lower() for words in _NOT_CONNECTED):
                return Unreachable(f"cannot reach {endpoint}: {details}")
            return TransportError(name, f"{endpoint}: {details}")
        if status in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return TransportError(name, f"{endpoint} did not answer in time: {details}")
        if status == grpc.StatusCode.NOT_FOUND:
            return NotFound(name, details)
        if status == grpc.StatusCode.UNIMPLEMENTED:
            return FleetError(name, f"{endpoint} does not implement this call (is it the right port?)")
        return FleetError(name, f"{endpoint}: {details}")
    message = details[len(code) + 2:] if details.startswith(f"{code}: ") else details
    if code == IDEMPOTENCY_KEY_REUSED:
        return IdempotencyConflict(code, message)
    if code in REFUSAL_CODES or (status == grpc.StatusCode.FAILED_PRECONDITION and definite):
        return Refused(code, message)
    if code in NOT_FOUND_CODES or status == grpc.StatusCode.NOT_FOUND:
        return NotFound(code, message)
    if code not in RETRYABLE_CODES and status == grpc.StatusCode.UNAVAILABLE:
        # A code this client does not know yet, on a status that says "try again".
        return TransportError(code, message) if not definite else _Retryable(code, message)
    return FleetError(code, message, definite=definite)
