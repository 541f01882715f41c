"""What a recipient knows about itself: the device context and its images.

The processor, the one-pass reader (``fastpath``) and the command
interpreter all read a ``DeviceContext``; it lives here, below all three, so
that none of them imports another for it. Plain data: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping
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


def vendor_id(vendor_domain: str) -> bytes:
    """§8.4.8.2: the vendor id is UUID5(DNS namespace, vendor domain)."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, vendor_domain).bytes


def class_id_under(vendor: bytes, class_name: str) -> bytes:
    """§8.4.8.2: the class id is UUID5(vendor id, class name)."""
    return uuid.uuid5(uuid.UUID(bytes=vendor), class_name).bytes


def class_id(vendor_domain: str, class_name: str) -> bytes:
    return class_id_under(vendor_id(vendor_domain), class_name)


class AnyUri(Mapping[str, ImageInfo]):
    """Fetchable payloads for a recipient that finds a payload by its digest,
    not by the URI its manifest names: every URI answers with the one image,
    so what is checked is that image's digest and size."""

    def __init__(self, image: ImageInfo) -> None:
        self._image = image

    def __getitem__(self, uri: str) -> ImageInfo:
        return self._image

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, uri: object) -> bool:
        return True


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
