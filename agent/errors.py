"""The device agent's errors: one base, and a subclass per thing that can go
wrong, each with a stable code. Bad remote data (a refused envelope or
payload) is kept apart from transport failures (a download that could not
finish, a gateway that does not answer), as python-tuf does: the first is
reported as ``refused`` and the device stays; the second is retried."""

from __future__ import annotations

import enum

from fleetsuit.errors import ServiceError


class Reason(enum.StrEnum):
    """Why a device refuses an offer (the ``reason`` of a refused report)."""

    UNTRUSTED = "UNTRUSTED"  # not signed by a trust anchor of the device (§8.3)
    ROLLBACK = "ROLLBACK"  # not above the highest sequence accepted (§8.4.2)
    WRONG_DEVICE = "WRONG_DEVICE"  # another vendor, class or component (§8.4.8.2)
    MISMATCH = "MISMATCH"  # the offer's claims or the payload disagree with the manifest
    MALFORMED = "MALFORMED"  # the envelope does not decode or process


class AgentError(ServiceError):
    code = "AGENT_ERROR"


class Refused(AgentError):
    """Bad remote data: an envelope or payload the device will not install."""

    code = "REFUSED"

    def __init__(self, reason: Reason, suit_code: str, message: str, step: str = "verify") -> None:
        super().__init__(f"{reason}: {suit_code}: {message}")
        self.reason = reason
        self.suit_code = suit_code
        self.message = message
        self.step = step


class DownloadFailed(AgentError):
    """No URL delivered the payload within the attempts (transport, not data)."""

    code = "DOWNLOAD_FAILED"


class SessionRefused(AgentError):
    """A gateway refused the registration with a status code
    (DEVICE_PENDING, DEVICE_REJECTED, DEVICE_REVOKED, DEVICE_UNKNOWN, BAD_SIGNATURE)."""

    code = "SESSION_REFUSED"

    def __init__(self, status_code: str, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


class SessionLost(AgentError):
    """The stream broke, the gateway went silent or could not be reached."""

    code = "SESSION_LOST"


class BadState(AgentError):
    """A state file that does not decode or has an unknown format."""

    code = "BAD_STATE"
