"""The typed errors of the SUIT library and their stable codes.

Every rejection the library makes is a ``SuitError`` subclass carrying an
``ErrorCode``. The codes are part of the wire contract: their names are what
the gRPC service puts in ``fleetsuit-error-code`` and the CLI prints, their
numbers are the ``ManifestErrorCode`` values of ``manifest.proto``; neither
ever changes. ``SuitError`` derives from ``fleetsuit.errors.ServiceError``
(which imports nothing but the standard library), so the manifest service's
one interceptor maps these errors to gRPC statuses with the table in its
``convert.py``. This module decides nothing about how an error reaches a
user.
"""

from __future__ import annotations

import enum

from fleetsuit.errors import ServiceError


class ErrorCode(enum.StrEnum):
    """Stable, machine-readable rejection reasons: the value is the name
    (never rename), ``number`` the protobuf value (never renumber)."""

    OK = "OK"
    # Bad input before any semantics (bounded decoding).
    TOO_LARGE = "TOO_LARGE"
    MALFORMED_CBOR = "MALFORMED_CBOR"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    NON_CANONICAL = "NON_CANONICAL"
    DUPLICATE_KEY = "DUPLICATE_KEY"
    INVALID_STRUCTURE = "INVALID_STRUCTURE"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    # Authentication (draft-ietf-suit-manifest §8.3).
    NO_AUTHENTICATION = "NO_AUTHENTICATION"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    UNSUPPORTED_DIGEST_ALGORITHM = "UNSUPPORTED_DIGEST_ALGORITHM"
    UNSUPPORTED_ALGORITHM = "UNSUPPORTED_ALGORITHM"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    UNTRUSTED_SIGNER = "UNTRUSTED_SIGNER"
    # Severable members (§8.4.12).
    SEVERABLE_MISSING = "SEVERABLE_MISSING"
    SEVERABLE_DIGEST_MISMATCH = "SEVERABLE_DIGEST_MISMATCH"
    # Processing rules (§6, §8.4.9, §8.4.10).
    ROLLBACK = "ROLLBACK"
    VENDOR_MISMATCH = "VENDOR_MISMATCH"
    CLASS_MISMATCH = "CLASS_MISMATCH"
    DEVICE_MISMATCH = "DEVICE_MISMATCH"
    IMAGE_DIGEST_MISMATCH = "IMAGE_DIGEST_MISMATCH"
    IMAGE_SIZE_MISMATCH = "IMAGE_SIZE_MISMATCH"
    PAYLOAD_UNAVAILABLE = "PAYLOAD_UNAVAILABLE"
    PARAMETER_MISSING = "PARAMETER_MISSING"
    COMPONENT_MISMATCH = "COMPONENT_MISMATCH"
    SLOT_MISMATCH = "SLOT_MISMATCH"
    CONDITION_FAILED = "CONDITION_FAILED"
    UNSUPPORTED_COMMAND = "UNSUPPORTED_COMMAND"
    ABORTED = "ABORTED"
    TOO_MANY_COMPONENTS = "TOO_MANY_COMPONENTS"

    @property
    def number(self) -> int:
        """The code's number on the wire (``ManifestErrorCode`` in manifest.proto)."""
        return _NUMBERS[self]


# The published numbers, in the groups above (never renumber).
_NUMBERS: dict[ErrorCode, int] = {
    ErrorCode.OK: 0,
    ErrorCode.TOO_LARGE: 1,
    ErrorCode.MALFORMED_CBOR: 2,
    ErrorCode.LIMIT_EXCEEDED: 3,
    ErrorCode.NON_CANONICAL: 4,
    ErrorCode.DUPLICATE_KEY: 5,
    ErrorCode.INVALID_STRUCTURE: 6,
    ErrorCode.UNSUPPORTED_VERSION: 7,
    ErrorCode.NO_AUTHENTICATION: 10,
    ErrorCode.DIGEST_MISMATCH: 11,
    ErrorCode.UNSUPPORTED_DIGEST_ALGORITHM: 12,
    ErrorCode.UNSUPPORTED_ALGORITHM: 13,
    ErrorCode.SIGNATURE_INVALID: 14,
    ErrorCode.UNTRUSTED_SIGNER: 15,
    ErrorCode.SEVERABLE_MISSING: 20,
    ErrorCode.SEVERABLE_DIGEST_MISMATCH: 21,
    ErrorCode.ROLLBACK: 30,
    ErrorCode.VENDOR_MISMATCH: 31,
    ErrorCode.CLASS_MISMATCH: 32,
    ErrorCode.DEVICE_MISMATCH: 33,
    ErrorCode.IMAGE_DIGEST_MISMATCH: 34,
    ErrorCode.IMAGE_SIZE_MISMATCH: 35,
    ErrorCode.PAYLOAD_UNAVAILABLE: 36,
    ErrorCode.PARAMETER_MISSING: 37,
    ErrorCode.COMPONENT_MISMATCH: 38,
    ErrorCode.SLOT_MISMATCH: 39,
    ErrorCode.CONDITION_FAILED: 40,
    ErrorCode.UNSUPPORTED_COMMAND: 41,
    ErrorCode.ABORTED: 42,
    ErrorCode.TOO_MANY_COMPONENTS: 43,
}
if set(_NUMBERS) != set(ErrorCode) or len(set(_NUMBERS.values())) != len(_NUMBERS):
    raise AssertionError("every ErrorCode needs its own wire number")


class SuitError(ServiceError):
    """Base of every error the SUIT library raises on bad input.

    ``str()`` is the message alone; whoever shows it to a user puts the
    code in front (``CODE: message``), as the service and the CLI do.
    """

    code: ErrorCode = ErrorCode.INVALID_STRUCTURE

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.name

    def __str__(self) -> str:
        return self.message


class DecodeError(SuitError):
    """The bytes are not a well-formed, bounded, canonical CBOR envelope."""

    code = ErrorCode.MALFORMED_CBOR


class LimitExceeded(DecodeError):
    """A size, depth or count limit was hit before any allocation."""

    code = ErrorCode.LIMIT_EXCEEDED


class StructureError(SuitError):
    """Well-formed CBOR that does not match the SUIT CDDL."""

    code = ErrorCode.INVALID_STRUCTURE


class AuthenticationError(SuitError):
    """Digest or COSE authentication failed (§8.3)."""

    code = ErrorCode.SIGNATURE_INVALID


class SeverableError(SuitError):
    """A severable member is missing or does not match its digest (§8.4.12)."""

    code = ErrorCode.SEVERABLE_DIGEST_MISMATCH


class ProcessingError(SuitError):
    """A condition or directive failed while running command sequences (§6)."""

    code = ErrorCode.CONDITION_FAILED


class RollbackRejected(ProcessingError):
    """The manifest's sequence number is not greater than the installed one."""

    code = ErrorCode.ROLLBACK

    def __init__(self, current: int, offered: int) -> None:
        super().__init__(f"sequence number {offered} is not greater than installed {current}")
        self.current = current
        self.offered = offered
