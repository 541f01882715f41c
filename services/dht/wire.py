"""Hand-written protobuf wire codecs for the three bulk messages (sans-I/O).

``BlobGetResponse``, ``BlobPutRequest`` and ``DhtFetchChunkResponse`` carry
the payload bytes. Going through the generated classes copies every chunk
three times on the way out (Python object -> upb arena -> encoded buffer ->
Python bytes) and twice on the way in; profiling the Get path showed those
copies, not RocksDB or SHA-256, were most of the server's CPU. These codecs
produce exactly the bytes ``SerializeToString`` produces (fields in number
order, proto3 defaults omitted; tests compare them) with one copy, and decode
without copying the payload (a ``memoryview`` into the received buffer).

Decoders are bounded: they walk the buffer once, reject truncated or
malformed input with ``InvalidArgument`` and skip unknown fields, as the
protobuf spec requires ("Encoding": message structure, wire types). For a
field seen twice the last value wins, as for any proto3 scalar.

Every other message goes through the generated classes.
"""

from __future__ import annotations

from services.dht.errors import InvalidArgument

_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


_GET_OFFSET = _key(1, _VARINT)
_GET_DATA = _key(2, _LEN)
_GET_TOTAL = _key(3, _VARINT)
_PUT_DATA = _key(1, _LEN)
_PUT_PIN = _key(2, _VARINT)
_CHUNK_DATA = _key(1, _LEN)


def encode_get_response(offset: int, data: bytes | memoryview, total_size: int) -> bytes:
    """The bytes of ``BlobGetResponse(offset, data, total_size)``."""
    parts: list[bytes | memoryview] = []
    if offset:
        parts += [_GET_OFFSET, _varint(offset)]
    if len(data):
        parts += [_GET_DATA, _varint(len(data)), data]
    if total_size:
        parts += [_GET_TOTAL, _varint(total_size)]
    return b"".join(parts)


def encode_put_request(data: bytes | memoryview, pin: bool = False) -> bytes:
    """The bytes of ``BlobPutRequest(data, pin)``."""
    parts: list[bytes | memoryview] = []
    if len(data):
        parts += [_PUT_DATA, _varint(len(data)), data]
    if pin:
        parts += [_PUT_PIN, b"\x01"]
    return b"".join(parts)


def encode_fetch_chunk_response(data: bytes | memoryview) -> bytes:
    """The bytes of ``DhtFetchChunkResponse(data)``."""
    if not len(data):
        return b""
    return b"".join([_CHUNK_DATA, _varint(len(data)), data])


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise InvalidArgument("protobuf message truncated inside a varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise InvalidArgument("protobuf varint longer than 10 bytes")


def fields(raw: bytes | memoryview) -> dict[int, int | memoryview]:
    """Field number -> last value (int for varints, memoryview for LEN)."""
    buf = memoryview(raw)
    out: dict[int, int | memoryview] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise InvalidArgument("protobuf field number 0")
        if wire_type == _VARINT:
            out[number], pos = _read_varint(buf, pos)
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos)
            if length > len(buf) - pos:
                raise InvalidArgument("protobuf length-delimited field runs past the end")
            out[number] = buf[pos : pos + length]
            pos += length
        elif wire_type in (_I64, _I32):
            pos += 8 if wire_type == _I64 else 4
            if pos > len(buf):
                raise InvalidArgument("protobuf fixed-width field truncated")
        else:
            raise InvalidArgument(f"unsupported protobuf wire type {wire_type}")
    return out


def _int(found: dict[int, int | memoryview], number: int) -> int:
    value = found.get(number, 0)
    if not isinstance(value, int):
        raise InvalidArgument(f"field {number} should be a varint")
    return value


def _bytes(found: dict[int, int | memoryview], number: int) -> memoryview:
    value = found.get(number, memoryview(b""))
    if isinstance(value, int):
        raise InvalidArgument(f"field {number} should be length-delimited")
    return value


def decode_get_response(raw: bytes | memoryview) -> tuple[int, memoryview, int]:
    """(offset, data, total_size) of an encoded ``BlobGetResponse``."""
    found = fields(raw)
    return _int(found, 1), _bytes(found, 2), _int(found, 3)


def decode_put_request(raw: bytes | memoryview) -> tuple[memoryview, bool]:
    """(data, pin) of an encoded ``BlobPutRequest``."""
    found = fields(raw)
    return _bytes(found, 1), bool(_int(found, 2))


def decode_fetch_chunk_response(raw: bytes | memoryview) -> bytes:
    """The chunk carried by an encoded ``DhtFetchChunkResponse`` (one copy)."""
    return bytes(_bytes(fields(raw), 1))
