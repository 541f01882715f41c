"""The typed errors of the SUIT library and their stable codes.

Every rejection the library makes is a ``SuitError`` subclass carrying an
``ErrorCode``; the codes are part of the wire contract (the gRPC service and
the CLI print them), so existing values never change. This module does not
decide how errors reach a user: ``convert.py`` maps them to protobuf and the
CLI prints ``code: message``.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Stable, machine-readable rejection reasons (never renumber)."""

    OK = 0
    # Bad input before any semantics (bounded decoding).
    TOO_LARGE = 1
    MALFORMED_CBOR = 2
    LIMIT_EXCEEDED = 3
    NON_CANONICAL = 4
    DUPLICATE_KEY = 5
    INVALID_STRUCTURE = 6
    UNSUPPORTED_VERSION = 7
    # Authentication (draft-ietf-suit-manifest §8.3).
    NO_AUTHENTICATION = 10
    DIGEST_MISMATCH = 11
    UNSUPPORTED_DIGEST_ALGORITHM = 12
    UNSUPPORTED_ALGORITHM = 13
    SIGNATURE_INVALID = 14
    UNTRUSTED_SIGNER = 15
    # Severable members (§8.4.12).
    SEVERABLE_MISSING = 20
    SEVERABLE_DIGEST_MISMATCH = 21
    # Processing rules (§6, §8.4.9, §8.4.10).
    ROLLBACK = 30
    VENDOR_MISMATCH = 31
    CLASS_MISMATCH = 32
    DEVICE_MISMATCH = 33
    IMAGE_DIGEST_MISMATCH = 34
    IMAGE_SIZE_MISMATCH = 35
    PAYLOAD_UNAVAILABLE = 36
    PARAMETER_MISSING = 37
    COMPONENT_MISMATCH = 38
    SLOT_MISMATCH = 39
    CONDITION_FAILED = 40
    UNSUPPORTED_COMMAND = 41
    ABORTED = 42
    TOO_MANY_COMPONENTS = 43


class SuitError(Exception):
    """Base of every error the SUIT library raises on bad input."""

    code: ErrorCode = ErrorCode.INVALID_STRUCTURE

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.name

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


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
        super().__init__(
            f"sequence number {offered} is not greater than installed {current}"
        )
        self.current = current
        self.offered = offered
