"""What a recipient knows about itself: the device context and its images.

The processor, the one-pass reader (``fastpath``) and the command
interpreter all read a ``DeviceContext``; it lives here, below all three, so
that none of them imports another for it. Plain data: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import ComponentId


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A payload known by its SHA-256 and size rather than its bytes."""

    sha256: bytes
    size: int


# A component's image or a fetchable payload: its bytes, or its digest and size.
Image = bytes | ImageInfo


def image_info(payload: bytes) -> ImageInfo:
    return ImageInfo(hashlib.sha256(payload).digest(), len(payload))


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What the recipient knows about itself (all data, no I/O)."""

    vendor_id: bytes
    class_id: bytes
    device_id: bytes | None = None
    installed_sequence: Mapping[ComponentId, int] = field(default_factory=dict)
    images: Mapping[ComponentId, Image] = field(default_factory=dict)  # current contents
    fetchable: Mapping[str, Image] = field(default_factory=dict)  # uri → payload
    slots: Mapping[ComponentId, int] = field(default_factory=dict)  # target slot
    components: frozenset[ComponentId] | None = None  # None: any component
