"""The gateway's exception tree and its stable error codes.

``GatewayError`` is the base, under fleetsuit's ``ServiceError``. A device's
session ends with one of these when it cannot go on: the device is not
admitted (``DeviceRefused`` and its kinds: unknown, pending, rejected,
revoked), it did not prove its key (``BadSignature``), it broke the
protocol, or it went silent. The codes are the API devices branch on (the
agent reads them from ``fleetsuit-error-code``), so they never change once
published. The mapping to gRPC statuses lives in ``convert.ERRORS``; this
module imports no gRPC.
"""

from __future__ import annotations

import enum

from fleetsuit.errors import ServiceError


class ErrorCode(enum.StrEnum):
    DEVICE_UNKNOWN = "DEVICE_UNKNOWN"
    DEVICE_PENDING = "DEVICE_PENDING"
    DEVICE_REJECTED = "DEVICE_REJECTED"
    DEVICE_REVOKED = "DEVICE_REVOKED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    HEARTBEAT_MISSED = "HEARTBEAT_MISSED"
    LEDGER_UNAVAILABLE = "LEDGER_UNAVAILABLE"
    SESSION_REPLACED = "SESSION_REPLACED"
    GATEWAY_DRAINING = "GATEWAY_DRAINING"


class GatewayError(ServiceError):
    code: ErrorCode = ErrorCode.PROTOCOL_ERROR


class DeviceRefused(GatewayError):
    """The ledger does not admit the device (its enrolment says why)."""

    code = ErrorCode.DEVICE_UNKNOWN


class DeviceUnknown(DeviceRefused):
    """Not enrolled, and it sent no public key to be recorded as pending."""

    code = ErrorCode.DEVICE_UNKNOWN


class DevicePending(DeviceRefused):
    """Enrolment requested; an operator has not accepted it yet."""

    code = ErrorCode.DEVICE_PENDING


class DeviceRejected(DeviceRefused):
    code = ErrorCode.DEVICE_REJECTED


class DeviceRevoked(DeviceRefused):
    code = ErrorCode.DEVICE_REVOKED


class BadSignature(GatewayError):
    """The registration signature does not verify with the device's key
    (a wrong key, or a signature made for another gateway or nonce)."""

    code = ErrorCode.BAD_SIGNATURE


class ProtocolError(GatewayError):
    """A message out of order, a field missing, or a Register too late."""

    code = ErrorCode.PROTOCOL_ERROR


class HeartbeatMissed(GatewayError):
    """The device stayed silent for the configured number of heartbeat intervals."""

    code = ErrorCode.HEARTBEAT_MISSED


class SessionReplaced(GatewayError):
    """The same device opened a newer session; this one is closed."""

    code = ErrorCode.SESSION_REPLACED


class LedgerUnavailable(GatewayError):
    """The device's enrolment could not be read from the local ledger node."""

    code = ErrorCode.LEDGER_UNAVAILABLE


class Draining(GatewayError):
    """This gateway is stopping: go to another."""

    code = ErrorCode.GATEWAY_DRAINING


def describe(exc: BaseException) -> str:
    """One line for a failure (a gRPC error's code and details, not its
    multi-line debug string)."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{getattr(code(), 'name', code())}: {details()}"
        except Exception:  # noqa: BLE001 (not a gRPC error after all)
            pass
    return f"{type(exc).__name__}: {exc}"
