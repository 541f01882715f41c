"""The typed SUIT data model (draft-ietf-suit-manifest-37): frozen dataclasses
and the code points of the specification.

Pure data: no decoding, no I/O. Members that the specification bstr-wraps keep
their original bytes (``raw``) so digests and re-encoding are exact.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ComponentId = tuple[bytes, ...]  # SUIT_Component_Identifier = [* bstr] (§8.4.5.1)


class EnvelopeKey(enum.IntEnum):  # §8.2, §11.1
    DELEGATION = 1
    AUTHENTICATION_WRAPPER = 2
    MANIFEST = 3
    PAYLOAD_FETCH = 16
    INSTALL = 20
    TEXT = 23


class ManifestKey(enum.IntEnum):  # §8.4, §11.2
    VERSION = 1
    SEQUENCE_NUMBER = 2
    COMMON = 3
    REFERENCE_URI = 4
    VALIDATE = 7
    LOAD = 8
    INVOKE = 9
    PAYLOAD_FETCH = 16
    INSTALL = 20
    TEXT = 23


SEVERABLE_KEYS = (ManifestKey.PAYLOAD_FETCH, ManifestKey.INSTALL, ManifestKey.TEXT)


class CommonKey(enum.IntEnum):  # §8.4.5, §11.3
    DEPENDENCIES = 1  # trust-domains extension
    COMPONENTS = 2
    SHARED_SEQUENCE = 4


class DigestAlgorithm(enum.IntEnum):  # §10, COSE hash algorithms (RFC 9054)
    SHA256 = -16
    SHAKE128 = -18
    SHA384 = -43
    SHA512 = -44
    SHAKE256 = -45


class CoseAlgorithm(enum.IntEnum):  # RFC 9053 / RFC 9864
    ES256 = -7
    EDDSA = -8
    ESP256 = -9  # fully-specified ECDSA P-256 SHA-256 (RFC 9864)
    ED25519 = -19  # fully-specified (RFC 9864)


class Command(enum.IntEnum):  # §11.4 plus extension drafts (SPEC_NOTES §4)
    VENDOR_IDENTIFIER = 1
    CLASS_IDENTIFIER = 2
    IMAGE_MATCH = 3
    USE_BEFORE = 4
    COMPONENT_SLOT = 5
    CHECK_CONTENT = 6
    DEPENDENCY_INTEGRITY = 7
    IS_DEPENDENCY = 8
    PROCESS_DEPENDENCY = 11
    SET_COMPONENT_INDEX = 12
    ABORT = 14
    TRY_EACH = 15
    WRITE = 18
    SET_PARAMETERS = 19
    OVERRIDE_PARAMETERS = 20
    FETCH = 21
    COPY = 22
    INVOKE = 23
    DEVICE_IDENTIFIER = 24
    IMAGE_NOT_MATCH = 25
    MINIMUM_BATTERY = 26
    UPDATE_AUTHORIZED = 27
    VERSION = 28
    WAIT = 29
    SWAP = 31
    RUN_SEQUENCE = 32
    UNLINK = 33
    OVERRIDE_MULTIPLE = 34
    COPY_PARAMS = 35


# Codes whose argument is a SUIT_Rep_Policy and that test something (§8.4.9).
CONDITIONS = frozenset(
    {1, 2, 3, 4, 5, 6, 7, 8, 14, 24, 25, 26, 27, 28}
)


class Parameter(enum.IntEnum):  # §11.5, CDDL, extension drafts
    VENDOR_IDENTIFIER = 1
    CLASS_IDENTIFIER = 2
    IMAGE_DIGEST = 3
    USE_BEFORE = 4
    COMPONENT_SLOT = 5
    STRICT_ORDER = 12
    SOFT_FAILURE = 13
    IMAGE_SIZE = 14
    CONTENT = 18
    ENCRYPTION_INFO = 19
    URI = 21
    SOURCE_COMPONENT = 22
    INVOKE_ARGS = 23
    DEVICE_IDENTIFIER = 24
    FETCH_ARGUMENTS = 25
    MINIMUM_BATTERY = 26
    UPDATE_PRIORITY = 27
    VERSION = 28
    WAIT_INFO = 29
    COMPONENT_METADATA = 30


class RepPolicy(enum.IntFlag):  # §8.4.7
    RECORD_ON_SUCCESS = 1
    RECORD_ON_FAILURE = 2
    SYSINFO_SUCCESS = 4
    SYSINFO_FAILURE = 8


@dataclass(frozen=True, slots=True)
class SuitDigest:
    """SUIT_Digest = [algorithm-id, digest-bytes, * extensions] (§8.4.8.6)."""

    algorithm: int
    digest: bytes
    extensions: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Pen:
    """A vendor id given as a CBOR-PEN, #6.112(bstr) (§8.4.8.1)."""

    oid: bytes


