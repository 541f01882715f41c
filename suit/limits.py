"""Resource limits for decoding and processing untrusted envelopes.

Every bound is checked before the work it protects (SPEC_NOTES: decoders are
size-bounded before they parse). Units are in the field names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_envelope_bytes: int = 1024 * 1024  # whole envelope, integrated payloads included
    max_depth: int = 24  # container nesting, counted across bstr-wrapped levels
    max_items: int = 8192  # CBOR data items in one envelope, all levels
    max_components: int = 16  # suit-components entries (Nordic decoders use 16)
    max_commands_run: int = 20_000  # commands executed per procedure (try-each fan-out)

    def validate(self) -> None:
        for name in (
            "max_envelope_bytes",
            "max_depth",
            "max_items",
            "max_components",
            "max_commands_run",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()
