"""The hand-written codecs in services/dht/wire.py against the generated protobuf
classes: the same bytes out, the same values in, malformed input refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetsuit.v1 import dht_pb2
from services.dht import wire
from services.dht.errors import InvalidArgument

U64 = st.integers(min_value=0, max_value=2**64 - 1)
DATA = st.binary(max_size=3000)


@given(U64, DATA, U64)
def test_get_response_bytes_equal_protobuf(offset: int, data: bytes, total: int) -> None:
    expected = dht_pb2.BlobGetResponse(offset=offset, data=data, total_size=total)
    encoded = wire.encode_get_response(offset, memoryview(data), total)
    assert encoded == expected.SerializeToString(deterministic=True)
    assert dht_pb2.BlobGetResponse.FromString(encoded) == expected
    got_offset, got_data, got_total = wire.decode_get_response(encoded)
    assert (got_offset, bytes(got_data), got_total) == (offset, data, total)


@given(DATA, st.booleans())
def test_put_request_round_trips_with_protobuf(data: bytes, pin: bool) -> None:
    expected = dht_pb2.BlobPutRequest(data=data, pin=pin).SerializeToString()
    assert wire.encode_put_request(data, pin) == expected
    got, got_pin = wire.decode_put_request(expected)
    assert (bytes(got), got_pin) == (data, pin)


@given(DATA)
def test_fetch_chunk_response_round_trips_with_protobuf(data: bytes) -> None:
    expected = dht_pb2.DhtFetchChunkResponse(data=data).SerializeToString()
    assert wire.encode_fetch_chunk_response(data) == expected
    assert wire.decode_fetch_chunk_response(expected) == data


def test_unknown_fields_are_skipped_and_the_last_value_wins() -> None:
    # field 9 varint, field 10 fixed64, field 11 fixed32, field 12 bytes, then data twice
    raw = (
        b"\x48\x05" + b"\x51" + bytes(8) + b"\x5d" + bytes(4) + b"\x62\x02hi"
        + b"\x0a\x01a" + b"\x0a\x02bc" + b"\x10\x01"
    )  # fmt: skip
    data, pin = wire.decode_put_request(raw)
    assert (bytes(data), pin) == (b"bc", True)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05abc",  # length runs past the end
        b"\x08\xff",  # varint truncated
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
        b"\x00\x01",  # field number 0
        b"\x0b",  # wire type 3 (groups) is not supported
        b"\x09\x00",  # fixed64 truncated
        b"\x08\x01",  # field 1 as a varint where bytes are expected
    ],
)
def test_malformed_input_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        wire.decode_put_request(raw)