ParameterValue = SuitDigest | Pen | bytes | str | int | bool | object


@dataclass(frozen=True, slots=True)
class Parameters:
    """The map argument of override/set-parameters, in encoded order."""

    items: tuple[tuple[int, ParameterValue], ...]

    def get(self, code: int) -> ParameterValue | None:
        for key, value in self.items:
            if key == code:
                return value
        return None


@dataclass(frozen=True, slots=True)
class CommandSequence:
    """SUIT_Command_Sequence; ``raw`` is the encoded array (the bstr content)."""

    commands: tuple[SuitCommand, ...]
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class TryEach:
    """directive-try-each argument: [2* bstr .cbor sequence, ? nil] (§8.4.10.2)."""

    sequences: tuple[CommandSequence, ...]
    allow_none: bool = False


IndexArg = int | bool | tuple[int, ...]
CommandArg = int | IndexArg | TryEach | CommandSequence | Parameters | object


@dataclass(frozen=True, slots=True)
class SuitCommand:
    """One (code, argument) pair of a command sequence."""

    code: int
    arg: CommandArg

    @property
    def known(self) -> bool:
        return self.code in Command.__members__.values()


@dataclass(frozen=True, slots=True)
class Common:
    """SUIT_Common (§8.4.5); ``raw`` is the bstr content."""

    components: tuple[ComponentId, ...]
    shared_sequence: CommandSequence | None
    dependencies: object = None
    extensions: tuple[tuple[object, object], ...] = ()
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class TextComponent:
    """Text about one component (§8.4.4): code (1..6) → text."""

    component: ComponentId
    fields: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class TextLanguage:
    language: str
    fields: tuple[tuple[int, str], ...]  # manifest-description 1, update-description 2, …
    components: tuple[TextComponent, ...]


@dataclass(frozen=True, slots=True)
class TextMap:
    languages: tuple[TextLanguage, ...]
    raw: bytes = b""


Severable = SuitDigest | CommandSequence | TextMap | None


@dataclass(frozen=True, slots=True)
class Manifest:
    """SUIT_Manifest (§8.4); ``raw`` is the bstr content at envelope key 3."""

    version: int
    sequence_number: int
    common: Common
    reference_uri: str | None = None
    validate: CommandSequence | None = None
    load: CommandSequence | None = None
    invoke: CommandSequence | None = None
    payload_fetch: Severable = None
    install: Severable = None
    text: Severable = None
    extensions: tuple[tuple[object, object], ...] = ()
    raw: bytes = b""

    def severable(self, key: int) -> Severable:
        if key == ManifestKey.PAYLOAD_FETCH:
            return self.payload_fetch
        if key == ManifestKey.INSTALL:
            return self.install
        if key == ManifestKey.TEXT:
            return self.text
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """COSE_Sign1 (RFC 9052 §4.2) as carried in a SUIT_Authentication_Block."""

    protected_raw: bytes
    protected: dict[object, object]
    unprotected: dict[object, object]
    payload: bytes | None
    signature: bytes

    @property
    def algorithm(self) -> object:
        return self.protected.get(1, self.unprotected.get(1))

    @property
    def key_id(self) -> bytes | None:
        kid = self.protected.get(4, self.unprotected.get(4))
        return kid if isinstance(kid, bytes) else None


@dataclass(frozen=True, slots=True)
class AuthenticationBlock:
    """One bstr-wrapped COSE object after the digest (§8.3)."""

    tag: int  # 18 COSE_Sign1, 17 COSE_Mac0, 98 COSE_Sign, 97 COSE_Mac
    sign1: CoseSign1 | None  # None for the kinds this library does not verify
    raw: bytes


@dataclass(frozen=True, slots=True)
class Authentication:
    """SUIT_Authentication = [bstr .cbor SUIT_Digest, * bstr .cbor block]."""

    digest: SuitDigest
    digest_raw: bytes  # the encoded SUIT_Digest: the COSE detached payload
    blocks: tuple[AuthenticationBlock, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """SUIT_Envelope (§8.2) after the outer decode: members keep their bytes.

    ``members`` holds every (key, bstr content) pair in encoded order; with
    canonical heads (enforced by the decoder) that is enough to re-encode the
    envelope byte for byte.
    """

    tagged: bool
    members: tuple[tuple[int | str, bytes], ...]
    authentication: Authentication | None
    manifest_raw: bytes

    def member(self, key: int | str) -> bytes | None:
        for k, value in self.members:
            if k == key:
                return value
        return None

    @property
    def integrated_payloads(self) -> dict[str, bytes]:
        return {k: v for k, v in self.members if isinstance(k, str)}
